#include <math.h>

/* update */
void netdsl_kernel0(float* restrict a_params, const float* restrict a_grads, float* restrict a_momentum_buffer, const double s_lr, const long long n) {
    const float lr = (float)s_lr;
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float momentum_buffer = a_momentum_buffer[i];
        const float b = ((0.9f * momentum_buffer) + grads);
        const float w_momentum_buffer = b;
        const float w_params = (params - (lr * b));
        a_momentum_buffer[i] = w_momentum_buffer;
        a_params[i] = w_params;
    }
}
