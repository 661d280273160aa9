extern "C" __global__ void update(float* __restrict__ a_params, const float* __restrict__ a_grads, float* __restrict__ a_second_moment, const float lr, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float second_moment = a_second_moment[i];
        const float v = ((1.0f * second_moment) + (1.0f * (grads * grads)));
        a_second_moment[i] = v;
        a_params[i] = (params - (lr * (grads / (sqrt(v) + 1e-10f))));
    }
}
