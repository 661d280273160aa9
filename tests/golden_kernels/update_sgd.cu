extern "C" __global__ void update(float* __restrict__ a_params, const float* __restrict__ a_grads, const float lr, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        a_params[i] = (params - (lr * grads));
    }
}
