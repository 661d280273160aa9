"""C source of a dense layer's kernels for the native target: the passes of a layer joined
to the chain after it (lower.conv_chain), and a GEMM of the generated C's own, which the
runtime times against BLAS's per shape (runtime.native.dense).

- `passes_module`: `dense_epilogue` adds the bias and applies the chain after the layer
  (relu, tanh: any one-input chain whose gradient follows from its output) over y in
  place, after a GEMM wrote x W^T there; `dense_chain_gradient` takes gy back through
  the chain from its output y (over gy where the caller owns it) and sums the bias's
  gradient in the same pass;
- `gemm_module`: `dense_gemm`, C = A B for A and B given by their strides (the forward's
  x W^T, the weight's gradient gy^T x, the input's gy W), a micro-kernel of MR rows by
  two vectors of columns in registers (8 x 32 floats where the CPU has AVX-512, 6 x 16
  with AVX2) over B packed in panels as each part needs it (the weights change every
  step), the parts the output's panels of columns, or its rows where there are fewer
  panels than parts, on the C pool (lower.native_pool) or the calling thread.

float32 and float64 (vectors of 64 or 32 bytes either way). Only text is made here;
netdsl.runtime.native.dense compiles and calls it.
"""
from __future__ import annotations

from netdsl.lower.codegen import Program
from netdsl.lower.cuda import CTYPES
from netdsl.lower.native_conv import Chained
from netdsl.ops.expr import c

__all__ = ["passes_module", "gemm_module", "scratch_elements", "PANEL_VECTORS"]

PANEL_VECTORS = 2   # a panel's columns: this many vectors


def scratch_elements(k: int, parts: int, itemsize: int) -> int:
    """Elements of scratch `dense_gemm` needs over K: one packed panel per part (the
    widest panel: two 64-byte vectors)."""
    return parts * k * PANEL_VECTORS * 64 // itemsize


def passes_module(dtype: str, chain: Chained | None) -> str:
    """The C module of a joined dense layer's passes for `dtype`: dense_epilogue (the bias
    and the chain's forward formula over y in place) and dense_chain_gradient (the
    chain's gradient and the bias's)."""
    ctype = CTYPES[dtype]
    return (_COMMON.replace("@T@", ctype) + _chain_forward(ctype, chain)
            + _chain_gradient(ctype, chain.gradient if chain else None) + _PASSES)


def gemm_module(dtype: str) -> str:
    """The C module of the own GEMM for `dtype`: dense_gemm."""
    return _COMMON.replace("@T@", CTYPES[dtype]) + _OWN


def _chain_forward(ctype: str, chain: Chained | None) -> str:
    if chain is None:
        return "#define CHAIN(v) (v)\n"
    program = chain.forward
    [(_, output)] = program.writes
    body = [f"    const {ctype} {n} = {c(e, ctype)};" for n, e in program.lets]
    return (f"/* {program.name}: the chain after the dense layer, on each output */\n"
            f"static inline {ctype} chain(const {ctype} x0)\n{{\n"
            + "".join(line + "\n" for line in body)
            + f"    return {c(output, ctype)};\n}}\n#define CHAIN(v) chain(v)\n")


def _chain_gradient(ctype: str, program: Program | None) -> str:
    if program is None:
        return "#define CHAIN_GRADIENT(y, gy) (gy)\n"
    [(_, grad)] = program.writes
    body = [f"    const {ctype} {n} = {c(e, ctype)};" for n, e in program.lets]
    return (f"/* {program.name}: the chain's gradient from its output */\n"
            f"static inline {ctype} chain_gradient(const {ctype} y, const {ctype} gy)\n{{\n"
            "    (void)y; (void)gy;\n" + "".join(line + "\n" for line in body)
            + f"    return {c(grad, ctype)};\n}}\n"
            "#define CHAIN_GRADIENT(y, gy) chain_gradient(y, gy)\n")


_COMMON = r"""#include <math.h>
#include <string.h>

typedef long long L;
typedef @T@ T;
typedef void (*part_t)(void*, L, L);
typedef void (*pool_t)(part_t, void*, L);

static void run_parts(void* pool, part_t fn, void* arg, L parts) {
    if (pool && parts > 1)
        ((pool_t)pool)(fn, arg, parts);
    else
        for (L part = 0; part < parts; part++)
            fn(arg, part, parts);
}

"""

# the own GEMM: registers and panels
_OWN = r"""/* MR rows by PW columns in 2 * MR vector registers, 2 more for B's */
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

"""

_PASSES = r"""/* g = the chain's gradient from y and gy (g may be gy), db = its sums over the rows
   (NULL: not wanted); columns split among the parts */
typedef struct {
    L B, N;
    const T* y; const T* gy; T* g; T* db;
} gradient_call;

static void gradient_part(void* arg, L part, L parts) {
    const gradient_call* s = (const gradient_call*)arg;
    const L j0 = s->N * part / parts, j1 = s->N * (part + 1) / parts;
    if (s->db)
        for (L j = j0; j < j1; j++)
            s->db[j] = 0;
    for (L r = 0; r < s->B; r++) {
        const T* y = s->y + r*s->N;
        const T* gy = s->gy + r*s->N;
        T* g = s->g + r*s->N;
        if (s->db) {
            #pragma omp simd
            for (L j = j0; j < j1; j++) {
                const T v = CHAIN_GRADIENT(y[j], gy[j]);
                g[j] = v;
                s->db[j] += v;
            }
        } else {
            #pragma omp simd
            for (L j = j0; j < j1; j++)
                g[j] = CHAIN_GRADIENT(y[j], gy[j]);
        }
    }
}

/* y = CHAIN(y + bias) over y's rows in place, after BLAS's GEMM wrote x w^T there
   (bias NULL: none) */
typedef struct {
    L B, N;
    T* y; const T* bias;
} epilogue_call;

static void epilogue_part(void* arg, L part, L parts) {
    const epilogue_call* s = (const epilogue_call*)arg;
    const L r0 = s->B * part / parts, r1 = s->B * (part + 1) / parts;
    for (L r = r0; r < r1; r++) {
        T* y = s->y + r*s->N;
        if (s->bias) {
            #pragma omp simd
            for (L j = 0; j < s->N; j++)
                y[j] = CHAIN(y[j] + s->bias[j]);
        } else {
            #pragma omp simd
            for (L j = 0; j < s->N; j++)
                y[j] = CHAIN(y[j]);
        }
    }
}

void dense_epilogue(void* pool, L parts, L B, L N, T* y, const T* bias) {
    epilogue_call s = {B, N, y, bias};
    run_parts(pool, epilogue_part, &s, parts);
}

void dense_chain_gradient(void* pool, L parts, L B, L N, const T* y, const T* gy, T* g,
                          T* db) {
    gradient_call s = {B, N, y, gy, g, db};
    run_parts(pool, gradient_part, &s, parts);
}
"""
