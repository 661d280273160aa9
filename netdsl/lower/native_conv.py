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

Each kernel's scratch is a function of the sizes here (`gemm_scratch`, `direct_scratch`,
`weight_grad_scratch`, `winograd_scratch`, ...), which the runtime allocates by and
`kernel_scratch` sums into a bound per call for the memory plan.

Only text is made here; netdsl.runtime.native.conv compiles and calls it.
"""
from __future__ import annotations

from typing import NamedTuple

from netdsl.lower.codegen import Program
from netdsl.lower.cuda import CTYPES
from netdsl.ops.expr import c
from netdsl.ops.parallel import CHUNK_BYTES, SLABS_PER_THREAD, chunk_examples, even_slabs
from netdsl.switches import flag

__all__ = ["conv_module", "Chained", "chain_source", "FUNCTIONS", "OUTPUT_BLOCK", "GEOMETRY", "lanes", "planes",
           "direct_blocks", "direct_kernel", "geometry_sizes", "gemm_scratch",
           "slab_sizes", "kernel_scratch", "largest_scratch", "SLABS_PER_THREAD",
           "direct_scratch", "weight_grad_scratch", "winograd_module", "WINOGRAD_FUNCTIONS",
           "winograd_fits", "winograd_rows", "winograd_chunk_rows", "winograd_scratch",
           "winograd_grad_scratch"]

# the geometry arguments every function takes, in order
GEOMETRY = ("C", "H", "W", "O", "KH", "KW", "OH", "OW", "SH", "SW", "PH", "PW", "DH", "DW")

FUNCTIONS = ("conv_forward_gemm", "conv_forward_direct", "conv_forward_direct_narrow",
             "conv_weight_grad_direct", "conv_backward_gemm")

# output channels the direct kernel accumulates at once: each row of the padded image it
# loads is used OUTPUT_BLOCK times, and OUTPUT_BLOCK output rows stay in the cache
OUTPUT_BLOCK = 8

# kernel cells (and output channels, OUTPUT_BLOCK // 2) the direct weight gradient sums
# at once, over one vector of positions: 16 vector sums in registers
CELL_BLOCK = 4

CTYPE_SIZES = {"float32": 4, "float64": 8}

# CBLAS's enums
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_SIZES = ", ".join(f"const L {name}" for name in GEOMETRY)


class Chained(NamedTuple):
    """An elementwise chain applied where a convolution writes its output: its forward
    program (x0 -> y) and its gradient from its output (gy, y -> dx0)."""

    forward: Program
    gradient: Program


def conv_module(dtype: str, index_type: str, gemm: str, chain: Chained | None = None) -> str:
    """The C module of the convolution kernels for `dtype`, calling CBLAS's GEMM of the
    integer type `index_type` (named `gemm` in a comment); with `chain`, each forward
    kernel applies it to every output as it writes it, and `conv_chain_gradient` is
    added (`chain_source`)."""
    t = CTYPES[dtype]
    direct = "".join(_DIRECT.format(NAME=name, OB=blocks, V=positions, SIZES=_SIZES)
                     for name, (blocks, positions) in direct_blocks(dtype).items())
    source = _TEMPLATE.format(T=t, I=index_type, gemm=gemm, SIZES=_SIZES, DIRECT=direct,
                              W=lanes(dtype) // 2, VL=lanes(dtype) // 2, IB=CELL_BLOCK,
                              GB=OUTPUT_BLOCK // 2, CHAIN=chain_source(dtype, chain),
                              RM=ROW_MAJOR, N=NO_TRANS, TR=TRANS)
    return source if chain is None else source + _gradient_source(dtype, chain.gradient)


def chain_source(dtype: str, chain: Chained | None) -> str:
    """The kernels' CHAIN(v), applied to each output (its bias added) as it is written:
    the chain's forward formula as a function of one element, or v itself."""
    if chain is None:
        return "#define CHAINED 0\n#define CHAIN(v) (v)\n"
    ctype = CTYPES[dtype]
    program = chain.forward
    [(_, output)] = program.writes
    body = [f"    const {ctype} {n} = {c(e, ctype)};" for n, e in program.lets]
    return ("#include <math.h>\n"
            f"/* {program.name}: the chain after the convolution, on each output */\n"
            "#define CHAINED 1\n"
            f"static inline {ctype} chain(const {ctype} x0)\n{{\n"
            + "\n".join(body) + ("\n" if body else "")
            + f"    return {c(output, ctype)};\n}}\n#define CHAIN(v) chain(v)\n")


def _gradient_source(dtype: str, program: Program) -> str:
    """conv_chain_gradient: the chain's gradient with respect to the convolution's output,
    from the chain's output y and its gradient gy, written to g (which may be gy itself)
    and summed per output channel into db (the bias gradient) unless db is NULL, over
    images b0 .. b1 of (B, O, N) arrays; gy's images GS elements apart (a concatenation's
    gradient hands each branch a slice of its own: read in place, not copied)."""
    ctype = CTYPES[dtype]
    [(_, grad)] = program.writes
    lines = [f"    const {ctype} {n} = {c(e, ctype)};" for n, e in program.lets]
    lets = "\n".join("        " + line for line in lines)
    return f"""
/* {program.name}: g = the chain's gradient, db += its sums per channel */
void conv_chain_gradient(const T* y_, const T* gy_, T* g_, T* restrict db, const L b0,
                         const L b1, const L O, const L N, const L GS)
{{
    for (L b = b0; b < b1; ++b)
        for (L o = 0; o < O; ++o) {{
            const L at = (b * O + o) * N, from = b * GS + o * N;
            T sum = 0;
            #pragma omp simd reduction(+:sum)
            for (L i = 0; i < N; ++i) {{
                const T y = y_[at + i], gy = gy_[from + i];
                (void)y; (void)gy;
{lets}
                const T g = {c(grad, ctype)};
                g_[at + i] = g;
                sum += g;
            }}
            if (db) db[o] += sum;
        }}
}}
"""


def lanes(dtype: str) -> int:
    """Output positions the direct kernel sums at once: two 64-byte vectors' worth."""
    return 2 * 64 // CTYPE_SIZES[dtype]


