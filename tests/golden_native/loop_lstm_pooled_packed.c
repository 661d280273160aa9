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

/* a weight packed in panels of 32 columns, P[panel][k][32], once a call */
#if defined(__AVX512F__)
#define PACK_VL 16   /* floats a vector: 8 rows by 32 columns in 16 registers */
#define PACK_ROWS 8
#else
#define PACK_VL 8    /* AVX2's 16 registers: 4 rows by 16 columns in 8 */
#define PACK_ROWS 4
#endif
typedef float vpf __attribute__((vector_size(PACK_VL * sizeof(float))));
static void pack_panels(const float* w, long long ldw, long long K, long long N,
                        float* p) {
    for (long long c = 0; c < N; c += 32)
        for (long long k = 0; k < K; k++)
            memcpy(p + c*K + k*32, w + k*ldw + c, 32*sizeof(float));
}

/* C (M x N) = A (M x K) times the packed panels, plus C unless beta is 0;
   M a multiple of 8, N of 32: PACK_ROWS rows by two vectors' columns at a time */
static void gemm_packed(long long M, long long N, long long K, const float* A,
                        long long lda, const float* p, int beta, float* C, long long ldc) {
    for (long long c = 0; c < N; c += 32) {
        const float* panel = p + c*K;
        for (long long h = 0; h < 32; h += 2*PACK_VL)
        for (long long r = 0; r < M; r += PACK_ROWS) {
            vpf acc[PACK_ROWS][2];
            float* y = C + r*ldc + c + h;
            for (int i = 0; i < PACK_ROWS; i++) {
                if (beta) {
                    memcpy(&acc[i][0], y + i*ldc, sizeof(vpf));
                    memcpy(&acc[i][1], y + i*ldc + PACK_VL, sizeof(vpf));
                } else {
                    acc[i][0] = (vpf){0};
                    acc[i][1] = (vpf){0};
                }
            }
            const float* a = A + r*lda;
            for (long long k = 0; k < K; k++) {
                vpf b0, b1;
                memcpy(&b0, panel + k*32 + h, sizeof(vpf));
                memcpy(&b1, panel + k*32 + h + PACK_VL, sizeof(vpf));
                for (int i = 0; i < PACK_ROWS; i++) {
                    const float x = a[i*lda + k];
                    acc[i][0] += x * b0;
                    acc[i][1] += x * b1;
                }
            }
            for (int i = 0; i < PACK_ROWS; i++) {
                memcpy(y + i*ldc, &acc[i][0], sizeof(vpf));
                memcpy(y + i*ldc + PACK_VL, &acc[i][1], sizeof(vpf));
            }
        }
    }
}

static void loop_forward_part0(void* step, const long long part, const long long parts) {
    const step_t* s = (const step_t*)step;
    const gemm_t gemm = s->gemm; const long long t = s->t, B = s->B;
    void* const* a = s->a;
    (void)gemm; (void)t; (void)a;
    long long c0, c1;
    share(256, 32, part, parts, &c0, &c1);
    if (c0 >= c1) return;
    for (long long r = 0; r < B; r++) memcpy((((float*)a[1]) + (t)*B*256) + r*256 + c0, (((float*)a[7]) + t*B*256) + r*256 + c0, (c1 - c0)*sizeof(float));
    if (s->packed[0]) gemm_packed(B, c1 - c0, 64, (t >= 1 ? (((float*)a[6]) + (t - 1)*B*64) : (((float*)a[9]) + t*B*64)), 64, s->packed[0] + c0*64, 1, (((float*)a[1]) + (t)*B*256) + c0, 256);
    else gemm(101, 111, 111, B, c1 - c0, 64, 1, (t >= 1 ? (((float*)a[6]) + (t - 1)*B*64) : (((float*)a[9]) + t*B*64)), 64, ((float*)a[11]) + c0, 256, 1, (((float*)a[1]) + (t)*B*256) + c0, 256);
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
      const float* restrict p0 = ((((float*)a[1]) + (t)*B*256) + 128);
      float* restrict p1 = (((float*)a[2]) + (t)*B*64);
      float* restrict p2 = ((((float*)a[1]) + (t)*B*256) + 0);
      float* restrict p3 = ((((float*)a[1]) + (t)*B*256) + 64);
      const float* restrict p4 = (t >= 1 ? (((float*)a[4]) + (t - 1)*B*64) : (((float*)a[8]) + t*B*64));
      float* restrict p5 = (((float*)a[4]) + (t)*B*64);
      float* restrict p6 = (((float*)a[5]) + (t)*B*64);
      float* restrict p7 = ((((float*)a[1]) + (t)*B*256) + 192);
      float* restrict p8 = (((float*)a[6]) + (t)*B*64);
      for (long long r = r0; r < r1; r++) {
        #pragma omp simd
        for (long long i = 0; i < 64; i++) {
          const float k0_x0 = p0[r*256 + i];
          const float k0_v0 = tanhf(k0_x0);
          const float k0_y = k0_v0;
          p1[r*64 + i] = k0_y;
          const float k1_x0 = p2[r*256 + i];
          const float k1_x1 = k0_y;
          const float k1_v0 = ((0.5f * tanhf((0.5f * k1_x0))) + 0.5f);
          const float k1_v1 = (k1_v0 * k1_x1);
          const float k1_y = k1_v1;
          p2[r*256 + i] = k1_v0;
          const float k2_x0 = p3[r*256 + i];
          const float k2_x1 = p4[r*64 + i];
          const float k2_x2 = k1_y;
          const float k2_v0 = ((0.5f * tanhf((0.5f * k2_x0))) + 0.5f);
          const float k2_v1 = (k2_v0 * k2_x1);
          const float k2_v2 = (k2_v1 + k2_x2);
          const float k2_y = k2_v2;
          p5[r*64 + i] = k2_y;
          p3[r*256 + i] = k2_v0;
          const float k3_x0 = k2_y;
          const float k3_v0 = tanhf(k3_x0);
          const float k3_y = k3_v0;
          p6[r*64 + i] = k3_y;
          const float k4_x0 = p7[r*256 + i];
          const float k4_x1 = k3_y;
          const float k4_v0 = ((0.5f * tanhf((0.5f * k4_x0))) + 0.5f);
          const float k4_v1 = (k4_v0 * k4_x1);
          const float k4_y = k4_v1;
          p8[r*64 + i] = k4_y;
          p7[r*256 + i] = k4_v0;
        }
      }
    }
}

