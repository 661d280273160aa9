/* scipy_cblas_sgemm64_: CBLAS's ?gemm, one thread a part */
typedef long long I;
typedef void (*gemm_t)(int, int, int, I, I, I, float, const float*, I, const float*, I,
                       float, float*, I);
typedef void (*part_t)(void*, long long, long long);
typedef void (*pool_t)(part_t, void*, long long);
typedef struct { gemm_t gemm; int ta, tb; long long M, N, K; const float* A; long long lda;
                 const float* B; long long ldb; float beta; float* C; long long ldc; } product_t;

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
    share(g->M, 16, part, parts, &r0, &r1);
    if (r0 >= r1) return;
    const float* A = g->ta == 111 ? g->A + r0*g->lda : g->A + r0;
    g->gemm(101, g->ta, g->tb, r1 - r0, g->N, g->K, 1, A, g->lda, g->B, g->ldb,
            g->beta, g->C + r0*g->ldc, g->ldc);
}

/* columns c0 .. c1 of C: of B's columns, or of its rows where it is read transposed */
static void columns_part(void* product, long long part, long long parts) {
    const product_t* g = (const product_t*)product;
    long long c0, c1;
    share(g->N, 16, part, parts, &c0, &c1);
    if (c0 >= c1) return;
    const float* B = g->tb == 111 ? g->B + c0 : g->B + c0*g->ldb;
    g->gemm(101, g->ta, g->tb, g->M, c1 - c0, g->K, 1, g->A, g->lda, B, g->ldb,
            g->beta, g->C + c0, g->ldc);
}

/* C = A B (+ C where beta is 1), row-major, over `parts` parts of the pool */
void split_gemm(pool_t pool, long long parts, gemm_t gemm, int ta, int tb, long long M,
                long long N, long long K, const float* A, long long lda, const float* B,
                long long ldb, float beta, float* C, long long ldc) {
    product_t g = {gemm, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc};
    pool(M >= N ? rows_part : columns_part, &g, parts);
}
