#include <math.h>
#include <stdlib.h>
#include <string.h>

__attribute__((simd("notinbranch"))) float tanhf(float);
/* scipy_cblas_sgemm64_: CBLAS's ?gemm */
typedef long long I;
typedef void (*gemm_t)(int, int, int, I, I, I, float, const float*, I, const float*, I, float, float*, I);

/* the thread pool (netdsl.lower.native_pool) and what each part of a step reads */
typedef void (*part_t)(void*, long long, long long);
typedef void (*pool_t)(part_t, void*, long long);
typedef struct { gemm_t gemm; long long t, B; void* const* a;
                 float* packed[8]; } step_t;

/* part `part` of `parts` even shares of n, in blocks of `align` */
static inline void share(long long n, long long align, long long part, long long parts,
                         long long* lo, long long* hi) {
    const long long blocks = (n + align - 1) / align;
    *lo = blocks * part / parts * align;
    *hi = blocks * (part + 1) / parts * align;
    if (*lo > n) *lo = n;
    if (*hi > n) *hi = n;
}

static void loop_forward_part0(void* step, const long long part, const long long parts) {
    const step_t* s = (const step_t*)step;
    const gemm_t gemm = s->gemm; const long long t = s->t, B = s->B;
    void* const* a = s->a;
    (void)gemm; (void)t; (void)a;
    long long c0, c1;
    share(64, 16, part, parts, &c0, &c1);
    if (c0 >= c1) return;
    gemm(101, 111, 111, B, c1 - c0, 64, 1, (t >= 1 ? (((float*)a[1]) + (t - 1)*B*64) : (((float*)a[3]) + t*B*64)), 64, ((float*)a[5]) + c0, 64, 0, ((float*)a[0]) + c0, 64);
}

static void loop_forward_part1(void* step, const long long part, const long long parts) {
    const step_t* s = (const step_t*)step;
    const gemm_t gemm = s->gemm; const long long t = s->t, B = s->B;
    void* const* a = s->a;
    (void)gemm; (void)t; (void)a;
    long long r0, r1;
    share(B, 1, part, parts, &r0, &r1);
    if (r0 >= r1) return;
    {
      const float* restrict p_x0 = (((float*)a[2]) + t*B*64); const long long s_x0 = 64;
      const float* restrict p_x1 = ((float*)a[0]); const long long s_x1 = 64;
      float* restrict p_y = (((float*)a[1]) + (t)*B*64); const long long s_y = 64;
      for (long long r = r0; r < r1; r++) {
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

void loop_forward(gemm_t gemm, pool_t pool, const long long parts, const long long T, const long long B, void* const* a) {
    step_t s = {gemm, 0, B, a, {0}};
    for (s.t = 0; s.t < T; s.t++) {
        pool(loop_forward_part0, &s, parts);
        pool(loop_forward_part1, &s, parts);
    }
}

static void loop_backward_part0(void* step, const long long part, const long long parts) {
    const step_t* s = (const step_t*)step;
    const gemm_t gemm = s->gemm; const long long t = s->t, B = s->B;
    void* const* a = s->a;
    (void)gemm; (void)t; (void)a;
    long long r0, r1;
    share(B, 1, part, parts, &r0, &r1);
    if (r0 >= r1) return;
    {
      const float* restrict p_gy = (((float*)a[7]) + (t)*B*64); const long long s_gy = 64;
      const float* restrict p_y = (((float*)a[1]) + (t)*B*64); const long long s_y = 64;
      float* restrict p_dx1 = (((float*)a[6]) + (t)*B*64); const long long s_dx1 = 64;
      for (long long r = r0; r < r1; r++) {
        #pragma omp simd
        for (long long i = 0; i < 64; i++) {
          const float gy = p_gy[r*s_gy + i];
          const float y = p_y[r*s_y + i];
          const float g0 = (gy * (1.0f - (y * y)));
          p_dx1[r*s_dx1 + i] += g0;
        }
      }
    }
}

static void loop_backward_part1(void* step, const long long part, const long long parts) {
    const step_t* s = (const step_t*)step;
    const gemm_t gemm = s->gemm; const long long t = s->t, B = s->B;
    void* const* a = s->a;
    (void)gemm; (void)t; (void)a;
    long long c0, c1;
    share(64, 16, part, parts, &c0, &c1);
    if (c0 >= c1) return;
    gemm(101, 111, 111, B, c1 - c0, 64, 1, (((float*)a[6]) + (t)*B*64), 64, ((float*)a[4]) + c0, 64, 1, (t >= 1 ? (((float*)a[7]) + (t - 1)*B*64) : (((float*)a[9]) + t*B*64)) + c0, 64);
}

void loop_backward(gemm_t gemm, pool_t pool, const long long parts, const long long T, const long long B, void* const* a) {
    step_t s = {gemm, 0, B, a, {0}};
    for (s.t = T - 1; s.t >= 0; s.t--) {
        pool(loop_backward_part0, &s, parts);
        pool(loop_backward_part1, &s, parts);
    }
}
