#include <math.h>

__attribute__((simd("notinbranch"))) float tanhf(float);

/* sigmoid_backward_1 */
void netdsl_kernel0(const float* restrict a_x0, const float* restrict a_gy, float* restrict a_dx0, const long long n) {
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float x0 = a_x0[i];
        const float gy = a_gy[i];
        const float v0 = ((0.5f * tanhf((0.5f * x0))) + 0.5f);
        const float w_dx0 = ((gy * v0) * (1.0f - v0));
        a_dx0[i] = w_dx0;
    }
}
