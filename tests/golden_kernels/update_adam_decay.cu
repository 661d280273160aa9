extern "C" __global__ void update(float* __restrict__ a_params, const float* __restrict__ a_grads, float* __restrict__ a_first_moment, float* __restrict__ a_second_moment, const float c1, const float c2, const float lr, const long long n) {
    typedef float T;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float first_moment = a_first_moment[i];
        const float second_moment = a_second_moment[i];
        const float gd = (grads + (0.01f * params));
        const float v = ((0.999f * second_moment) + (0.0010000000000000009f * (gd * gd)));
        const float m = ((0.9f * first_moment) + (0.09999999999999998f * gd));
        a_second_moment[i] = v;
        a_first_moment[i] = m;
        a_params[i] = (params - (lr * ((m / ((sqrt(v) / c2) + 1e-08f)) / c1)));
    }
}
