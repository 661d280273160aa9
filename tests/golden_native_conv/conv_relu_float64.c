#include <string.h>

typedef long long L;
typedef double T;
/* scipy_cblas_?gemm64_: CBLAS's ?gemm */
typedef long long I;
typedef void (*gemm_t)(int, int, int, I, I, I, T, const T*, I, const T*, I, T, T*, I);
/* a vector of 8 elements (GCC's and Clang's vector extension), at any element's address */
enum { VL = 8 };
typedef T vec __attribute__((vector_size(VL * sizeof(T)), aligned(sizeof(T))));
#include <math.h>
/* relu_forward: the chain after the convolution, on each output */
#define CHAINED 1
static inline double chain(const double x0)
{
    const double v0 = ((0.0 > x0) ? 0.0 : x0);
    return v0;
}
#define CHAIN(v) chain(v)
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
static void columns(const T* restrict x, T* restrict cols, const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    const L N = OH * OW;
    for (L c = 0; c < C; ++c)
        for (L kh = 0; kh < KH; ++kh)
            for (L kw = 0; kw < KW; ++kw) {
                T* restrict row = cols + ((c * KH + kh) * KW + kw) * N;
                const L dw = kw * DW - PW;
                /* the output columns whose cell lies inside the image: lo <= ow < hi */
                L lo = dw >= 0 ? 0 : (-dw + SW - 1) / SW;
                L hi = W - dw > 0 ? (W - dw + SW - 1) / SW : 0;
                if (hi > OW) hi = OW;
                if (lo > hi) lo = hi;
                for (L oh = 0; oh < OH; ++oh) {
                    T* restrict out = row + oh * OW;
                    const L h = oh * SH - PH + kh * DH;
                    if (h < 0 || h >= H) {
                        memset(out, 0, OW * sizeof(T));
                        continue;
                    }
                    const T* restrict in = x + (c * H + h) * W + dw;
                    for (L ow = 0; ow < lo; ++ow) out[ow] = 0;
                    if (SW == 1)
                        memcpy(out + lo, in + lo, (hi - lo) * sizeof(T));
                    else
                        for (L ow = lo; ow < hi; ++ow) out[ow] = in[ow * SW];
                    for (L ow = hi; ow < OW; ++ow) out[ow] = 0;
                }
            }
}

/* Add the column gradients dcols back onto one image's dx (C, H, W), zeroed first. */
static void add_columns(const T* restrict dcols, T* restrict dx, const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    const L N = OH * OW;
    memset(dx, 0, C * H * W * sizeof(T));
    for (L c = 0; c < C; ++c)
        for (L kh = 0; kh < KH; ++kh)
            for (L kw = 0; kw < KW; ++kw) {
                const T* restrict row = dcols + ((c * KH + kh) * KW + kw) * N;
                const L dw = kw * DW - PW;
                L lo = dw >= 0 ? 0 : (-dw + SW - 1) / SW;
                L hi = W - dw > 0 ? (W - dw + SW - 1) / SW : 0;
                if (hi > OW) hi = OW;
                if (lo > hi) lo = hi;
                for (L oh = 0; oh < OH; ++oh) {
                    const L h = oh * SH - PH + kh * DH;
                    if (h < 0 || h >= H) continue;
                    T* restrict out = dx + (c * H + h) * W + dw;
                    const T* restrict in = row + oh * OW;
                    if (SW == 1)
                        for (L ow = lo; ow < hi; ++ow) out[ow] += in[ow];
                    else
                        for (L ow = lo; ow < hi; ++ow) out[ow * SW] += in[ow];
                }
            }
}

/* The direct kernels' padded image P: every cell a window reads, (HP, WP) per channel,
   split by stride into SH * SW phase planes (C, HQ, WQ) each, a cell (hp, wp) in plane
   (hp % SH, wp % SW) at (hp / SH, wp / SW). Output position p = oh * WQ + ow then reads
   plane cell p + plane_offset(c, kh, kw) at any stride: a run of positions reads a run
   of P. At stride 1 there is one plane, the padded image itself. */
