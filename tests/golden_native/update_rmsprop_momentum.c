#include <math.h>

/* update */
void netdsl_kernel0(float* restrict a_params, const float* restrict a_grads, float* restrict a_second_moment, float* restrict a_momentum_buffer, const double s_lr, const long long n) {
    const float lr = (float)s_lr;
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float params = a_params[i];
        const float grads = a_grads[i];
        const float second_moment = a_second_moment[i];
        const float momentum_buffer = a_momentum_buffer[i];
        const float v = ((0.99f * second_moment) + (0.010000000000000009f * (grads * grads)));
        const float b = ((0.5f * momentum_buffer) + (grads / (sqrtf(v) + 1e-08f)));
        const float w_second_moment = v;
        const float w_momentum_buffer = b;
        const float w_params = (params - (lr * b));
        a_second_moment[i] = w_second_moment;
        a_momentum_buffer[i] = w_momentum_buffer;
        a_params[i] = w_params;
    }
}
