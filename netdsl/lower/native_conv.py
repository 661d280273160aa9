"""C source for the native target's 2-D convolutions: one module per dtype.

Sizes are arguments, not constants, so one library serves every layer. Every function
runs over the images b0 .. b1 of a batch laid out (B, C, H, W), so that the runtime
can hand each thread a slab of the batch (ctypes releases the GIL during the call).
Each takes the geometry as C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW.

- `conv_forward_gemm`: per image, its columns (C*KH*KW, OH*OW) in one pass into
  scratch, then one GEMM W (O, K) @ cols (K, OH*OW) through the BLAS NumPy loaded
  (its CBLAS ?gemm's address is an argument) whose result is the image's output
  (O, OH, OW) itself; the bias is added after.
- `conv_forward_direct`: no columns: each image padded once into scratch, then per
  block of OB output channels and output row, every (c, kh, kw) adds its weight times
  a row of the padded image to OB output rows. The innermost loop runs along the output
  row and is vectorised by the compiler; for few input channels (a first layer's 1 or
  3) the GEMM's depth K is too small for BLAS to run well and this wins.
- `conv_backward_gemm`: per image, its columns again, dW (O, K) += gy (O, N) @ cols^T,
  db += the sums of gy's rows, and (unless dx is NULL) the column gradients
  W^T (K, O) @ gy (O, N) in the same scratch, added back onto dx (col2im).

Only text is made here; netdsl.runtime.native.conv compiles and calls it.
"""
from __future__ import annotations

from netdsl.lower.cuda import CTYPES

__all__ = ["conv_module", "FUNCTIONS", "OUTPUT_BLOCK", "GEOMETRY"]

# the geometry arguments every function takes, in order
GEOMETRY = ("C", "H", "W", "O", "KH", "KW", "OH", "OW", "SH", "SW", "PH", "PW", "DH", "DW")

FUNCTIONS = ("conv_forward_gemm", "conv_forward_direct", "conv_backward_gemm")

# output channels the direct kernel accumulates at once: each row of the padded image it
# loads is used OUTPUT_BLOCK times, and OUTPUT_BLOCK output rows stay in the cache
OUTPUT_BLOCK = 4

# CBLAS's enums
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_SIZES = ", ".join(f"const L {name}" for name in GEOMETRY)


def conv_module(dtype: str, index_type: str, gemm: str) -> str:
    """The C module of the convolution kernels for `dtype`, calling CBLAS's GEMM of the
    integer type `index_type` (named `gemm` in a comment)."""
    t = CTYPES[dtype]
    return _TEMPLATE.format(T=t, I=index_type, gemm=gemm, SIZES=_SIZES, OB=OUTPUT_BLOCK,
                            RM=ROW_MAJOR, N=NO_TRANS, TR=TRANS)


