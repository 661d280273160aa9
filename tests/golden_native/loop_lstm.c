#include <math.h>
#include <string.h>

__attribute__((simd("notinbranch"))) float tanhf(float);
/* scipy_cblas_sgemm64_: CBLAS's ?gemm */
typedef long long I;
typedef void (*gemm_t)(int, int, int, I, I, I, float, const float*, I, const float*, I, float, float*, I);

void loop_forward(gemm_t gemm, const long long T, const long long B, void* const* a) {
    for (long long t = 0; t < T; t++) {
        gemm(101, 111, 112, B, 256, 64, 1, (t >= 1 ? (((float*)a[6]) + (t - 1)*B*64) : (((float*)a[9]) + t*B*64)), 64, ((float*)a[10]), 64, 0, ((float*)a[0]), 256);
        {
          const float* restrict p_x0 = (((float*)a[7]) + t*B*256); const long long s_x0 = 256;
          const float* restrict p_x1 = ((float*)a[0]); const long long s_x1 = 256;
          float* restrict p_y = (((float*)a[1]) + (t)*B*256); const long long s_y = 256;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 256; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float x1 = p_x1[r*s_x1 + i];
              const float v0 = (x0 + x1);
              p_y[r*s_y + i] = v0;
            }
          }
        }
        {
          const float* restrict p_x0 = ((((float*)a[1]) + (t)*B*256) + 128); const long long s_x0 = 256;
          float* restrict p_y = (((float*)a[2]) + (t)*B*64); const long long s_y = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float v0 = tanhf(x0);
              p_y[r*s_y + i] = v0;
            }
          }
        }
        {
          const float* restrict p_x0 = ((((float*)a[1]) + (t)*B*256) + 0); const long long s_x0 = 256;
          const float* restrict p_x1 = (((float*)a[2]) + (t)*B*64); const long long s_x1 = 64;
          float* restrict p_y = ((float*)a[3]); const long long s_y = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float x1 = p_x1[r*s_x1 + i];
              const float v0 = ((0.5f * tanhf((0.5f * x0))) + 0.5f);
              const float v1 = (v0 * x1);
              p_y[r*s_y + i] = v1;
            }
          }
        }
        {
          const float* restrict p_x0 = ((((float*)a[1]) + (t)*B*256) + 64); const long long s_x0 = 256;
          const float* restrict p_x1 = (t >= 1 ? (((float*)a[4]) + (t - 1)*B*64) : (((float*)a[8]) + t*B*64)); const long long s_x1 = 64;
          const float* restrict p_x2 = ((float*)a[3]); const long long s_x2 = 64;
          float* restrict p_y = (((float*)a[4]) + (t)*B*64); const long long s_y = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float x1 = p_x1[r*s_x1 + i];
              const float x2 = p_x2[r*s_x2 + i];
              const float v0 = ((0.5f * tanhf((0.5f * x0))) + 0.5f);
              const float v1 = (v0 * x1);
              const float v2 = (v1 + x2);
              p_y[r*s_y + i] = v2;
            }
          }
        }
        {
          const float* restrict p_x0 = (((float*)a[4]) + (t)*B*64); const long long s_x0 = 64;
          float* restrict p_y = (((float*)a[5]) + (t)*B*64); const long long s_y = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float v0 = tanhf(x0);
              p_y[r*s_y + i] = v0;
            }
          }
        }
        {
          const float* restrict p_x0 = ((((float*)a[1]) + (t)*B*256) + 192); const long long s_x0 = 256;
          const float* restrict p_x1 = (((float*)a[5]) + (t)*B*64); const long long s_x1 = 64;
          float* restrict p_y = (((float*)a[6]) + (t)*B*64); const long long s_y = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float x1 = p_x1[r*s_x1 + i];
              const float v0 = ((0.5f * tanhf((0.5f * x0))) + 0.5f);
              const float v1 = (v0 * x1);
              p_y[r*s_y + i] = v1;
            }
          }
        }
    }
}

