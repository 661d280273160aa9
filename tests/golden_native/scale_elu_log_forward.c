#include <math.h>

__attribute__((simd("notinbranch"))) float expm1f(float);
__attribute__((simd("notinbranch"))) float logf(float);

/* scale_elu_log_forward */
void netdsl_kernel0(const float* restrict a_x0, float* restrict a_y, const long long n) {
    #pragma omp simd
    for (long long i = 0; i < n; i++) {
        const float x0 = a_x0[i];
        const float v0 = ((2.0f * x0) + 0.1f);
        const float v1 = ((v0 > 0.0f) ? v0 : (0.5f * expm1f(fminf(v0, 0.0f))));
        const float v2 = logf(v1);
        const float w_y = v2;
        a_y[i] = w_y;
    }
}