void loop_forward(gemm_t gemm, pool_t pool, const long long parts, const long long T, const long long B, void* const* a) {
    step_t s = {gemm, 0, B, a, {0}};
    if (B % 8 == 0) {
        s.packed[0] = (float*)a[12] + 0;
        pack_panels(((float*)a[11]), 256, 64, 256, s.packed[0]);
    }
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
      const float* restrict p0 = ((((float*)a[1]) + (t)*B*256) + 192);
      const float* restrict p1 = (((float*)a[5]) + (t)*B*64);
      const float* restrict p2 = (((float*)a[19]) + (t)*B*64);
      float* restrict p3 = ((((float*)a[13]) + (t)*B*256) + 192);
      const float* restrict p4 = ((((float*)a[1]) + (t)*B*256) + 64);
      const float* restrict p5 = (t >= 1 ? (((float*)a[4]) + (t - 1)*B*64) : (((float*)a[8]) + t*B*64));
      const float* restrict p6 = (((float*)a[17]) + (t)*B*64);
      float* restrict p7 = ((((float*)a[13]) + (t)*B*256) + 64);
      float* restrict p8 = (t >= 1 ? (((float*)a[17]) + (t - 1)*B*64) : (((float*)a[21]) + t*B*64));
      const float* restrict p9 = ((((float*)a[1]) + (t)*B*256) + 0);
      const float* restrict p10 = (((float*)a[2]) + (t)*B*64);
      float* restrict p11 = ((((float*)a[13]) + (t)*B*256) + 0);
      float* restrict p12 = ((((float*)a[13]) + (t)*B*256) + 128);
      for (long long r = r0; r < r1; r++) {
        #pragma omp simd
        for (long long i = 0; i < 64; i++) {
          const float k4_x0 = p0[r*256 + i];
          const float k4_x1 = p1[r*64 + i];
          const float k4_gy = p2[r*64 + i];
          const float k4_v0 = k4_x0;
          const float k4_g0 = (k4_gy * k4_x1);
          p3[r*256 + i] += ((k4_g0 * k4_v0) * (1.0f - k4_v0));
          const float k4_dx1 = (k4_gy * k4_v0);
          const float k3_gy = k4_dx1;
          const float k3_y = p1[r*64 + i];
          const float k3_dx0 = (k3_gy * (1.0f - (k3_y * k3_y)));
          const float k2_x0 = p4[r*256 + i];
          const float k2_x1 = p5[r*64 + i];
          const float k2_gy = p6[r*64 + i] + k3_dx0;
          const float k2_v0 = k2_x0;
          const float k2_g1 = k2_gy;
          const float k2_g0 = (k2_g1 * k2_x1);
          p7[r*256 + i] += ((k2_g0 * k2_v0) * (1.0f - k2_v0));
          p8[r*64 + i] += (k2_g1 * k2_v0);
          const float k2_dx2 = k2_gy;
          const float k1_x0 = p9[r*256 + i];
          const float k1_x1 = p10[r*64 + i];
          const float k1_gy = k2_dx2;
          const float k1_v0 = k1_x0;
          const float k1_g0 = (k1_gy * k1_x1);
          p11[r*256 + i] += ((k1_g0 * k1_v0) * (1.0f - k1_v0));
          const float k1_dx1 = (k1_gy * k1_v0);
          const float k0_gy = k1_dx1;
          const float k0_y = p10[r*64 + i];
          p12[r*256 + i] += (k0_gy * (1.0f - (k0_y * k0_y)));
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
    share(64, 32, part, parts, &c0, &c1);
    if (c0 >= c1) return;
    if (s->packed[0]) gemm_packed(B, c1 - c0, 256, (((float*)a[13]) + (t)*B*256), 256, s->packed[0] + c0*256, 1, (t >= 1 ? (((float*)a[19]) + (t - 1)*B*64) : (((float*)a[22]) + t*B*64)) + c0, 64);
    else gemm(101, 111, 111, B, c1 - c0, 256, 1, (((float*)a[13]) + (t)*B*256), 256, ((float*)a[10]) + c0, 64, 1, (t >= 1 ? (((float*)a[19]) + (t - 1)*B*64) : (((float*)a[22]) + t*B*64)) + c0, 64);
}

void loop_backward(gemm_t gemm, pool_t pool, const long long parts, const long long T, const long long B, void* const* a) {
    step_t s = {gemm, 0, B, a, {0}};
    if (B % 8 == 0) {
        s.packed[0] = (float*)a[12] + 0;
        pack_panels(((float*)a[10]), 64, 256, 64, s.packed[0]);
    }
    for (s.t = T - 1; s.t >= 0; s.t--) {
        pool(loop_backward_part0, &s, parts);
        pool(loop_backward_part1, &s, parts);
    }
}
