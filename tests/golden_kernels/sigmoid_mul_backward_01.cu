extern "C" __global__ void sigmoid_mul_backward_01(const float* __restrict__ a_x0, const float* __restrict__ a_gy, float* __restrict__ a_dx1, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x0 = a_x0[i];
        const float gy = a_gy[i];
        const float v0 = ((0.5f * tanh((0.5f * x0))) + 0.5f);
        a_dx1[i] = (gy * v0);
    }
}