#define PLANES_LAYOUT     const L HP = (OH - 1) * SH + (KH - 1) * DH + 1, WP = (OW - 1) * SW + (KW - 1) * DW + 1;     const L HQ = (HP + SH - 1) / SH, WQ = (WP + SW - 1) / SW, PS = SH * SW * C * HQ * WQ

static L plane_offset(L c, L kh, L kw, const L C, const L HQ, const L WQ, const L SH,
                      const L SW, const L DH, const L DW)
{
    const L h = kh * DH, w = kw * DW;
    return (((h % SH) * SW + w % SW) * C + c) * HQ * WQ + (h / SH) * WQ + w / SW;
}

/* Image xb (C, H, W) into P's planes, whose padding is zero already. */
static void fill_planes(const T* restrict xb, T* restrict P, const L C, const L H, const L W,
                        const L HP, const L WP, const L HQ, const L WQ, const L SH,
                        const L SW, const L PH, const L PW)
{
    const L w0 = PW < 0 ? -PW : 0, w1 = W < WP - PW ? W : WP - PW;
    const L h0 = PH < 0 ? -PH : 0, h1 = H < HP - PH ? H : HP - PH;
    if (w1 <= w0) return;
    for (L c = 0; c < C; ++c)
        for (L h = h0; h < h1; ++h) {
            const L hp = h + PH;
            const T* restrict in = xb + (c * H + h) * W;
            T* restrict row = P + (((hp % SH) * SW) * C + c) * HQ * WQ + (hp / SH) * WQ;
            if (SW == 1)
                memcpy(row + w0 + PW, in + w0, (w1 - w0) * sizeof(T));
            else   /* a plane at a time: its cells are every SW-th of the row */
                for (L rw = 0; rw < SW; ++rw) {
                    T* restrict out = row + rw * C * HQ * WQ;
                    L wp = w0 + PW + ((rw - (w0 + PW) % SW) % SW + SW) % SW;
                    for (L q = wp / SW; wp < w1 + PW; wp += SW, ++q) out[q] = in[wp - PW];
                }
        }
}

/* y (B, O, OH, OW) of images b0 .. b1; scratch holds one image's columns. */
void conv_forward_gemm(gemm_t gemm, const T* restrict x, const T* restrict w,
                       const T* restrict bias, T* restrict y, T* restrict scratch,
                       const L b0, const L b1, const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    const L N = OH * OW, K = C * KH * KW;
    for (L b = b0; b < b1; ++b) {
        T* restrict yb = y + b * O * N;
        columns(x + b * C * H * W, scratch, C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW, DH, DW);
        gemm(101, 111, 111, O, N, K, 1, w, K, scratch, N, 0, yb, N);
        if (bias || CHAINED)   /* the bias and the chain in one pass, in the cache */
            for (L o = 0; o < O; ++o) {
                const T start = bias ? bias[o] : 0;
                for (L i = 0; i < N; ++i) yb[o * N + i] = CHAIN(yb[o * N + i] + start);
            }
    }
}

/* y (B, O, OH, OW) of images b0 .. b1 without columns. Each image is copied once into
   P (above), read as flat runs: per block of 8 output channels and 16 positions the
   sums stay in registers while every kernel cell i = (c, kh, kw) adds its weights (wt,
   (K, O) padded to whole blocks) times 16 cells of P from off[i] on (positions with
   ow >= OW are computed and dropped); z holds a block's rows until they are copied to
   y. scratch: P and 16 cells of slack, wt, z. */
