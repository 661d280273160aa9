#include <math.h>

/* add_relu_backward_11 */
void netdsl_kernel0(const float* restrict a_x0, const float* restrict a_x1, const float* restrict a_gy, float* restrict a_dx0, float* restrict a_dx1, const long long n) {
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float x0 = a_x0[i];
        const float x1 = a_x1[i];
        const float gy = a_gy[i];
        const float v0 = (x0 + x1);
        const float v1 = ((0.0f > v0) ? 0.0f : v0);
        const float g0 = ((v1 > 0.0f) ? gy : 0.0f);
        const float w_dx0 = g0;
        const float w_dx1 = g0;
        a_dx0[i] = w_dx0;
        a_dx1[i] = w_dx1;
    }
}
