"""C source of a GEMM split over the native target's thread pool, for a step whose
recurrent loop splits its steps over the same pool (netdsl.runtime.native.split_gemm).

A training step of a recurrent network has GEMMs outside its loop too: the hoisted input
projection before it, the weight gradients over all steps' rows after it, a dense head.
On OpenBLAS's threads each of them leaves OpenBLAS's worker spinning (about 0.1 s,
without yielding) on the core the pool's worker needs for the loop. Split here instead,
every part calls the BLAS GEMM on one thread (the caller holds BLAS there for the whole
pass) on its block: C's rows (A's rows, or A's columns where A is read transposed) when
C has at least as many rows as columns, else C's columns (B's), in blocks of a cache
line. Only text is made here.
"""
from __future__ import annotations

__all__ = ["split_gemm_source", "ROW_MAJOR", "NO_TRANS", "TRANS"]

# CBLAS's enumerations, as netdsl.lower.native_loop passes them
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_SOURCE = r"""/* %(symbol)s: CBLAS's ?gemm, one thread a part */
typedef %(index)s I;
typedef void (*gemm_t)(int, int, int, I, I, I, %(t)s, const %(t)s*, I, const %(t)s*, I,
                       %(t)s, %(t)s*, I);
typedef void (*part_t)(void*, long long, long long);
typedef void (*pool_t)(part_t, void*, long long);
typedef struct { gemm_t gemm; int ta, tb; long long M, N, K; const %(t)s* A; long long lda;
                 const %(t)s* B; long long ldb; %(t)s beta; %(t)s* C; long long ldc; } product_t;

/* part `part` of `parts` even shares of n, in blocks of `align` */
static inline void share(long long n, long long align, long long part, long long parts,
                         long long* lo, long long* hi) {
    const long long blocks = (n + align - 1) / align;
    *lo = blocks * part / parts * align;
    *hi = blocks * (part + 1) / parts * align;
    if (*lo > n) *lo = n;
    if (*hi > n) *hi = n;
}

/* rows r0 .. r1 of C: of A's rows, or of its columns where it is read transposed */
static void rows_part(void* product, long long part, long long parts) {
    const product_t* g = (const product_t*)product;
    long long r0, r1;
    share(g->M, %(align)d, part, parts, &r0, &r1);
    if (r0 >= r1) return;
    const %(t)s* A = g->ta == %(no_trans)d ? g->A + r0*g->lda : g->A + r0;
    g->gemm(%(row_major)d, g->ta, g->tb, r1 - r0, g->N, g->K, 1, A, g->lda, g->B, g->ldb,
            g->beta, g->C + r0*g->ldc, g->ldc);
}

/* columns c0 .. c1 of C: of B's columns, or of its rows where it is read transposed */
static void columns_part(void* product, long long part, long long parts) {
    const product_t* g = (const product_t*)product;
    long long c0, c1;
    share(g->N, %(align)d, part, parts, &c0, &c1);
    if (c0 >= c1) return;
    const %(t)s* B = g->tb == %(no_trans)d ? g->B + c0 : g->B + c0*g->ldb;
    g->gemm(%(row_major)d, g->ta, g->tb, g->M, c1 - c0, g->K, 1, g->A, g->lda, B, g->ldb,
            g->beta, g->C + c0, g->ldc);
}

/* C = A B (+ C where beta is 1), row-major, over `parts` parts of the pool */
void split_gemm(pool_t pool, long long parts, gemm_t gemm, int ta, int tb, long long M,
                long long N, long long K, const %(t)s* A, long long lda, const %(t)s* B,
                long long ldb, %(t)s beta, %(t)s* C, long long ldc) {
    product_t g = {gemm, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc};
    pool(M >= N ? rows_part : columns_part, &g, parts);
}
"""


def split_gemm_source(dtype: str, index_type: str, symbol: str) -> str:
    """The source of `split_gemm` for float32 or float64, with the BLAS's integer type
    (`long long` in the ILP64 builds NumPy ships) and its GEMM's name (for a comment)."""
    t = {"float32": "float", "float64": "double"}[str(dtype)]
    return _SOURCE % {"t": t, "index": index_type, "symbol": symbol,
                      "align": 64 // (4 if t == "float" else 8), "no_trans": NO_TRANS,
                      "row_major": ROW_MAJOR}