void conv_forward_direct(gemm_t gemm, const T* restrict x, const T* restrict w,
                         const T* restrict bias, T* restrict y, T* restrict scratch,
                         const L b0, const L b1, const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    (void)gemm;
    PLANES_LAYOUT;
    const L K = C * KH * KW, OP = (O + 8 - 1) / 8 * 8;
    const L span = (OH - 1) * WQ + OW, SPAN = (span + 16 - 1) / 16 * 16;
    T* restrict P = scratch;
    T* restrict wt = P + PS + 16;
    T* restrict z = wt + K * OP;
    L off[K];
    memset(P, 0, (PS + 16) * sizeof(T));
    for (L c = 0; c < C; ++c)
        for (L kh = 0; kh < KH; ++kh)
            for (L kw = 0; kw < KW; ++kw) {
                const L i = (c * KH + kh) * KW + kw;
                off[i] = plane_offset(c, kh, kw, C, HQ, WQ, SH, SW, DH, DW);
                for (L o = 0; o < OP; ++o) wt[i * OP + o] = o < O ? w[o * K + i] : 0;
            }
    for (L b = b0; b < b1; ++b) {
        fill_planes(x + b * C * H * W, P, C, H, W, HP, WP, HQ, WQ, SH, SW, PH, PW);
        T* restrict yb = y + b * O * OH * OW;
        for (L o0 = 0; o0 < OP; o0 += 8) {
            for (L p0 = 0; p0 < SPAN; p0 += 16) {
                vec acc[8][16 / VL];
                _Pragma("GCC unroll 16")
                for (L j = 0; j < 8; ++j)
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < 16 / VL; ++u) acc[j][u] = (vec){0};
                for (L i = 0; i < K; ++i) {
                    const T* restrict in = P + off[i] + p0;
                    const T* restrict k = wt + i * OP + o0;
                    vec cells[16 / VL];
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < 16 / VL; ++u) {
                        cells[u] = *(const vec*)(in + u * VL);
                        IN_REGISTER(cells[u]);
                    }
                    _Pragma("GCC unroll 16")
                    for (L j = 0; j < 8; ++j)
                        _Pragma("GCC unroll 4")
                        for (L u = 0; u < 16 / VL; ++u) acc[j][u] += k[j] * cells[u];
                }
                _Pragma("GCC unroll 16")
                for (L j = 0; j < 8; ++j)
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < 16 / VL; ++u)
                        *(vec*)(z + j * SPAN + p0 + u * VL) = acc[j][u];
            }
            for (L j = 0; j < 8 && o0 + j < O; ++j) {
                const T start = bias ? bias[o0 + j] : 0;
                for (L oh = 0; oh < OH; ++oh)
                    for (L ow = 0; ow < OW; ++ow)
                        yb[((o0 + j) * OH + oh) * OW + ow] =
                            CHAIN(z[j * SPAN + oh * WQ + ow] + start);
            }
        }
    }
}

/* y (B, O, OH, OW) of images b0 .. b1 without columns. Each image is copied once into
   P (above), read as flat runs: per block of 16 output channels and 8 positions the
   sums stay in registers while every kernel cell i = (c, kh, kw) adds its weights (wt,
   (K, O) padded to whole blocks) times 8 cells of P from off[i] on (positions with
   ow >= OW are computed and dropped); z holds a block's rows until they are copied to
   y. scratch: P and 8 cells of slack, wt, z. */
