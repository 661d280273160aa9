extern "C" __global__ void relu_forward(const float* __restrict__ a_x0, float* __restrict__ a_y, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x0 = a_x0[i];
        const float v0 = ((0.0f > x0) ? 0.0f : x0);
        a_y[i] = v0;
    }
}
