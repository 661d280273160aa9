extern "C" __global__ void scale_elu_log_backward_1(const float* __restrict__ a_x0, const float* __restrict__ a_gy, float* __restrict__ a_dx0, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x0 = a_x0[i];
        const float gy = a_gy[i];
        const float v0 = ((2.0f * x0) + 0.1f);
        const float v1 = ((v0 > 0.0f) ? v0 : (0.5f * expm1(fmin(v0, 0.0f))));
        const float g1 = (gy / v1);
        const float g0 = ((v0 > 0.0f) ? g1 : ((g1 * 0.5f) * exp(fmin(v0, 0.0f))));
        a_dx0[i] = (g0 * 2.0f);
    }
}