_TEMPLATE = """\
#include <string.h>

typedef long long L;
typedef {T} T;
/* {gemm}: CBLAS's ?gemm */
typedef {I} I;
typedef void (*gemm_t)(int, int, int, I, I, I, T, const T*, I, const T*, I, T, T*, I);

/* The columns of one image x (C, H, W): row (c, kh, kw) holds, at each output position,
   the cell under that kernel offset, zero in the padding. At stride 1 a row's stretch
   inside the image is one copy. */
static void columns(const T* restrict x, T* restrict cols, {SIZES})
{{
    const L N = OH * OW;
    for (L c = 0; c < C; ++c)
        for (L kh = 0; kh < KH; ++kh)
            for (L kw = 0; kw < KW; ++kw) {{
                T* restrict row = cols + ((c * KH + kh) * KW + kw) * N;
                const L dw = kw * DW - PW;
                /* the output columns whose cell lies inside the image: lo <= ow < hi */
                L lo = dw >= 0 ? 0 : (-dw + SW - 1) / SW;
                L hi = W - dw > 0 ? (W - dw + SW - 1) / SW : 0;
                if (hi > OW) hi = OW;
                if (lo > hi) lo = hi;
                for (L oh = 0; oh < OH; ++oh) {{
                    T* restrict out = row + oh * OW;
                    const L h = oh * SH - PH + kh * DH;
                    if (h < 0 || h >= H) {{
                        memset(out, 0, OW * sizeof(T));
                        continue;
                    }}
                    const T* restrict in = x + (c * H + h) * W + dw;
                    for (L ow = 0; ow < lo; ++ow) out[ow] = 0;
                    if (SW == 1)
                        memcpy(out + lo, in + lo, (hi - lo) * sizeof(T));
                    else
                        for (L ow = lo; ow < hi; ++ow) out[ow] = in[ow * SW];
                    for (L ow = hi; ow < OW; ++ow) out[ow] = 0;
                }}
            }}
}}

/* Add the column gradients dcols back onto one image's dx (C, H, W), zeroed first. */
static void add_columns(const T* restrict dcols, T* restrict dx, {SIZES})
{{
    const L N = OH * OW;
    memset(dx, 0, C * H * W * sizeof(T));
    for (L c = 0; c < C; ++c)
        for (L kh = 0; kh < KH; ++kh)
            for (L kw = 0; kw < KW; ++kw) {{
                const T* restrict row = dcols + ((c * KH + kh) * KW + kw) * N;
                const L dw = kw * DW - PW;
                L lo = dw >= 0 ? 0 : (-dw + SW - 1) / SW;
                L hi = W - dw > 0 ? (W - dw + SW - 1) / SW : 0;
                if (hi > OW) hi = OW;
                if (lo > hi) lo = hi;
                for (L oh = 0; oh < OH; ++oh) {{
                    const L h = oh * SH - PH + kh * DH;
                    if (h < 0 || h >= H) continue;
                    T* restrict out = dx + (c * H + h) * W + dw;
                    const T* restrict in = row + oh * OW;
                    if (SW == 1)
                        for (L ow = lo; ow < hi; ++ow) out[ow] += in[ow];
                    else
                        for (L ow = lo; ow < hi; ++ow) out[ow * SW] += in[ow];
                }}
            }}
}}

/* y (B, O, OH, OW) of images b0 .. b1; scratch holds one image's columns. */
void conv_forward_gemm(gemm_t gemm, const T* restrict x, const T* restrict w,
                       const T* restrict bias, T* restrict y, T* restrict scratch,
                       const L b0, const L b1, {SIZES})
{{
    const L N = OH * OW, K = C * KH * KW;
    for (L b = b0; b < b1; ++b) {{
        T* restrict yb = y + b * O * N;
        columns(x + b * C * H * W, scratch, C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW);
        gemm({RM}, {N}, {N}, O, N, K, 1, w, K, scratch, N, 0, yb, N);
        if (bias)
            for (L o = 0; o < O; ++o)
                for (L i = 0; i < N; ++i) yb[o * N + i] += bias[o];
    }}
}}

/* y (B, O, OH, OW) of images b0 .. b1 without columns; scratch holds one padded image
   (C, H + 2 PH, W + 2 PW): every window lies inside it. */
void conv_forward_direct(gemm_t gemm, const T* restrict x, const T* restrict w,
                         const T* restrict bias, T* restrict y, T* restrict scratch,
                         const L b0, const L b1, {SIZES})
{{
    (void)gemm;
    const L HP = H + 2 * PH, WP = W + 2 * PW, N = OH * OW;
    memset(scratch, 0, C * HP * WP * sizeof(T));
    for (L b = b0; b < b1; ++b) {{
        const T* restrict xb = x + b * C * H * W;
        for (L c = 0; c < C; ++c)
            for (L h = 0; h < H; ++h)
                memcpy(scratch + (c * HP + h + PH) * WP + PW, xb + (c * H + h) * W,
                       W * sizeof(T));
        T* restrict yb = y + b * O * N;
        for (L o0 = 0; o0 < O; o0 += {OB}) {{
            const L ob = O - o0 < {OB} ? O - o0 : {OB};
            for (L oh = 0; oh < OH; ++oh) {{
                T acc[{OB}][OW];
                for (L j = 0; j < ob; ++j) {{
                    const T start = bias ? bias[o0 + j] : 0;
                    for (L ow = 0; ow < OW; ++ow) acc[j][ow] = start;
                }}
                for (L c = 0; c < C; ++c)
                    for (L kh = 0; kh < KH; ++kh) {{
                        const T* restrict row = scratch + (c * HP + oh * SH + kh * DH) * WP;
                        for (L kw = 0; kw < KW; ++kw) {{
                            const T* restrict in = row + kw * DW;
                            if (ob == {OB}) {{
                                T k[{OB}];
                                for (L j = 0; j < {OB}; ++j)
                                    k[j] = w[(((o0 + j) * C + c) * KH + kh) * KW + kw];
                                if (SW == 1)
                                    for (L ow = 0; ow < OW; ++ow) {{
                                        const T v = in[ow];
                                        for (L j = 0; j < {OB}; ++j) acc[j][ow] += k[j] * v;
                                    }}
                                else
                                    for (L ow = 0; ow < OW; ++ow) {{
                                        const T v = in[ow * SW];
                                        for (L j = 0; j < {OB}; ++j) acc[j][ow] += k[j] * v;
                                    }}
                            }} else
                                for (L j = 0; j < ob; ++j) {{
                                    const T k = w[(((o0 + j) * C + c) * KH + kh) * KW + kw];
                                    for (L ow = 0; ow < OW; ++ow) acc[j][ow] += k * in[ow * SW];
                                }}
                        }}
                    }}
                for (L j = 0; j < ob; ++j)
                    memcpy(yb + ((o0 + j) * OH + oh) * OW, acc[j], OW * sizeof(T));
            }}
        }}
    }}
}}

/* Images b0 .. b1's sums into dw (O, C, KH, KW) and db (O), which hold the sums so far;
   their dx (B, C, H, W) unless dx is NULL. scratch holds one image's columns. */
void conv_backward_gemm(gemm_t gemm, const T* restrict gy, const T* restrict x,
                        const T* restrict w, T* restrict dx, T* restrict dw, T* restrict db,
                        T* restrict scratch, const L b0, const L b1, {SIZES})
{{
    const L N = OH * OW, K = C * KH * KW;
    for (L b = b0; b < b1; ++b) {{
        const T* restrict g = gy + b * O * N;
        for (L o = 0; o < O; ++o) {{
            T sum = 0;
            for (L i = 0; i < N; ++i) sum += g[o * N + i];
            db[o] += sum;
        }}
        columns(x + b * C * H * W, scratch, C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW);
        gemm({RM}, {N}, {TR}, O, K, N, 1, g, N, scratch, N, 1, dw, K);
        if (dx) {{
            gemm({RM}, {TR}, {N}, K, N, O, 1, w, K, g, N, 0, scratch, N);
            add_columns(scratch, dx + b * C * H * W, C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW,
                        DH, DW);
        }}
    }}
}}
"""
