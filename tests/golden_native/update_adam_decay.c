#include <math.h>

/* update */
void netdsl_kernel0(float* restrict a_params, const float* restrict a_grads, float* restrict a_first_moment, float* restrict a_second_moment, const double s_c1, const double s_c2, const double s_lr, const long long n) {
    const float c1 = (float)s_c1;
    const float c2 = (float)s_c2;
    const float lr = (float)s_lr;
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float first_moment = a_first_moment[i];
        const float second_moment = a_second_moment[i];
        const float gd = (grads + (0.01f * params));
        const float v = ((0.999f * second_moment) + (0.0010000000000000009f * (gd * gd)));
        const float m = ((0.9f * first_moment) + (0.09999999999999998f * gd));
        const float w_second_moment = v;
        const float w_first_moment = m;
        const float w_params = (params - (lr * ((m / ((sqrtf(v) / c2) + 1e-08f)) / c1)));
        a_second_moment[i] = w_second_moment;
        a_first_moment[i] = w_first_moment;
        a_params[i] = w_params;
    }
}
