extern "C" __global__ void mul_forward(const float* __restrict__ a_x0, const float* __restrict__ a_x1, float* __restrict__ a_y, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x0 = a_x0[i];
        const float x1 = a_x1[i];
        const float v0 = (x0 * x1);
        a_y[i] = v0;
    }
}
