#include <math.h>
#include <string.h>

typedef long long L;
typedef float T;
typedef void (*part_t)(void*, L, L);
typedef void (*pool_t)(part_t, void*, L);

static void run_parts(void* pool, part_t fn, void* arg, L parts) {
    if (pool && parts > 1)
        ((pool_t)pool)(fn, arg, parts);
    else
        for (L part = 0; part < parts; part++)
            fn(arg, part, parts);
}

/* CBLAS's GEMM (scipy_cblas_?gemm64_), called by address */
typedef long long I;
typedef void (*cblas_gemm_t)(int, int, int, I, I, I, T, const T*, I, const T*, I, T, T*, I);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

/* C = op(A) op(B) by CBLAS's GEMM (on one thread), the larger of C's two sides split
   among the parts */
typedef struct {
    void* gemm; int ta, tb;
    L M, N, K;
    const T* a; L lda; const T* b; L ldb; T* c; L ldc;
} blas_call;

static void blas_part(void* arg, L part, L parts) {
    const blas_call* s = (const blas_call*)arg;
    const cblas_gemm_t gemm = (cblas_gemm_t)s->gemm;
    if (s->M >= s->N) {
        const L r0 = s->M * part / parts, r1 = s->M * (part + 1) / parts;
        if (r1 > r0)
            gemm(ROW_MAJOR, s->ta, s->tb, (I)(r1 - r0), (I)s->N, (I)s->K, 1,
                 s->a + (s->ta == TRANS ? r0 : r0 * s->lda), (I)s->lda, s->b, (I)s->ldb,
                 0, s->c + r0 * s->ldc, (I)s->ldc);
    } else {
        const L c0 = s->N * part / parts, c1 = s->N * (part + 1) / parts;
        if (c1 > c0)
            gemm(ROW_MAJOR, s->ta, s->tb, (I)s->M, (I)(c1 - c0), (I)s->K, 1, s->a,
                 (I)s->lda, s->b + (s->tb == TRANS ? c0 * s->ldb : c0), (I)s->ldb, 0,
                 s->c + c0, (I)s->ldc);
    }
}

void dense_blas_gemm(void* pool, L parts, void* gemm, int ta, int tb, L M, L N, L K,
                     const T* a, L lda, const T* b, L ldb, T* c, L ldc) {
    blas_call s = {gemm, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, M, N, K, a, lda, b,
                   ldb, c, ldc};
    run_parts(pool, blas_part, &s, parts);
}

