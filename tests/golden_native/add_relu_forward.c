#include <math.h>

/* add_relu_forward */
void netdsl_kernel0(const float* restrict a_x0, const float* restrict a_x1, float* restrict a_y, const long long n) {
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float x0 = a_x0[i];
        const float x1 = a_x1[i];
        const float v0 = (x0 + x1);
        const float v1 = ((0.0f > v0) ? 0.0f : v0);
        const float w_y = v1;
        a_y[i] = w_y;
    }
}