void conv_forward_direct_narrow(gemm_t gemm, const T* restrict x, const T* restrict w,
                         const T* restrict bias, T* restrict y, T* restrict scratch,
                         const L b0, const L b1, const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    (void)gemm;
    PLANES_LAYOUT;
    const L K = C * KH * KW, OP = (O + 16 - 1) / 16 * 16;
    const L span = (OH - 1) * WQ + OW, SPAN = (span + 8 - 1) / 8 * 8;
    T* restrict P = scratch;
    T* restrict wt = P + PS + 8;
    T* restrict z = wt + K * OP;
    L off[K];
    memset(P, 0, (PS + 8) * sizeof(T));
    for (L c = 0; c < C; ++c)
        for (L kh = 0; kh < KH; ++kh)
            for (L kw = 0; kw < KW; ++kw) {
                const L i = (c * KH + kh) * KW + kw;
                off[i] = plane_offset(c, kh, kw, C, HQ, WQ, SH, SW, DH, DW);
                for (L o = 0; o < OP; ++o) wt[i * OP + o] = o < O ? w[o * K + i] : 0;
            }
    for (L b = b0; b < b1; ++b) {
        fill_planes(x + b * C * H * W, P, C, H, W, HP, WP, HQ, WQ, SH, SW, PH, PW);
        T* restrict yb = y + b * O * OH * OW;
        for (L o0 = 0; o0 < OP; o0 += 16) {
            for (L p0 = 0; p0 < SPAN; p0 += 8) {
                vec acc[16][8 / VL];
                _Pragma("GCC unroll 16")
                for (L j = 0; j < 16; ++j)
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < 8 / VL; ++u) acc[j][u] = (vec){0};
                for (L i = 0; i < K; ++i) {
                    const T* restrict in = P + off[i] + p0;
                    const T* restrict k = wt + i * OP + o0;
                    vec cells[8 / VL];
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < 8 / VL; ++u) {
                        cells[u] = *(const vec*)(in + u * VL);
                        IN_REGISTER(cells[u]);
                    }
                    _Pragma("GCC unroll 16")
                    for (L j = 0; j < 16; ++j)
                        _Pragma("GCC unroll 4")
                        for (L u = 0; u < 8 / VL; ++u) acc[j][u] += k[j] * cells[u];
                }
                _Pragma("GCC unroll 16")
                for (L j = 0; j < 16; ++j)
                    _Pragma("GCC unroll 4")
                    for (L u = 0; u < 8 / VL; ++u)
                        *(vec*)(z + j * SPAN + p0 + u * VL) = acc[j][u];
            }
            for (L j = 0; j < 16 && o0 + j < O; ++j) {
                const T start = bias ? bias[o0 + j] : 0;
                for (L oh = 0; oh < OH; ++oh)
                    for (L ow = 0; ow < OW; ++ow)
                        yb[((o0 + j) * OH + oh) * OW + ow] =
                            CHAIN(z[j * SPAN + oh * WQ + ow] + start);
            }
        }
    }
}

/* Images b0 .. b1's sums into dw (O, C, KH, KW) and db (O), which hold the sums so far,
   without columns: dw[o][i] is the sum over images and positions p of G[o][p] times
   P[off[i] + p], with P each image's planes as conv_forward_direct makes them and G its
   gy laid out on the same flat grid (zero where ow >= OW; a NaN or Inf in x there would
   still reach dw, as it reaches y). Per tile of 4 output channels and 4 kernel
   cells the sums stay in registers over all the images, 8 positions at a time.
   scratch: P of every image and 8 cells of slack, G of every image. */