void loop_backward(gemm_t gemm, const long long T, const long long B, void* const* a) {
    for (long long t = T - 1; t >= 0; t--) {
        memset(((float*)a[12]), 0, B*256*sizeof(float));
        memset(((float*)a[13]), 0, B*64*sizeof(float));
        memset(((float*)a[14]), 0, B*64*sizeof(float));
        memset(((float*)a[16]), 0, B*64*sizeof(float));
        {
          const float* restrict p_x0 = ((((float*)a[1]) + (t)*B*256) + 192); const long long s_x0 = 256;
          const float* restrict p_x1 = (((float*)a[5]) + (t)*B*64); const long long s_x1 = 64;
          const float* restrict p_gy = (((float*)a[17]) + (t)*B*64); const long long s_gy = 64;
          float* restrict p_dx0 = (((float*)a[12]) + 192); const long long s_dx0 = 256;
          float* restrict p_dx1 = ((float*)a[16]); const long long s_dx1 = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float x1 = p_x1[r*s_x1 + i];
              const float gy = p_gy[r*s_gy + i];
              const float v0 = ((0.5f * tanhf((0.5f * x0))) + 0.5f);
              const float g0 = (gy * x1);
              p_dx0[r*s_dx0 + i] += ((g0 * v0) * (1.0f - v0));
              p_dx1[r*s_dx1 + i] += (gy * v0);
            }
          }
        }
        {
          const float* restrict p_x0 = (((float*)a[4]) + (t)*B*64); const long long s_x0 = 64;
          const float* restrict p_gy = ((float*)a[16]); const long long s_gy = 64;
          float* restrict p_dx0 = (((float*)a[15]) + (t)*B*64); const long long s_dx0 = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float gy = p_gy[r*s_gy + i];
              const float v0 = tanhf(x0);
              p_dx0[r*s_dx0 + i] += (gy * (1.0f - (v0 * v0)));
            }
          }
        }
        {
          const float* restrict p_x0 = ((((float*)a[1]) + (t)*B*256) + 64); const long long s_x0 = 256;
          const float* restrict p_x1 = (t >= 1 ? (((float*)a[4]) + (t - 1)*B*64) : (((float*)a[8]) + t*B*64)); const long long s_x1 = 64;
          const float* restrict p_gy = (((float*)a[15]) + (t)*B*64); const long long s_gy = 64;
          float* restrict p_dx0 = (((float*)a[12]) + 64); const long long s_dx0 = 256;
          float* restrict p_dx1 = (t >= 1 ? (((float*)a[15]) + (t - 1)*B*64) : (((float*)a[19]) + t*B*64)); const long long s_dx1 = 64;
          float* restrict p_dx2 = ((float*)a[14]); const long long s_dx2 = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float x1 = p_x1[r*s_x1 + i];
              const float gy = p_gy[r*s_gy + i];
              const float v0 = ((0.5f * tanhf((0.5f * x0))) + 0.5f);
              const float g1 = gy;
              const float g0 = (g1 * x1);
              p_dx0[r*s_dx0 + i] += ((g0 * v0) * (1.0f - v0));
              p_dx1[r*s_dx1 + i] += (g1 * v0);
              p_dx2[r*s_dx2 + i] += gy;
            }
          }
        }
        {
          const float* restrict p_x0 = ((((float*)a[1]) + (t)*B*256) + 0); const long long s_x0 = 256;
          const float* restrict p_x1 = (((float*)a[2]) + (t)*B*64); const long long s_x1 = 64;
          const float* restrict p_gy = ((float*)a[14]); const long long s_gy = 64;
          float* restrict p_dx0 = (((float*)a[12]) + 0); const long long s_dx0 = 256;
          float* restrict p_dx1 = ((float*)a[13]); const long long s_dx1 = 64;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float x0 = p_x0[r*s_x0 + i];
              const float x1 = p_x1[r*s_x1 + i];
              const float gy = p_gy[r*s_gy + i];
              const float v0 = ((0.5f * tanhf((0.5f * x0))) + 0.5f);
              const float g0 = (gy * x1);
              p_dx0[r*s_dx0 + i] += ((g0 * v0) * (1.0f - v0));
              p_dx1[r*s_dx1 + i] += (gy * v0);
            }
          }
        }
        {
          const float* restrict p_gy = ((float*)a[13]); const long long s_gy = 64;
          const float* restrict p_y = (((float*)a[2]) + (t)*B*64); const long long s_y = 64;
          float* restrict p_dx0 = (((float*)a[12]) + 128); const long long s_dx0 = 256;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 64; i++) {
              const float gy = p_gy[r*s_gy + i];
              const float y = p_y[r*s_y + i];
              p_dx0[r*s_dx0 + i] += (gy * (1.0f - (y * y)));
            }
          }
        }
        {
          const float* restrict p_gy = ((float*)a[12]); const long long s_gy = 256;
          float* restrict p_dx1 = (((float*)a[11]) + (t)*B*256); const long long s_dx1 = 256;
          for (long long r = 0; r < B; r++) {
            #pragma omp simd
            for (long long i = 0; i < 256; i++) {
              const float gy = p_gy[r*s_gy + i];
              p_dx1[r*s_dx1 + i] += gy;
            }
          }
        }
        gemm(101, 111, 111, B, 64, 256, 1, (((float*)a[11]) + (t)*B*256), 256, ((float*)a[10]), 64, 1, (t >= 1 ? (((float*)a[17]) + (t - 1)*B*64) : (((float*)a[20]) + t*B*64)), 64);
    }
}
