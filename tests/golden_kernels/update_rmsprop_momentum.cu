extern "C" __global__ void update(float* __restrict__ a_params, const float* __restrict__ a_grads, float* __restrict__ a_second_moment, float* __restrict__ a_momentum_buffer, const float lr, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float second_moment = a_second_moment[i];
        const float momentum_buffer = a_momentum_buffer[i];
        const float v = ((0.99f * second_moment) + (0.010000000000000009f * (grads * grads)));
        const float b = ((0.5f * momentum_buffer) + (grads / (sqrt(v) + 1e-08f)));
        a_second_moment[i] = v;
        a_momentum_buffer[i] = b;
        a_params[i] = (params - (lr * b));
    }
}
