#include <math.h>
#include <string.h>

__attribute__((simd("notinbranch"))) float tanhf(float);
/* scipy_cblas_sgemm64_: CBLAS's ?gemm */
typedef long long I;
typedef void (*gemm_t)(int, int, int, I, I, I, float, const float*, I, const float*, I, float, float*, I);

void loop_forward(gemm_t gemm, const long long T, const long long B, void* const* a) {
    for (long long t = 0; t < T; t++) {
        gemm(101, 111, 111, B, 64, 64, 1, (t >= 1 ? (((float*)a[1]) + (t - 1)*B*64) : (((float*)a[3]) + t*B*64)), 64, ((float*)a[5]), 64, 0, ((float*)a[0]), 64);
        {
          const float* restrict p_x0 = (((float*)a[2]) + t*B*64); const long long s_x0 = 64;
          const float* restrict p_x1 = ((float*)a[0]); const long long s_x1 = 64;
          float* restrict p_y = (((float*)a[1]) + (t)*B*64); const long long s_y = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float x1 = p_x1[r*s_x1 + i];
              const float v0 = (x0 + x1);
              const float v1 = tanhf(v0);
              p_y[r*s_y + i] = v1;
            }
          }
        }
    }
}

void loop_backward(gemm_t gemm, const long long T, const long long B, void* const* a) {
    for (long long t = T - 1; t >= 0; t--) {
        {
          const float* restrict p_gy = (((float*)a[7]) + (t)*B*64); const long long s_gy = 64;
          const float* restrict p_y = (((float*)a[1]) + (t)*B*64); const long long s_y = 64;
          float* restrict p_dx1 = (((float*)a[6]) + (t)*B*64); const long long s_dx1 = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float gy = p_gy[r*s_gy + i];
              const float y = p_y[r*s_y + i];
              const float g0 = (gy * (1.0f - (y * y)));
              p_dx1[r*s_dx1 + i] += g0;
            }
          }
        }
        gemm(101, 111, 111, B, 64, 64, 1, (((float*)a[6]) + (t)*B*64), 64, ((float*)a[4]), 64, 1, (t >= 1 ? (((float*)a[7]) + (t - 1)*B*64) : (((float*)a[9]) + t*B*64)), 64);
    }
}
