#include <math.h>

/* update */
void netdsl_kernel0(float* restrict a_params, const float* restrict a_grads, const double s_lr, const long long n) {
    const float lr = (float)s_lr;
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float w_params = (params - (lr * grads));
        a_params[i] = w_params;
    }
}