void conv_weight_grad_direct(gemm_t gemm, const T* restrict gy, const T* restrict x,
                             const T* restrict w, T* restrict dx, T* restrict dw,
                             T* restrict db, T* restrict scratch, const L b0, const L b1,
                             const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    (void)gemm; (void)w; (void)dx;
    PLANES_LAYOUT;
    const L NB = b1 - b0, K = C * KH * KW, KP = (K + 4 - 1) / 4 * 4;
    const L OP = (O + 4 - 1) / 4 * 4;
    const L span = (OH - 1) * WQ + OW, SPAN = (span + 8 - 1) / 8 * 8;
    const L GS = OP * SPAN;
    T* restrict P = scratch;
    T* restrict G = P + NB * PS + 8;
    L off[KP];
    memset(P, 0, (NB * PS + 8) * sizeof(T));
    memset(G, 0, NB * GS * sizeof(T));
    for (L i = 0; i < KP; ++i)
        off[i] = i < K ? plane_offset(i / (KH * KW), i / KW % KH, i % KW, C, HQ, WQ, SH, SW,
                                      DH, DW) : 0;
    for (L n = 0; n < NB; ++n) {
        fill_planes(x + (b0 + n) * C * H * W, P + n * PS, C, H, W, HP, WP, HQ, WQ, SH, SW,
                    PH, PW);
        const T* restrict g = gy + (b0 + n) * O * OH * OW;
        for (L o = 0; o < O; ++o) {
            T sum = 0;
            for (L oh = 0; oh < OH; ++oh)
                for (L ow = 0; ow < OW; ++ow) {
                    const T v = g[(o * OH + oh) * OW + ow];
                    G[n * GS + o * SPAN + oh * WQ + ow] = v;
                    sum += v;
                }
            if (db) db[o] += sum;
        }
    }
    for (L o0 = 0; o0 < OP; o0 += 4)
        for (L i0 = 0; i0 < KP; i0 += 4) {
            vec acc[4][4];
            _Pragma("GCC unroll 16")
            for (L j = 0; j < 4; ++j)
                _Pragma("GCC unroll 16")
                for (L q = 0; q < 4; ++q) acc[j][q] = (vec){0};
            for (L n = 0; n < NB; ++n) {
                const T* restrict gz = G + n * GS + o0 * SPAN;
                const T* restrict in[4];
                for (L q = 0; q < 4; ++q) in[q] = P + n * PS + off[i0 + q];
                for (L p0 = 0; p0 < SPAN; p0 += 8) {
                    vec g[4], cells[4];
                    _Pragma("GCC unroll 16")
                    for (L j = 0; j < 4; ++j) {
                        g[j] = *(const vec*)(gz + j * SPAN + p0);
                        IN_REGISTER(g[j]);
                    }
                    _Pragma("GCC unroll 16")
                    for (L q = 0; q < 4; ++q) {
                        cells[q] = *(const vec*)(in[q] + p0);
                        IN_REGISTER(cells[q]);
                    }
                    _Pragma("GCC unroll 16")
                    for (L j = 0; j < 4; ++j)
                        _Pragma("GCC unroll 16")
                        for (L q = 0; q < 4; ++q) acc[j][q] += g[j] * cells[q];
                }
            }
            for (L j = 0; j < 4 && o0 + j < O; ++j)
                for (L q = 0; q < 4 && i0 + q < K; ++q) {
                    T sum = 0;
                    for (L v = 0; v < 8; ++v) sum += acc[j][q][v];
                    dw[(o0 + j) * K + i0 + q] += sum;
                }
        }
}

/* Images b0 .. b1's sums into dw (O, C, KH, KW) and db (O), which hold the sums so far,
   unless dw is NULL; their dx (B, C, H, W) unless dx is NULL. scratch holds one image's
   columns. */
void conv_backward_gemm(gemm_t gemm, const T* restrict gy, const T* restrict x,
                        const T* restrict w, T* restrict dx, T* restrict dw, T* restrict db,
                        T* restrict scratch, const L b0, const L b1, const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    const L N = OH * OW, K = C * KH * KW;
    for (L b = b0; b < b1; ++b) {
        const T* restrict g = gy + b * O * N;
        if (dw) {
            for (L o = 0; o < O && db; ++o) {
                T sum = 0;
                for (L i = 0; i < N; ++i) sum += g[o * N + i];
                db[o] += sum;
            }
            columns(x + b * C * H * W, scratch, C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW,
                    DH, DW);
            gemm(101, 111, 112, O, K, N, 1, g, N, scratch, N, 1, dw, K);
        }
        if (dx) {
            gemm(101, 112, 111, K, N, O, 1, w, K, g, N, 0, scratch, N);
            add_columns(scratch, dx + b * C * H * W, C, H, W, O, KH, KW, OH, OW, SH, SW, PH, PW,
                        DH, DW);
        }
    }
}

/* relu_backward_1_y: g = the chain's gradient, db += its sums per channel */
void conv_chain_gradient(const T* y_, const T* gy_, T* g_, T* restrict db, const L b0,
                         const L b1, const L O, const L N, const L GS)
{
    for (L b = b0; b < b1; ++b)
        for (L o = 0; o < O; ++o) {
            const L at = (b * O + o) * N, from = b * GS + o * N;
            T sum = 0;
            #pragma omp simd reduction(+:sum)
            for (L i = 0; i < N; ++i) {
                const T y = y_[at + i], gy = gy_[from + i];
                (void)y; (void)gy;

                const T g = ((y > 0.0) ? gy : 0.0);
                g_[at + i] = g;
                sum += g;
            }
            if (db) db[o] += sum;
        }
}
