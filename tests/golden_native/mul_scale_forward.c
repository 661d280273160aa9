#include <math.h>

/* mul_scale_forward */
void netdsl_kernel0(const float* restrict a_x0, float* restrict a_y, const long long n) {
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float x0 = a_x0[i];
        const float v0 = (x0 * x0);
        const float v1 = ((0.5f * v0) + 0.0f);
        const float w_y = v1;
        a_y[i] = w_y;
    }
}
