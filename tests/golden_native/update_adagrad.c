#include <math.h>

/* update */
void netdsl_kernel0(float* restrict a_params, const float* restrict a_grads, float* restrict a_second_moment, const double s_lr, const long long n) {
    const float lr = (float)s_lr;
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float second_moment = a_second_moment[i];
        const float v = ((1.0f * second_moment) + (1.0f * (grads * grads)));
        const float w_second_moment = v;
        const float w_params = (params - (lr * (grads / (sqrtf(v) + 1e-10f))));
        a_second_moment[i] = w_second_moment;
        a_params[i] = w_params;
    }
}
