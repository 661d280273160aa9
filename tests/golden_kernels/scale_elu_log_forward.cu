extern "C" __global__ void scale_elu_log_forward(const float* __restrict__ a_x0, float* __restrict__ a_y, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x0 = a_x0[i];
        const float v0 = ((2.0f * x0) + 0.1f);
        const float v1 = ((v0 > 0.0f) ? v0 : (0.5f * expm1(fmin(v0, 0.0f))));
        const float v2 = log(v1);
        a_y[i] = v2;
    }
}
