#include <math.h>

__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float expm1f(float);

/* scale_elu_log_backward_1 */
void netdsl_kernel0(const float* restrict a_x0, const float* restrict a_gy, float* restrict a_dx0, const long long n) {
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float x0 = a_x0[i];
        const float gy = a_gy[i];
        const float v0 = ((2.0f * x0) + 0.1f);
        const float v1 = ((v0 > 0.0f) ? v0 : (0.5f * expm1f(fminf(v0, 0.0f))));
        const float g1 = (gy / v1);
        const float g0 = ((v0 > 0.0f) ? g1 : ((g1 * 0.5f) * expf(fminf(v0, 0.0f))));
        const float w_dx0 = (g0 * 2.0f);
        a_dx0[i] = w_dx0;
    }
}
