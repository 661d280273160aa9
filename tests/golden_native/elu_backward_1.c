#include <math.h>

__attribute__((simd("notinbranch"))) float expf(float);

/* elu_backward_1 */
void netdsl_kernel0(const float* restrict a_x0, const float* restrict a_gy, float* restrict a_dx0, const long long n) {
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float x0 = a_x0[i];
        const float gy = a_gy[i];
        const float w_dx0 = ((x0 > 0.0f) ? gy : ((gy * 1.0f) * expf(fminf(x0, 0.0f))));
        a_dx0[i] = w_dx0;
    }
}
