#include <math.h>
#include <string.h>

typedef long long L;
typedef double T;
typedef void (*part_t)(void*, L, L);
typedef void (*pool_t)(part_t, void*, L);

static void run_parts(void* pool, part_t fn, void* arg, L parts) {
    if (pool && parts > 1)
        ((pool_t)pool)(fn, arg, parts);
    else
        for (L part = 0; part < parts; part++)
            fn(arg, part, parts);
}

/* MR rows by PW columns in 2 * MR vector registers, 2 more for B's */
#if defined(__AVX512F__)
#define VBYTES 64
#define MR 8
#else
#define VBYTES 32
#define MR 6
#endif
#define VL ((L)(VBYTES / sizeof(T)))
#define PW (2 * VL)
typedef T vec __attribute__((vector_size(VBYTES)));

/* columns n0 .. n0+w (w <= PW) of B (K rows; element (k, n) at b[k*bk + n*bn]) into
   one panel p[k][PW], zeros beyond w */
static void pack_panel(const T* b, L bk, L bn, L K, L n0, L w, T* restrict p) {
    if (bn == 1 && w == PW) {
        for (L k = 0; k < K; k++)
            memcpy(p + k*PW, b + k*bk + n0, PW * sizeof(T));
        return;
    }
    if (w < PW)
        memset(p, 0, (size_t)(K * PW) * sizeof(T));
    if (bn == 1) {
        for (L k = 0; k < K; k++)
            for (L j = 0; j < w; j++)
                p[k*PW + j] = b[k*bk + n0 + j];
    } else {   /* a transposed B: read along k */
        for (L j = 0; j < w; j++)
            for (L k = 0; k < K; k++)
                p[k*PW + j] = b[k*bk + (n0 + j)*bn];
    }
}

/* rows r .. r+m (m <= MR) of A times one panel: acc[i] = row i's PW sums */
static inline void tile(L m, L K, const T* a, L as, L ak, const T* restrict p,
                        T out[MR][PW]) {
    vec acc[MR][2];
    for (int i = 0; i < MR; i++) {
        acc[i][0] = (vec){0};
        acc[i][1] = (vec){0};
    }
    if (m == MR) {
        for (L k = 0; k < K; k++) {
            vec b0, b1;
            memcpy(&b0, p + k*PW, VBYTES);
            memcpy(&b1, p + k*PW + VL, VBYTES);
            const T* col = a + k*ak;
            for (int i = 0; i < MR; i++) {
                const T x = col[i*as];
                acc[i][0] += x * b0;
                acc[i][1] += x * b1;
            }
        }
    } else {
        for (L k = 0; k < K; k++) {
            vec b0, b1;
            memcpy(&b0, p + k*PW, VBYTES);
            memcpy(&b1, p + k*PW + VL, VBYTES);
            const T* col = a + k*ak;
            for (int i = 0; i < m; i++) {
                const T x = col[i*as];
                acc[i][0] += x * b0;
                acc[i][1] += x * b1;
            }
        }
    }
    for (int i = 0; i < MR; i++) {
        memcpy(out[i], &acc[i][0], VBYTES);
        memcpy(out[i] + VL, &acc[i][1], VBYTES);
    }
}

/* one call: C (M x N) = A (M x K) B (K x N) */
typedef struct {
    L M, N, K;
    const T* a; L as, ak;
    const T* b; L bk, bn;
    T* c; L ldc;
    T* scratch;         /* a panel (K * PW) per part */
} gemm_call;

/* which panels and rows a part computes: panels split among the parts where there are
   enough of them, else rows (in blocks of MR), each part packing the panels it needs */
static void part_range(const gemm_call* g, L part, L parts, L* p0, L* p1, L* r0, L* r1) {
    const L panels = (g->N + PW - 1) / PW;
    if (panels >= parts) {
        *p0 = panels * part / parts; *p1 = panels * (part + 1) / parts;
        *r0 = 0; *r1 = g->M;
    } else {
        const L blocks = (g->M + MR - 1) / MR;
        *p0 = 0; *p1 = panels;
        *r0 = blocks * part / parts * MR; *r1 = blocks * (part + 1) / parts * MR;
        if (*r1 > g->M) *r1 = g->M;
    }
}

static void gemm_part(void* arg, L part, L parts) {
    const gemm_call* g = (const gemm_call*)arg;
    L p0, p1, r0, r1;
    part_range(g, part, parts, &p0, &p1, &r0, &r1);
    if (r0 >= r1)
        return;
    T* panel = g->scratch + part * g->K * PW;
    T out[MR][PW];
    for (L q = p0; q < p1; q++) {
        const L n0 = q * PW, w = g->N - n0 < PW ? g->N - n0 : PW;
        pack_panel(g->b, g->bk, g->bn, g->K, n0, w, panel);
        for (L r = r0; r < r1; r += MR) {
            const L m = r1 - r < MR ? r1 - r : MR;
            tile(m, g->K, g->a + r*g->as, g->as, g->ak, panel, out);
            for (L i = 0; i < m; i++)
                memcpy(g->c + (r + i)*g->ldc + n0, out[i], (size_t)w * sizeof(T));
        }
    }
}

/* C = A B: A's element (i, k) at a[i*as + k*ak], B's (k, n) at b[k*bk + n*bn], C's
   rows ldc apart; scratch: K * PW elements per part */
void dense_gemm(void* pool, L parts, L M, L N, L K, const T* a, L as, L ak,
                const T* b, L bk, L bn, T* c, L ldc, T* scratch) {
    gemm_call g = {M, N, K, a, as, ak, b, bk, bn, c, ldc, scratch};
    run_parts(pool, gemm_part, &g, parts);
}

