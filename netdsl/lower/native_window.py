"""C source for the native target's max pooling: one module per dtype.

Both functions run over the planes p0 .. p1 of (planes, H, W) arrays, a plane being one
channel of one example, so that the runtime can hand each thread a slab of the batch's
planes (ctypes releases the GIL during the call). Sizes are arguments, not constants;
rank 1 runs as rank 2 with a height of one. Each takes the geometry as SIZES.

- `maxpool_forward`, `_narrow` and `_short` (64-, 32- and 16-byte vectors): per output
  row, the windows wholly inside the image's columns a vector of them at a time, each
  lane one window's maximum and index kept in registers over the window's cells; the
  windows at the row's ends one at a time, without a branch per cell. The index kept
  is the flat index of the window's first maximum in its input plane (as PyTorch's
  return_indices, and ops.pool's NumPy path: the cells are visited in row-major order
  and only a greater one, or a NaN, takes over; a NaN is the maximum, as in PyTorch
  and in NumPy's y). The runtime times those whose vector a row's inner windows fill
  (`fitting_kernels`) on a shape's first call and keeps the fastest; the widest that
  fits (`forward_kernel`) without that timing.
- `maxpool_backward`: dx zeroed, then each output's gradient added at its index
  (windows that overlap may pick one cell twice).

Only text is made here; netdsl.runtime.native.pooling compiles and calls it.
"""
from __future__ import annotations

from netdsl.lower.cuda import CTYPES

__all__ = ["pooling_module", "SIZES", "FUNCTIONS", "pool_sizes", "forward_kernels",
           "forward_kernel", "fitting_kernels"]

# the geometry arguments both functions take, in order
SIZES = ("H", "W", "KH", "KW", "OH", "OW", "SH", "SW", "PH", "PW")

FUNCTIONS = ("maxpool_forward", "maxpool_forward_narrow", "maxpool_forward_short",
             "maxpool_backward")

_SIZES = ", ".join(f"const L {name}" for name in SIZES)


def pool_sizes(spatial, geometry) -> tuple[int, ...]:
    """SIZES' values for a pooling of planes `spatial` (1 or 2 dims) over an
    ops.windows.Geometry's windows (its low pads; the high side is the output's size)."""
    g = geometry
    if len(spatial) == 1:
        return (1, spatial[0], 1, g.kernel[0], 1, g.out[0], 1, g.stride[0], 0, g.lows[0])
    return (*spatial, *g.kernel, *g.out, *g.stride, *g.lows)


def pooling_module(dtype: str) -> str:
    """The C module of the max-pooling kernels for `dtype`: a forward per vector width
    (`forward_kernels`), and the backward."""
    forwards = "".join(_FORWARD.format(NAME=name, VL=vl, SIZES=_SIZES,
                                       EVEN=", ".join(str(2 * j) for j in range(vl)))
                       for name, vl in forward_kernels(dtype).items())
    return _TEMPLATE.format(T=CTYPES[dtype], M=_MASKS[dtype], SIZES=_SIZES,
                            FORWARD=forwards)


