#include <math.h>

__attribute__((simd("notinbranch"))) float tanhf(float);

/* sigmoid_mul_backward_01 */
void netdsl_kernel0(const float* restrict a_x0, const float* restrict a_gy, float* restrict a_dx1, const long long n) {
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float x0 = a_x0[i];
        const float gy = a_gy[i];
        const float v0 = ((0.5f * tanhf((0.5f * x0))) + 0.5f);
        const float w_dx1 = (gy * v0);
        a_dx1[i] = w_dx1;
    }
}
