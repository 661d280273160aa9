extern "C" __global__ void add_backward_11(const float* __restrict__ a_gy, float* __restrict__ a_dx0, float* __restrict__ a_dx1, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gy = a_gy[i];
        a_dx0[i] = gy;
        a_dx1[i] = gy;
    }
}