def direct_blocks(dtype: str) -> dict[str, tuple[int, int]]:
    """The direct forward kernels: name -> (output channels, positions) summed at once in
    registers. The narrow one, one vector of positions by twice the channels, wastes
    fewer positions on a small image (ResNet's 8x8 planes: 78 positions, 96 in blocks of
    32, 80 in blocks of 16)."""
    return {"conv_forward_direct": (OUTPUT_BLOCK, lanes(dtype)),
            "conv_forward_direct_narrow": (2 * OUTPUT_BLOCK, lanes(dtype) // 2)}


def direct_kernel(dtype: str, sizes) -> str:
    """The direct forward kernel for GEOMETRY's values `sizes`: the narrow one where the
    wide one's blocks would add more than an eighth to the positions."""
    span = _span(sizes, 1)
    return ("conv_forward_direct_narrow" if _span(sizes, lanes(dtype)) * 8 > span * 9
            else "conv_forward_direct")


def planes(sizes) -> int:
    """Elements of the direct kernels' padded image P (the C source's PLANES_LAYOUT) for
    GEOMETRY's values `sizes`."""
    c, _, _, _, kh, kw, oh, ow, sh, sw, _, _, dh, dw = sizes
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    return sh * sw * c * -(-hp // sh) * -(-wp // sw)


def _span(sizes, block: int) -> int:
    """The flat grid's positions, in whole blocks: (OH - 1) * WQ + OW."""
    kw, oh, ow, sw, dw = sizes[5], sizes[6], sizes[7], sizes[9], sizes[13]
    wq = -(-((ow - 1) * sw + (kw - 1) * dw + 1) // sw)
    return -(-((oh - 1) * wq + ow) // block) * block


def geometry_sizes(channels: int, out_channels: int, geometry) -> tuple[int, ...]:
    """GEOMETRY's values for a convolution of `channels` into `out_channels` over an
    ops.windows.Geometry; rank 1 as rank 2 with a height of one."""
    g = geometry
    if len(g.spatial) == 1:
        spatial, kernel, out = (1, *g.spatial), (1, *g.kernel), (1, *g.out)
        stride, dilation, lows = (1, *g.stride), (1, *g.dilation), (0, *g.lows)
    else:
        spatial, kernel, out, stride, dilation, lows = (g.spatial, g.kernel, g.out, g.stride,
                                                        g.dilation, g.lows)
    return (channels, *spatial, out_channels, *kernel, *out, *stride, *lows, *dilation)


def gemm_scratch(sizes) -> int:
    """Elements of conv_forward_gemm's and conv_backward_gemm's scratch: one image's
    columns (C*KH*KW, OH*OW)."""
    c, _, _, _, kh, kw, oh, ow = sizes[:8]
    return c * kh * kw * oh * ow


def direct_scratch(dtype: str, sizes, kernel: str) -> int:
    """Elements of a direct forward kernel's scratch: P and its slack, the weights
    (K, O) in whole blocks, and a block's output rows."""
    c, o, kh, kw = sizes[0], sizes[3], sizes[4], sizes[5]
    ob, v = direct_blocks(dtype)[kernel]
    return planes(sizes) + v + c * kh * kw * -(-o // ob) * ob + ob * _span(sizes, v)


def weight_grad_scratch(dtype: str, sizes, images: int = 1) -> int:
    """Elements of conv_weight_grad_direct's scratch for a call over `images` images:
    their P and its slack, their G (O in whole blocks, span)."""
    o, w = sizes[3], lanes(dtype) // 2
    blocks = -(-o // (OUTPUT_BLOCK // 2)) * (OUTPUT_BLOCK // 2)
    return images * (planes(sizes) + blocks * _span(sizes, w)) + w


# ---- the scratch a layer's kernels hold at once, for the memory plan

# bytes of Python's own objects around a call and each slab (the arrays' headers, ctypes'
# arguments, the slab's closure and result): 3-4 KiB a slab, measured by tracemalloc
CALL_OBJECTS = 4096


def slab_sizes(batch: int, threads: int, per_thread: int | None = None) -> list[int]:
    """The slabs runtime.host splits a batch into on `threads` threads (`per_thread` a
    thread where given), as their sizes (a slab's partial weight gradients live until
    every slab is done)."""
    return [part.stop - part.start for part in even_slabs(batch, threads, per_thread)]


def _flipped_sizes(sizes) -> tuple[int, ...] | None:
    """The sizes of dx as a forward over gy with the weight flipped (stride 1), or None
    where its pads would be negative (as runtime.native.conv's _input_grad_geometry)."""
    c, h, w, o, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw = sizes
    lows = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
    if (sh, sw) != (1, 1) or min(lows) < 0:
        return None
    return (o, oh, ow, c, kh, kw, h, w, 1, 1, *lows, dh, dw)


def kernel_scratch(dtype: str, sizes, batch: int, threads: int
                   ) -> dict[str, tuple[int, int]]:
    """Bytes each compiled kernel that may run this layer holds beyond its inputs and
    outputs, at most, in one call over `batch` images on `threads` threads: kind ->
    (forward, backward with dx). Per slab running at once its scratch (sized by the
    functions runtime.native.conv allocates with), per slab its partial weight and bias
    gradients (kept until all are summed), and once per call what the call makes before
    or after the slabs (the flipped weight, Winograd's U, the weight gradient's
    transform back; a dx made after the slabs has the summed weight gradient beside
    it); 0 for a way the kind is no candidate (Winograd's backward at a pad
    past 2). The largest over how the batch may be split: whole on one thread
    (an op too small to split), or in slab_sizes with `threads` slabs at once."""
    item = CTYPE_SIZES[dtype]
    c, o, kh, kw = sizes[0], sizes[3], sizes[4], sizes[5]
    weight = o * c * kh * kw
    splits = _splits(batch, threads)
    # a Winograd call in one slab per thread (WINOGRAD_SLAB_A_THREAD)
    winograd_splits = _splits(batch, threads, 1 if WINOGRAD_SLAB_A_THREAD else None)
    lows_fit = min(sizes[10], sizes[11]) >= 0
    flipped = _flipped_sizes(sizes)
    found = {}

    def worst(each, among=splits) -> int:
        return max(item * each(*split) + CALL_OBJECTS * (1 + split[1]) for split in among)

    columns = gemm_scratch(sizes)
    found["gemm"] = (worst(lambda n, count, running: running * columns),
                     worst(lambda n, count, running: count * (weight + o) + running * columns))
    if lows_fit:
        def direct_forward(shape, running):
            return running * direct_scratch(dtype, shape, direct_kernel(dtype, shape))

        per_image = weight_grad_scratch(dtype, sizes) * item

        def direct_backward(n, count, running):
            images = chunk_examples(n, per_image, CHUNK_BYTES // running)
            slab = weight_grad_scratch(dtype, sizes, images)
            if flipped is None:   # dx by col2im, its columns beside the chunk's scratch
                return count * (weight + o) + running * (slab + columns)
            # dx's forward: before the slabs, or after them beside the summed dweight
            # (a convolution with a chain masks gy in its slabs first)
            return max(2 * weight + direct_forward(flipped, running),
                       count * (weight + o) + running * slab)

        found["direct"] = (worst(lambda n, count, running: direct_forward(sizes, running)),
                           worst(direct_backward))
    if winograd_fits(sizes[4:6], sizes[8:10], sizes[12:14], sizes[10:12]):
        def winograd_forward(shape, n, running):
            rows = winograd_chunk_rows(shape, item, n, running)
            return 16 * shape[0] * shape[3] + running * winograd_scratch(dtype, shape, rows)

        forward = worst(lambda n, count, running: winograd_forward(sizes, n, running),
                        winograd_splits)
        found["winograd"] = (forward, 0)   # backward too, where dx's pads allow (below)
        if flipped is not None:
            def winograd_backward(n, count, running):
                rows = winograd_chunk_rows(sizes, item, n, running)
                partials = count * (16 * o * c + o)
                # dW = G^T . G in C (its result), or by einsum: its (3, 4, O, C)
                # intermediate, the result, a copy
                after = partials + (weight if WINOGRAD_BACK_IN_C
                                    else 12 * o * c + 2 * weight)
                if WINOGRAD_LEAN:   # dx's forward after the slabs, beside the summed
                    # dweight and dbias; the flipped weight dropped once U is made
                    dx = weight + o + max(weight + 16 * o * c,
                                          winograd_forward(flipped, n, running))
                else:   # before the slabs: the flipped weight (and its copy) and U
                    dx = 2 * weight + winograd_forward(flipped, n, running)
                return max(dx, after,
                           partials + running * winograd_grad_scratch(dtype, sizes, rows))

            found["winograd"] = (forward, worst(winograd_backward, winograd_splits))
    return found


def _splits(batch: int, threads: int, per_thread: int | None = None) -> set[tuple]:
    """(images in the largest slab, slabs, slabs at once) of each way a call over `batch`
    images may be split: whole on one thread, or in slab_sizes."""
    splits = {(batch, 1, 1)}
    slabs = slab_sizes(batch, threads, per_thread)
    if len(slabs) > 1:
        splits.add((max(slabs), len(slabs), min(threads, len(slabs))))
    return splits


def largest_scratch(dtype: str, sizes, batch: int, threads: int) -> int:
    """Bytes of the largest scratch any compiled kernel may hold for this layer, forward
    or backward (kernel_scratch): which runs is chosen by timing, at run time."""
    return max(max(pair) for pair in kernel_scratch(dtype, sizes, batch, threads).values())


_DIRECT = """\
/* y (B, O, OH, OW) of images b0 .. b1 without columns. Each image is copied once into
   P (above), read as flat runs: per block of {OB} output channels and {V} positions the
   sums stay in registers while every kernel cell i = (c, kh, kw) adds its weights (wt,
   (K, O) padded to whole blocks) times {V} cells of P from off[i] on (positions with
   ow >= OW are computed and dropped); z holds a block's rows until they are copied to
   y. scratch: P and {V} cells of slack, wt, z. */
void {NAME}(gemm_t gemm, const T* restrict x, const T* restrict w,
                         const T* restrict bias, T* restrict y, T* restrict scratch,
                         const L b0, const L b1, {SIZES})
{{
    (void)gemm;
    PLANES_LAYOUT;
    const L K = C * KH * KW, OP = (O + {OB} - 1) / {OB} * {OB};
    const L span = (OH - 1) * WQ + OW, SPAN = (span + {V} - 1) / {V} * {V};
    T* restrict P = scratch;
    T* restrict wt = P + PS + {V};
    T* restrict z = wt + K * OP;
    L off[K];
    memset(P, 0, (PS + {V}) * sizeof(T));
    for (L c = 0; c < C; ++c)
        for (L kh = 0; kh < KH; ++kh)
            for (L kw = 0; kw < KW; ++kw) {{
                const L i = (c * KH + kh) * KW + kw;
                off[i] = plane_offset(c, kh, kw, C, HQ, WQ, SH, SW, DH, DW);
                for (L o = 0; o < OP; ++o) wt[i * OP + o] = o < O ? w[o * K + i] : 0;
            }}
    for (L b = b0; b < b1; ++b) {{
        fill_planes(x + b * C * H * W, P, C, H, W, HP, WP, HQ, WQ, SH, SW, PH, PW);
        T* restrict yb = y + b * O * OH * OW;
        for (L o0 = 0; o0 < OP; o0 += {OB}) {{
            for (L p0 = 0; p0 < SPAN; p0 += {V}) {{
                vec acc[{OB}][{V} / VL];
                _Pragma("GCC unroll 16")
                for (L j = 0; j < {OB}; ++j)
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < {V} / VL; ++u) acc[j][u] = (vec){{0}};
                for (L i = 0; i < K; ++i) {{
                    const T* restrict in = P + off[i] + p0;
                    const T* restrict k = wt + i * OP + o0;
                    vec cells[{V} / VL];
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < {V} / VL; ++u) {{
                        cells[u] = *(const vec*)(in + u * VL);
                        IN_REGISTER(cells[u]);
                    }}
                    _Pragma("GCC unroll 16")
                    for (L j = 0; j < {OB}; ++j)
                        _Pragma("GCC unroll 4")
                        for (L u = 0; u < {V} / VL; ++u) acc[j][u] += k[j] * cells[u];
                }}
                _Pragma("GCC unroll 16")
                for (L j = 0; j < {OB}; ++j)
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < {V} / VL; ++u)
                        *(vec*)(z + j * SPAN + p0 + u * VL) = acc[j][u];
            }}
            for (L j = 0; j < {OB} && o0 + j < O; ++j) {{
                const T start = bias ? bias[o0 + j] : 0;
                for (L oh = 0; oh < OH; ++oh)
                    for (L ow = 0; ow < OW; ++ow)
                        yb[((o0 + j) * OH + oh) * OW + ow] =
                            CHAIN(z[j * SPAN + oh * WQ + ow] + start);
            }}
        }}
    }}
}}

"""

# both libraries' opening: the element and index types, CBLAS's ?gemm, and vectors of VL
_PREAMBLE = """\
#include <string.h>

typedef long long L;
typedef {T} T;
/* {gemm}: CBLAS's ?gemm */
typedef {I} I;
typedef void (*gemm_t)(int, int, int, I, I, I, T, const T*, I, const T*, I, T, T*, I);
/* a vector of {VL} elements (GCC's and Clang's vector extension), at any element's address */
enum {{ VL = {VL} }};
typedef T vec __attribute__((vector_size(VL * sizeof(T)), aligned(sizeof(T))));
{CHAIN}"""

_TEMPLATE = _PREAMBLE + """\
/* a loaded vector stays in a register: GCC would otherwise load it again for each use,
   and the loads, not the multiplications, would bound the loop (a 64-byte vector fits
   one register with AVX-512 only: without it the constraint cannot be met) */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__AVX512F__)
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define IN_REGISTER(v) ((void)0)
#endif

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

/* The direct kernels' padded image P: every cell a window reads, (HP, WP) per channel,
   split by stride into SH * SW phase planes (C, HQ, WQ) each, a cell (hp, wp) in plane
   (hp % SH, wp % SW) at (hp / SH, wp / SW). Output position p = oh * WQ + ow then reads
   plane cell p + plane_offset(c, kh, kw) at any stride: a run of positions reads a run
   of P. At stride 1 there is one plane, the padded image itself. */
#define PLANES_LAYOUT \
    const L HP = (OH - 1) * SH + (KH - 1) * DH + 1, WP = (OW - 1) * SW + (KW - 1) * DW + 1; \
    const L HQ = (HP + SH - 1) / SH, WQ = (WP + SW - 1) / SW, PS = SH * SW * C * HQ * WQ

static L plane_offset(L c, L kh, L kw, const L C, const L HQ, const L WQ, const L SH,
                      const L SW, const L DH, const L DW)
{{
    const L h = kh * DH, w = kw * DW;
    return (((h % SH) * SW + w % SW) * C + c) * HQ * WQ + (h / SH) * WQ + w / SW;
}}

/* Image xb (C, H, W) into P's planes, whose padding is zero already. */
static void fill_planes(const T* restrict xb, T* restrict P, const L C, const L H, const L W,
                        const L HP, const L WP, const L HQ, const L WQ, const L SH,
                        const L SW, const L PH, const L PW)
{{
    const L w0 = PW < 0 ? -PW : 0, w1 = W < WP - PW ? W : WP - PW;
    const L h0 = PH < 0 ? -PH : 0, h1 = H < HP - PH ? H : HP - PH;
    if (w1 <= w0) return;
    for (L c = 0; c < C; ++c)
        for (L h = h0; h < h1; ++h) {{
            const L hp = h + PH;
            const T* restrict in = xb + (c * H + h) * W;
            T* restrict row = P + (((hp % SH) * SW) * C + c) * HQ * WQ + (hp / SH) * WQ;
            if (SW == 1)
                memcpy(row + w0 + PW, in + w0, (w1 - w0) * sizeof(T));
            else   /* a plane at a time: its cells are every SW-th of the row */
                for (L rw = 0; rw < SW; ++rw) {{
                    T* restrict out = row + rw * C * HQ * WQ;
                    L wp = w0 + PW + ((rw - (w0 + PW) % SW) % SW + SW) % SW;
                    for (L q = wp / SW; wp < w1 + PW; wp += SW, ++q) out[q] = in[wp - PW];
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
        if (bias || CHAINED)   /* the bias and the chain in one pass, in the cache */
            for (L o = 0; o < O; ++o) {{
                const T start = bias ? bias[o] : 0;
                for (L i = 0; i < N; ++i) yb[o * N + i] = CHAIN(yb[o * N + i] + start);
            }}
    }}
}}

{DIRECT}/* Images b0 .. b1's sums into dw (O, C, KH, KW) and db (O), which hold the sums so far,
   without columns: dw[o][i] is the sum over images and positions p of G[o][p] times
   P[off[i] + p], with P each image's planes as conv_forward_direct makes them and G its
   gy laid out on the same flat grid (zero where ow >= OW; a NaN or Inf in x there would
   still reach dw, as it reaches y). Per tile of {GB} output channels and {IB} kernel
   cells the sums stay in registers over all the images, {W} positions at a time.
   scratch: P of every image and {W} cells of slack, G of every image. */
void conv_weight_grad_direct(gemm_t gemm, const T* restrict gy, const T* restrict x,
                             const T* restrict w, T* restrict dx, T* restrict dw,
                             T* restrict db, T* restrict scratch, const L b0, const L b1,
                             {SIZES})
{{
    (void)gemm; (void)w; (void)dx;
    PLANES_LAYOUT;
    const L NB = b1 - b0, K = C * KH * KW, KP = (K + {IB} - 1) / {IB} * {IB};
    const L OP = (O + {GB} - 1) / {GB} * {GB};
    const L span = (OH - 1) * WQ + OW, SPAN = (span + {W} - 1) / {W} * {W};
    const L GS = OP * SPAN;
    T* restrict P = scratch;
    T* restrict G = P + NB * PS + {W};
    L off[KP];
    memset(P, 0, (NB * PS + {W}) * sizeof(T));
    memset(G, 0, NB * GS * sizeof(T));
    for (L i = 0; i < KP; ++i)
        off[i] = i < K ? plane_offset(i / (KH * KW), i / KW % KH, i % KW, C, HQ, WQ, SH, SW,
                                      DH, DW) : 0;
    for (L n = 0; n < NB; ++n) {{
        fill_planes(x + (b0 + n) * C * H * W, P + n * PS, C, H, W, HP, WP, HQ, WQ, SH, SW,
                    PH, PW);
        const T* restrict g = gy + (b0 + n) * O * OH * OW;
        for (L o = 0; o < O; ++o) {{
            T sum = 0;
            for (L oh = 0; oh < OH; ++oh)
                for (L ow = 0; ow < OW; ++ow) {{
                    const T v = g[(o * OH + oh) * OW + ow];
                    G[n * GS + o * SPAN + oh * WQ + ow] = v;
                    sum += v;
                }}
            if (db) db[o] += sum;
        }}
    }}
    for (L o0 = 0; o0 < OP; o0 += {GB})
        for (L i0 = 0; i0 < KP; i0 += {IB}) {{
            vec acc[{GB}][{IB}];
            _Pragma("GCC unroll 16")
            for (L j = 0; j < {GB}; ++j)
                _Pragma("GCC unroll 16")
                for (L q = 0; q < {IB}; ++q) acc[j][q] = (vec){{0}};
            for (L n = 0; n < NB; ++n) {{
                const T* restrict gz = G + n * GS + o0 * SPAN;
                const T* restrict in[{IB}];
                for (L q = 0; q < {IB}; ++q) in[q] = P + n * PS + off[i0 + q];
                for (L p0 = 0; p0 < SPAN; p0 += {W}) {{
                    vec g[{GB}], cells[{IB}];
                    _Pragma("GCC unroll 16")
                    for (L j = 0; j < {GB}; ++j) {{
                        g[j] = *(const vec*)(gz + j * SPAN + p0);
                        IN_REGISTER(g[j]);
                    }}
                    _Pragma("GCC unroll 16")
                    for (L q = 0; q < {IB}; ++q) {{
                        cells[q] = *(const vec*)(in[q] + p0);
                        IN_REGISTER(cells[q]);
                    }}
                    _Pragma("GCC unroll 16")
                    for (L j = 0; j < {GB}; ++j)
                        _Pragma("GCC unroll 16")
                        for (L q = 0; q < {IB}; ++q) acc[j][q] += g[j] * cells[q];
                }}
            }}
            for (L j = 0; j < {GB} && o0 + j < O; ++j)
                for (L q = 0; q < {IB} && i0 + q < K; ++q) {{
                    T sum = 0;
                    for (L v = 0; v < {W}; ++v) sum += acc[j][q][v];
                    dw[(o0 + j) * K + i0 + q] += sum;
                }}
        }}
}}

/* Images b0 .. b1's sums into dw (O, C, KH, KW) and db (O), which hold the sums so far,
   unless dw is NULL; their dx (B, C, H, W) unless dx is NULL. scratch holds one image's
   columns. */
void conv_backward_gemm(gemm_t gemm, const T* restrict gy, const T* restrict x,
                        const T* restrict w, T* restrict dx, T* restrict dw, T* restrict db,
                        T* restrict scratch, const L b0, const L b1, {SIZES})
{{
    const L N = OH * OW, K = C * KH * KW;
    for (L b = b0; b < b1; ++b) {{
        const T* restrict g = gy + b * O * N;
        if (dw) {{
            for (L o = 0; o < O && db; ++o) {{
                T sum = 0;
                for (L i = 0; i < N; ++i) sum += g[o * N + i];
                db[o] += sum;
            }}
            columns(x + b * C * H * W, scratch, C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW,
                    DH, DW);
            gemm({RM}, {N}, {TR}, O, K, N, 1, g, N, scratch, N, 1, dw, K);
        }}
        if (dx) {{
            gemm({RM}, {TR}, {N}, K, N, O, 1, w, K, g, N, 0, scratch, N);
            add_columns(scratch, dx + b * C * H * W, C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW,
                        DH, DW);
        }}
    }}
}}
"""


# ---- Winograd F(2x2, 3x3): 3x3 kernels at stride 1, a library of its own

WINOGRAD_FUNCTIONS = ("conv_winograd_weights", "conv_winograd_weights_back",
                      "conv_forward_winograd", "conv_weight_grad_winograd")

# bytes of one chunk's transformed tiles and products (V and M, below): a chunk's
# sixteen GEMMs read and write them, and they stay in a core's L2 cache
WINOGRAD_CHUNK_BYTES = 1 << 20


def winograd_module(dtype: str, index_type: str, gemm: str,
                    chain: Chained | None = None) -> str:
    """The C module of the Winograd F(2x2, 3x3) kernels for `dtype`, calling CBLAS's
    GEMM of the integer type `index_type` (named `gemm` in a comment); with `chain`,
    the forward applies it to each output row it writes, while that is in the cache."""
    lanes = winograd_lanes(dtype)
    return _WINOGRAD.format(T=CTYPES[dtype], I=index_type, gemm=gemm, SIZES=_SIZES,
                            CHAIN=chain_source(dtype, chain),
                            VL=lanes, LOW=_interleaved(0, lanes), HIGH=_interleaved(
                                lanes // 2, lanes), RM=ROW_MAJOR, N=NO_TRANS, TR=TRANS)


def _interleaved(start: int, lanes: int) -> str:
    """__builtin_shufflevector's indices taking a's and b's lanes start, start + 1, ..
    by turns: a vector's worth of two vectors interleaved."""
    return ", ".join(f"{i}, {i + lanes}" for i in range(start, start + lanes // 2))


def winograd_lanes(dtype: str) -> int:
    """Tiles the Winograd transforms handle at once: a 32-byte vector's worth (a wider
    one would run mostly past a small image's row of tiles: 4 on an 8x8 image)."""
    return 32 // CTYPE_SIZES[dtype]


def winograd_fits(kernel, stride, dilation, lows) -> bool:
    """Whether the Winograd kernel runs a 2-D convolution: a 3x3 kernel at stride 1,
    dilation 1 and pads not negative (groups 1, as every compiled kernel)."""
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and all(lo >= 0 for lo in lows))


def winograd_rows(sizes, itemsize: int, budget: int = WINOGRAD_CHUNK_BYTES) -> int:
    """Rows of 2x2 output tiles a chunk of conv_forward_winograd transforms at once, for
    GEOMETRY's values `sizes`: its V and M within `budget` bytes, one row at least."""
    c, o, ow = sizes[0], sizes[3], sizes[7]
    per_row = 16 * (c + o) * -(-ow // 2) * itemsize
    return max(1, budget // per_row)


# Winograd's chunk of V and M: WINOGRAD_CHUNK_BYTES shared by the slabs running at
# once, and no more tile rows than its slab has. NETDSL_WINOGRAD_SHARE=0: each slab's
# chunk the whole budget, however small the slab (two threads held twice one thread's
# scratch, W3's peak 1.7 MiB above PyTorch's on two threads where on one it was equal)
WINOGRAD_SHARE = flag("NETDSL_WINOGRAD_SHARE", True)

# the Winograd weight gradient taken back by G^T . G in C (conv_winograd_weights_back),
# or by NumPy's einsum (NETDSL_WINOGRAD_BACK_IN_C=0, as before): the einsum took 180-510
# us a layer at W3's shapes, after the slabs, on one thread
WINOGRAD_BACK_IN_C = flag("NETDSL_WINOGRAD_BACK_IN_C", True)

# Winograd's scratch kept lean (NETDSL_WINOGRAD_LEAN=0: as before): a slab's share of
# the chunk budget covers its whole scratch, the rows' vector of slack and the padded
# image included (not V and M's rows alone: two slabs at once held one more of each than
# one thread's), and backward sums the weight gradient before it makes dx, by a forward
# whose U is made from a flipped weight dropped before its slabs: dx is not held beside
# the slabs' chunks and partial sums (W3's peak on two threads was in the 64@8 layers'
# weight gradient, with dx beside it)
WINOGRAD_LEAN = flag("NETDSL_WINOGRAD_LEAN", True)

# a Winograd call split in one slab per thread (NETDSL_WINOGRAD_SLAB_A_THREAD=0: the
# host's split, parallel.SLABS_PER_THREAD): each slab of the weight gradient zeroes and
# adds partial sums of its own (16 x O x C), and each sets up its chunks; at W3's 3x3
# shapes a backward on two threads in four slabs took 1.07-1.19 times one thread's CPU,
# in two 1.00-1.11, and W3's two-thread step alternating was the shorter in 44 of 60
# pairs by CPU time (415 against 447 ms), 41 by the wall clock, its peak 52.67 against
# 52.85 MiB (load 6-7)
WINOGRAD_SLAB_A_THREAD = flag("NETDSL_WINOGRAD_SLAB_A_THREAD", True)


def winograd_chunk_rows(sizes, itemsize: int, images: int, running: int) -> int:
    """Tile rows of a chunk for a slab of `images` images, `running` slabs at once."""
    if not WINOGRAD_SHARE:
        return winograd_rows(sizes, itemsize)
    budget = WINOGRAD_CHUNK_BYTES // max(1, running)
    if WINOGRAD_LEAN:   # what a slab holds whatever its rows: slack, padded image
        budget -= _winograd_fixed(sizes, 32 // itemsize) * itemsize
    rows = winograd_rows(sizes, itemsize, budget)
    return max(1, min(rows, images * -(-sizes[6] // 2)))


def _winograd_fixed(sizes, lanes: int) -> int:
    """Elements of conv_forward_winograd's scratch that do not grow with its chunk's
    rows (winograd_scratch at no rows)."""
    c, o = sizes[0], sizes[3]
    th, tw = -(-sizes[6] // 2), -(-sizes[7] // 2)
    tv = -(-tw // lanes) * lanes
    return 16 * (c + o) * lanes + c * (2 * th + 2) * 2 * (tv + 1) + 4 * lanes


def _tiles(dtype: str, sizes) -> tuple[int, int, int]:
    """(TH, TW, TV) of the C source: rows and columns of 2x2 output tiles, and TW in
    whole vectors."""
    lanes = winograd_lanes(dtype)
    th, tw = -(-sizes[6] // 2), -(-sizes[7] // 2)
    return th, tw, -(-tw // lanes) * lanes


def winograd_scratch(dtype: str, sizes, rows: int) -> int:
    """Elements of conv_forward_winograd's scratch for chunks of `rows` tile rows: V
    and M (their rows with a vector of slack), one padded image split by column parity,
    four vectors of output."""
    c, o, lanes = sizes[0], sizes[3], winograd_lanes(dtype)
    _, tw, _ = _tiles(dtype, sizes)
    return 16 * (c + o) * rows * tw + _winograd_fixed(sizes, lanes)


def winograd_grad_scratch(dtype: str, sizes, rows: int) -> int:
    """Elements of conv_weight_grad_winograd's scratch for chunks of `rows` tile rows:
    the forward's, less its four vectors, and gy's image split by column parity."""
    o, lanes = sizes[3], winograd_lanes(dtype)
    th, _, tv = _tiles(dtype, sizes)
    return winograd_scratch(dtype, sizes, rows) - 4 * lanes + o * 2 * th * 2 * (tv + 1)


_WINOGRAD = _PREAMBLE + """\
#define LOAD(p) (*(const vec*)(p))
#define STORE(p, v) (*(vec*)(p) = (v))

/* Winograd F(2x2, 3x3): each 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A for
   the 3x3 kernel g and the 4x4 input cells d under the tile, summed over the input
   channels (the sum taken by GEMMs, one per cell k of the 4x4 products), with
       G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
       B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  A^T = [1 1 1 0; 0 1 -1 -1]:
   16 multiplications per tile and channel pair instead of 36. */

/* U (16, O, C) = G g G^T of each kernel g of w (O, C, 3, 3), KB kernels at a time:
   their cells gathered cell by cell (zeros past the last kernel), transformed in
   vectors along the kernels, and copied out by rows. */
enum {{ KB = 64 }};
void conv_winograd_weights(const T* restrict w, T* restrict U, const L O, const L C)
{{
    const L OC = O * C;
    for (L i0 = 0; i0 < OC; i0 += KB) {{
        const L nb = OC - i0 < KB ? OC - i0 : KB;
        T g[9][KB], u[16][KB];
        for (L i = 0; i < KB; ++i)
            for (L j = 0; j < 9; ++j) g[j][i] = i < nb ? w[9 * (i0 + i) + j] : 0;
        for (L i = 0; i < KB; i += VL) {{
            vec t[4][3];
            for (L j = 0; j < 3; ++j) {{   /* G g */
                const vec r0 = LOAD(&g[j][i]), r1 = LOAD(&g[3 + j][i]);
                const vec r2 = LOAD(&g[6 + j][i]);
                t[0][j] = r0;
                t[1][j] = (r0 + r1 + r2) / 2;
                t[2][j] = (r0 - r1 + r2) / 2;
                t[3][j] = r2;
            }}
            for (L a = 0; a < 4; ++a) {{   /* (G g) G^T */
                STORE(&u[4 * a][i], t[a][0]);
                STORE(&u[4 * a + 1][i], (t[a][0] + t[a][1] + t[a][2]) / 2);
                STORE(&u[4 * a + 2][i], (t[a][0] - t[a][1] + t[a][2]) / 2);
                STORE(&u[4 * a + 3][i], t[a][2]);
            }}
        }}
        for (L k = 0; k < 16; ++k) memcpy(U + k * OC + i0, u[k], nb * sizeof(T));
    }}
}}

/* dw (O, C, 3, 3) = G^T u G of each (4, 4) u of dU (16, O, C): the weight gradient
   taken back from the transformed domain, KB kernels at a time as above. */
void conv_winograd_weights_back(const T* restrict dU, T* restrict dw, const L O,
                                const L C)
{{
    const L OC = O * C;
    for (L i0 = 0; i0 < OC; i0 += KB) {{
        const L nb = OC - i0 < KB ? OC - i0 : KB;
        T u[16][KB], g[9][KB];
        for (L k = 0; k < 16; ++k) {{
            memcpy(u[k], dU + k * OC + i0, nb * sizeof(T));
            for (L i = nb; i < KB; ++i) u[k][i] = 0;
        }}
        for (L i = 0; i < KB; i += VL) {{
            vec t[3][4];
            for (L b = 0; b < 4; ++b) {{   /* G^T u */
                const vec r0 = LOAD(&u[b][i]), r1 = LOAD(&u[4 + b][i]);
                const vec r2 = LOAD(&u[8 + b][i]), r3 = LOAD(&u[12 + b][i]);
                const vec half = (r1 + r2) / 2;
                t[0][b] = r0 + half;
                t[1][b] = (r1 - r2) / 2;
                t[2][b] = half + r3;
            }}
            for (L r = 0; r < 3; ++r) {{   /* (G^T u) G */
                const vec half = (t[r][1] + t[r][2]) / 2;
                STORE(&g[3 * r][i], t[r][0] + half);
                STORE(&g[3 * r + 1][i], (t[r][1] - t[r][2]) / 2);
                STORE(&g[3 * r + 2][i], half + t[r][3]);
            }}
        }}
        for (L i = 0; i < nb; ++i)
            for (L j = 0; j < 9; ++j) dw[9 * (i0 + i) + j] = g[j][i];
    }}
}}

/* Image xb (C, H, W) padded (PH rows above, PW columns left, zeros to HP rows and
   2 * WE columns) into D, each padded row as its even columns then its odd ones (WE
   each): a tile's four columns are then two runs of consecutive tiles each. */
static void split_columns(const T* restrict xb, T* restrict D, const L C, const L H,
                          const L W, const L PH, const L PW, const L HP, const L WE)
{{
    /* the q whose even column 2q - PW (odd column 2q + 1 - PW) lies in the image */
    L elo = (PW + 1) / 2, ehi = (W + PW + 1) / 2, olo = PW / 2, ohi = (W + PW) / 2;
    if (ehi > WE) ehi = WE;
    if (ohi > WE) ohi = WE;
    memset(D, 0, C * HP * 2 * WE * sizeof(T));
    for (L c = 0; c < C; ++c)
        for (L h = 0; h < H && h + PH < HP; ++h) {{
            const T* restrict in = xb + (c * H + h) * W;
            T* restrict even = D + (c * HP + h + PH) * 2 * WE;
            T* restrict odd = even + WE;
            for (L q = elo; q < ehi; ++q) even[q] = in[2 * q - PW];
            for (L q = olo; q < ohi; ++q) odd[q] = in[2 * q + 1 - PW];
        }}
}}

/* V (C, 16, PS) from column 0 on: B^T d B of the tiles of tile row th of the image in
   D (split_columns' layout), VL tiles at a time (past TW into what follows). */
static void input_tiles(T* restrict V, const T* restrict D, const L th, const L C,
                        const L HP, const L WE, const L TW, const L PS)
{{
    for (L c = 0; c < C; ++c) {{
        const T* restrict r = D + (c * HP + 2 * th) * 2 * WE;
        T* restrict v = V + c * 16 * PS;
        for (L q = 0; q < TW; q += VL) {{
            /* d[i][j]: row i, columns j = 0 .. 3 of VL consecutive tiles */
            vec d[4][4], t[4][4];
            for (L i = 0; i < 4; ++i) {{
                const T* restrict even = r + i * 2 * WE + q;
                d[i][0] = LOAD(even);
                d[i][1] = LOAD(even + WE);
                d[i][2] = LOAD(even + 1);
                d[i][3] = LOAD(even + WE + 1);
            }}
            for (L j = 0; j < 4; ++j) {{   /* B^T d */
                t[0][j] = d[0][j] - d[2][j];
                t[1][j] = d[1][j] + d[2][j];
                t[2][j] = d[2][j] - d[1][j];
                t[3][j] = d[1][j] - d[3][j];
            }}
            for (L a = 0; a < 4; ++a) {{   /* (B^T d) B */
                STORE(v + (4 * a + 0) * PS + q, t[a][0] - t[a][2]);
                STORE(v + (4 * a + 1) * PS + q, t[a][1] + t[a][2]);
                STORE(v + (4 * a + 2) * PS + q, t[a][2] - t[a][1]);
                STORE(v + (4 * a + 3) * PS + q, t[a][1] - t[a][3]);
            }}
        }}
    }}
}}

/* y (B, O, OH, OW) of images b0 .. b1 (a 3x3 kernel at stride 1, PH and PW the pads
   above and left; the pads below and right are those OH and OW imply), from U of
   conv_winograd_weights. The tile rows u = b * TH + th of the images run in chunks of
   ROWS: per chunk, V (C, 16, tiles) = B^T d B of every tile and channel, the sixteen
   GEMMs M[k] (O, tiles) = U[k] (O, C) V[k] (M laid out (O, 16, tiles): a tile's 16
   cells are a few strides apart, which the loads' addressing covers without a
   pointer each), and A^T m A of every tile and output
   channel, plus the bias, into y (a last odd row or column dropped). The transforms
   run along a tile row {VL} tiles at a time (past its end into the next row's, which
   overwrites them, or into VL cells of slack at the end of V's and M's rows). scratch
   (winograd_scratch): V, M, the image being read as split_columns lays it out, four
   vectors for the rows' ends. */
void conv_forward_winograd(gemm_t gemm, const T* restrict x, const T* restrict U,
                           const T* restrict bias, T* restrict y, T* restrict scratch,
                           const L b0, const L b1, const L ROWS, {SIZES})
{{
    (void)KH; (void)KW; (void)SH; (void)SW; (void)DH; (void)DW;
    const L TH = (OH + 1) / 2, TW = (OW + 1) / 2, TV = (TW + VL - 1) / VL * VL;
    const L PS = ROWS * TW + VL, HP = 2 * TH + 2, WE = TV + 1;
    T* restrict V = scratch;
    T* restrict M = V + 16 * C * PS;
    T* restrict D = M + 16 * O * PS;
    T* restrict Z = D + C * HP * 2 * WE;      /* 4 vectors */
    L ready = -1;   /* the image D holds */
    for (L u0 = b0 * TH; u0 < b1 * TH; u0 += ROWS) {{
        const L u1 = u0 + ROWS < b1 * TH ? u0 + ROWS : b1 * TH, n = (u1 - u0) * TW;
        for (L u = u0; u < u1; ++u) {{
            const L b = u / TH, th = u % TH;
            if (b != ready) {{
                split_columns(x + b * C * H * W, D, C, H, W, PH, PW, HP, WE);
                ready = b;
            }}
            input_tiles(V + (u - u0) * TW, D, th, C, HP, WE, TW, PS);
        }}
        for (L k = 0; k < 16; ++k)
            gemm({RM}, {N}, {N}, O, n, C, 1, U + k * O * C, C, V + k * PS, 16 * PS, 0,
                 M + k * PS, 16 * PS);
        for (L u = u0; u < u1; ++u) {{
            const L b = u / TH, th = u % TH;
            for (L o = 0; o < O; ++o) {{
                const T start = bias ? bias[o] : 0;
                const T* restrict m = M + o * 16 * PS + (u - u0) * TW;
                T* restrict out = y + ((b * O + o) * OH + 2 * th) * OW;
                const int both = 2 * th + 1 < OH;   /* a last odd row has no second */
                for (L q = 0; q < TW; q += VL) {{
                    vec s0[4], s1[4], e[4];
                    for (L j = 0; j < 4; ++j) {{   /* A^T m */
                        const vec m0 = LOAD(m + j * PS + q);
                        const vec m1 = LOAD(m + (4 + j) * PS + q);
                        const vec m2 = LOAD(m + (8 + j) * PS + q);
                        const vec m3 = LOAD(m + (12 + j) * PS + q);
                        s0[j] = m0 + m1 + m2;
                        s1[j] = m1 - m2 - m3;
                    }}
                    e[0] = s0[0] + s0[1] + s0[2] + start;   /* (A^T m) A */
                    e[1] = s0[1] - s0[2] - s0[3] + start;
                    e[2] = s1[0] + s1[1] + s1[2] + start;
                    e[3] = s1[1] - s1[2] - s1[3] + start;
                    /* the tiles' two columns side by side */
                    const vec r0 = __builtin_shufflevector(e[0], e[1], {LOW});
                    const vec r1 = __builtin_shufflevector(e[0], e[1], {HIGH});
                    const vec r2 = __builtin_shufflevector(e[2], e[3], {LOW});
                    const vec r3 = __builtin_shufflevector(e[2], e[3], {HIGH});
                    if (2 * q + 2 * VL <= OW) {{   /* whole vectors inside the rows */
                        STORE(out + 2 * q, r0);
                        STORE(out + 2 * q + VL, r1);
                        if (both) {{
                            STORE(out + OW + 2 * q, r2);
                            STORE(out + OW + 2 * q + VL, r3);
                        }}
                    }} else {{   /* the rows' ends: a whole vector, the rest through Z */
                        L at = 2 * q;
                        vec last0 = r0, last1 = r2;
                        if (at + VL <= OW) {{
                            STORE(out + at, r0);
                            if (both) STORE(out + OW + at, r2);
                            at += VL;
                            last0 = r1;
                            last1 = r3;
                        }}
                        STORE(Z, last0);
                        STORE(Z + VL, last1);
                        for (L i = at; i < OW; ++i) {{
                            out[i] = Z[i - at];
                            if (both) out[OW + i] = Z[VL + i - at];
                        }}
                    }}
                }}
                if (CHAINED)   /* the rows just written, still in the cache */
                    for (L i = 0; i < (both ? 2 * OW : OW); ++i) out[i] = CHAIN(out[i]);
            }}
        }}
    }}
}}
/* Images b0 .. b1's weight gradient in the Winograd domain, added to G16 (16, O, C),
   and their bias gradient, added to db (O): the forward is y = A^T [U * V] A per tile,
   so dL/dU[k] = the sum over tiles of (A dy A^T)[k] * V[k], with dy the tile's 2x2 of
   gy (zero past OH and OW), and dL/dg = G^T (dL/dU) G, which the caller takes. Per
   chunk of ROWS tile rows: V as the forward makes it, Y (O, 16, tiles) = A dy A^T,
   and sixteen GEMMs G16[k] (O, C) += Y[k] (O, tiles) V[k]^T. scratch
   (winograd_grad_scratch): V, Y, the image and its gy as split_columns lays them out. */
void conv_weight_grad_winograd(gemm_t gemm, const T* restrict gy, const T* restrict x,
                               T* restrict G16, T* restrict db, T* restrict scratch,
                               const L b0, const L b1, const L ROWS, {SIZES})
{{
    (void)KH; (void)KW; (void)SH; (void)SW; (void)DH; (void)DW;
    const L TH = (OH + 1) / 2, TW = (OW + 1) / 2, TV = (TW + VL - 1) / VL * VL;
    const L PS = ROWS * TW + VL, HP = 2 * TH + 2, WE = TV + 1;
    T* restrict V = scratch;
    T* restrict Y = V + 16 * C * PS;
    T* restrict D = Y + 16 * O * PS;
    T* restrict E = D + C * HP * 2 * WE;      /* gy's image: (O, 2 TH, 2 WE) */
    L ready = -1;   /* the image D and E hold */
    for (L u0 = b0 * TH; u0 < b1 * TH; u0 += ROWS) {{
        const L u1 = u0 + ROWS < b1 * TH ? u0 + ROWS : b1 * TH, n = (u1 - u0) * TW;
        for (L u = u0; u < u1; ++u) {{
            const L b = u / TH, th = u % TH;
            if (b != ready) {{
                const T* restrict g = gy + b * O * OH * OW;
                split_columns(x + b * C * H * W, D, C, H, W, PH, PW, HP, WE);
                split_columns(g, E, O, OH, OW, 0, 0, 2 * TH, WE);
                for (L o = 0; o < O && db; ++o) {{
                    vec sum = {{0}};
                    T rest = 0;
                    const L N = OH * OW;
                    L i = 0;
                    for (; i + VL <= N; i += VL) sum += LOAD(g + o * N + i);
                    for (; i < N; ++i) rest += g[o * N + i];
                    for (L j = 0; j < VL; ++j) rest += sum[j];
                    db[o] += rest;
                }}
                ready = b;
            }}
            input_tiles(V + (u - u0) * TW, D, th, C, HP, WE, TW, PS);
            for (L o = 0; o < O; ++o) {{
                const T* restrict r = E + (o * 2 * TH + 2 * th) * 2 * WE;
                T* restrict z = Y + o * 16 * PS + (u - u0) * TW;
                for (L q = 0; q < TW; q += VL) {{
                    /* the tiles' dy: rows 0 and 1, columns 0 (even) and 1 (odd) */
                    const vec e0 = LOAD(r + q), o0 = LOAD(r + WE + q);
                    const vec e1 = LOAD(r + 2 * WE + q), o1 = LOAD(r + 3 * WE + q);
                    vec s[4][2];   /* A dy */
                    s[0][0] = e0;      s[0][1] = o0;
                    s[1][0] = e0 + e1; s[1][1] = o0 + o1;
                    s[2][0] = e0 - e1; s[2][1] = o0 - o1;
                    s[3][0] = -e1;     s[3][1] = -o1;
                    for (L a = 0; a < 4; ++a) {{   /* (A dy) A^T */
                        STORE(z + (4 * a + 0) * PS + q, s[a][0]);
                        STORE(z + (4 * a + 1) * PS + q, s[a][0] + s[a][1]);
                        STORE(z + (4 * a + 2) * PS + q, s[a][0] - s[a][1]);
                        STORE(z + (4 * a + 3) * PS + q, -s[a][1]);
                    }}
                }}
            }}
        }}
        for (L k = 0; k < 16; ++k)
            gemm({RM}, {N}, {TR}, O, C, n, 1, Y + k * PS, 16 * PS, V + k * PS, 16 * PS, 1,
                 G16 + k * O * C, C);
    }}
}}
"""