def forward_kernels(dtype: str) -> dict[str, int]:
    """The forward kernels, widest first: name -> windows a vector holds, 64, 32 and 16
    bytes' worth."""
    item = _ITEMSIZE[dtype]
    return {"maxpool_forward": 64 // item, "maxpool_forward_narrow": 32 // item,
            "maxpool_forward_short": 16 // item}


def forward_kernel(dtype: str, sizes) -> str:
    """The widest forward kernel whose vector a row's inner windows fill (W6's 28-wide
    rows: 64 bytes; W2's 14-wide: 32; its 5-wide: 16), for SIZES' values `sizes`."""
    return fitting_kernels(dtype, sizes)[0]


def fitting_kernels(dtype: str, sizes) -> list[str]:
    """The forward kernels whose vector a row's inner windows fill, widest first (the
    16-byte one always: a row too short for it runs window by window), for SIZES'
    values `sizes`: the candidates the runtime times. Which is fastest depends on the
    machine: without AVX-512 GCC splits a 64-byte vector's comparisons and selects,
    and the widest kernel took 6 times the 16-byte one's time on W6's pooling."""
    w, kw, ow, sw, pw = sizes[1], sizes[3], sizes[5], sizes[7], sizes[9]
    inner = min(ow, (w - kw + pw) // sw + 1 if w - kw + pw >= 0 else 0) - -(-pw // sw)
    fitting = [name for name, lanes in forward_kernels(dtype).items() if inner >= lanes]
    return fitting or ["maxpool_forward_short"]


_MASKS = {"float32": "int", "float64": "long long"}
_ITEMSIZE = {"float32": 4, "float64": 8}


_TEMPLATE = """\
#include <string.h>

typedef long long L;
typedef {T} T;
typedef {M} M;   /* an integer of T's width: a comparison's mask */

/* One cell of a window, without a branch: GCC branches on a select of floats, and which
   cell holds a window's maximum is a coin toss on real data (a branch mispredicted per
   cell ran W2's pooling three times as long as NumPy's). A greater cell or a NaN takes
   over. */
static inline void take(const T v, const M at, T* best, M* arg)
{{
    M vb, bb;
    memcpy(&vb, &v, sizeof(T));
    memcpy(&bb, best, sizeof(T));
    const M m = -(M)((v > *best) | (v != v));
    const M r = (vb & m) | (bb & ~m);
    memcpy(best, &r, sizeof(T));
    *arg = (at & m) | (*arg & ~m);
}}

/* A window that crosses the image's left or right edge (rows kh0 .. kh1 of the kernel
   lie in the image, its columns are checked): its maximum and the flat index of its
   first maximum. best starts at -inf and the index at the window's first cell in the
   image, which a window of -inf keeps. */
static void edge_window(const T* restrict plane, T* restrict y, int* restrict index,
                        const L h0, const L kh0, const L kh1, const L w0, const L W,
                        const L KW)
{{
    const L kw0 = w0 < 0 ? -w0 : 0, kw1 = W - w0 < KW ? W - w0 : KW;
    T best = -(T)__builtin_inf();
    M arg = (M)((h0 + kh0) * W + w0 + kw0);
    for (L kh = kh0; kh < kh1; ++kh)
        for (L kw = kw0; kw < kw1; ++kw) {{
            const L at = (h0 + kh) * W + w0 + kw;
            take(plane[at], (M)at, &best, &arg);
        }}
    *y = best;
    *index = (int)arg;
}}

{FORWARD}
/* dx (planes, H, W) of planes p0 .. p1: zeros, plus each output's gradient at its
   index. */
void maxpool_backward(const T* restrict gy, const int* restrict index, T* restrict dx,
                      const L p0, const L p1, {SIZES})
{{
    (void)KH; (void)KW; (void)SH; (void)SW; (void)PH; (void)PW;
    const L N = OH * OW;
    for (L p = p0; p < p1; ++p) {{
        T* restrict plane = dx + p * H * W;
        const T* restrict g = gy + p * N;
        const int* restrict at = index + p * N;
        memset(plane, 0, H * W * sizeof(T));
        for (L i = 0; i < N; ++i) plane[at[i]] += g[i];
    }}
}}
"""

_FORWARD = """\
/* y and index (planes, OH, OW) of planes p0 .. p1 of x (planes, H, W), {VL} windows at
   once. Every window holds a cell of the image (pads are at most half the kernel). Per
   output row, the windows wholly inside the image's columns run {VL} at a time in
   vectors (GCC's vector extension), each lane a window's maximum and index, over the
   window's cells; the last vector overlaps the one before rather than leave a tail.
   Stride 2 loads two vectors and takes their even lanes. The windows at the row's ends,
   and rows of fewer than {VL} such windows, run one at a time. */
typedef T vec{VL} __attribute__((vector_size({VL} * sizeof(T)), aligned(sizeof(T))));
typedef M mask{VL} __attribute__((vector_size({VL} * sizeof(T)), aligned(sizeof(T))));

void {NAME}(const T* restrict x, T* restrict y, int* restrict index, const L p0,
            const L p1, {SIZES})
{{
    typedef vec{VL} vec;
    typedef mask{VL} mask;
    enum {{ VL = {VL} }};
    /* the outputs whose window's columns all lie in the image: lo <= ow < hi */
    L lo = (PW + SW - 1) / SW, hi = W - KW + PW >= 0 ? (W - KW + PW) / SW + 1 : 0;
    if (hi > OW) hi = OW;
    if (lo > hi) lo = hi;
    mask lane;
    for (L j = 0; j < VL; ++j) lane[j] = (M)(j * SW);
    for (L p = p0; p < p1; ++p) {{
        const T* restrict plane = x + p * H * W;
        for (L oh = 0; oh < OH; ++oh) {{
            const L h0 = oh * SH - PH;
            const L kh0 = h0 < 0 ? -h0 : 0, kh1 = H - h0 < KH ? H - h0 : KH;
            T* restrict yr = y + (p * OH + oh) * OW;
            int* restrict ir = index + (p * OH + oh) * OW;
            L ow = 0;
            for (; ow < lo; ++ow)
                edge_window(plane, yr + ow, ir + ow, h0, kh0, kh1, ow * SW - PW, W, KW);
            for (L next = ow; next < hi && hi - lo >= VL; next += VL) {{
                ow = next + VL <= hi ? next : hi - VL;
                const L w0 = ow * SW - PW;
                vec best = (vec){{0}} - (T)__builtin_inf();
                mask arg = lane + (M)((h0 + kh0) * W + w0);
                for (L kh = kh0; kh < kh1; ++kh) {{
                    const T* restrict row = plane + (h0 + kh) * W + w0;
                    for (L kw = 0; kw < KW; ++kw) {{
                        vec v;
                        if (SW == 1)
                            memcpy(&v, row + kw, sizeof(v));
                        else if (SW == 2 && w0 + kw + 2 * VL <= W) {{
                            vec a, b;
                            memcpy(&a, row + kw, sizeof(a));
                            memcpy(&b, row + kw + VL, sizeof(b));
                            v = __builtin_shufflevector(a, b, {EVEN});
                        }} else
                            for (L j = 0; j < VL; ++j) v[j] = row[kw + j * SW];
                        const mask m = (v > best) | (v != v);
                        best = (vec)(((mask)v & m) | ((mask)best & ~m));
                        arg = ((lane + (M)((h0 + kh) * W + w0 + kw)) & m) | (arg & ~m);
                    }}
                }}
                memcpy(yr + ow, &best, sizeof(best));
                for (L j = 0; j < VL; ++j) ir[ow + j] = (int)arg[j];
                ow += VL;
            }}
            for (; ow < OW; ++ow)
                edge_window(plane, yr + ow, ir + ow, h0, kh0, kh1, ow * SW - PW, W, KW);
        }}
    }}
}}
"""
