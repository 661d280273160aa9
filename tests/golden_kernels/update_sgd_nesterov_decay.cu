extern "C" __global__ void update(float* __restrict__ a_params, const float* __restrict__ a_grads, float* __restrict__ a_momentum_buffer, const float lr, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float momentum_buffer = a_momentum_buffer[i];
        const float gd = (grads + (0.001f * params));
        const float b = ((0.9f * momentum_buffer) + gd);
        a_momentum_buffer[i] = b;
        a_params[i] = (params - (lr * (gd + (0.9f * b))));
    }
}
