extern "C" __global__ void leaky_relu_backward_1(const float* __restrict__ a_x0, const float* __restrict__ a_gy, float* __restrict__ a_dx0, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x0 = a_x0[i];
        const float gy = a_gy[i];
        a_dx0[i] = ((x0 > 0.0f) ? gy : (gy * 0.01f));
    }
}
