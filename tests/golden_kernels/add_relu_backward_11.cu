extern "C" __global__ void add_relu_backward_11(const float* __restrict__ a_x0, const float* __restrict__ a_x1, const float* __restrict__ a_gy, float* __restrict__ a_dx0, float* __restrict__ a_dx1, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x0 = a_x0[i];
        const float x1 = a_x1[i];
        const float gy = a_gy[i];
        const float v0 = (x0 + x1);
        const float v1 = ((0.0f > v0) ? 0.0f : v0);
        const float g0 = ((v1 > 0.0f) ? gy : 0.0f);
        a_dx0[i] = g0;
        a_dx1[i] = g0;
    }
}
