#include <string.h>

typedef long long L;
typedef float T;
typedef int M;   /* an integer of T's width: a comparison's mask */

/* One cell of a window, without a branch: GCC branches on a select of floats, and which
   cell holds a window's maximum is a coin toss on real data (a branch mispredicted per
   cell ran W2's pooling three times as long as NumPy's). A greater cell or a NaN takes
   over. */
static inline void take(const T v, const M at, T* best, M* arg)
{
    M vb, bb;
    memcpy(&vb, &v, sizeof(T));
    memcpy(&bb, best, sizeof(T));
    const M m = -(M)((v > *best) | (v != v));
    const M r = (vb & m) | (bb & ~m);
    memcpy(best, &r, sizeof(T));
    *arg = (at & m) | (*arg & ~m);
}

/* A window that crosses the image's left or right edge (rows kh0 .. kh1 of the kernel
   lie in the image, its columns are checked): its maximum and the flat index of its
   first maximum. best starts at -inf and the index at the window's first cell in the
   image, which a window of -inf keeps. */
static void edge_window(const T* restrict plane, T* restrict y, int* restrict index,
                        const L h0, const L kh0, const L kh1, const L w0, const L W,
                        const L KW)
{
    const L kw0 = w0 < 0 ? -w0 : 0, kw1 = W - w0 < KW ? W - w0 : KW;
    T best = -(T)__builtin_inf();
    M arg = (M)((h0 + kh0) * W + w0 + kw0);
    for (L kh = kh0; kh < kh1; ++kh)
        for (L kw = kw0; kw < kw1; ++kw) {
            const L at = (h0 + kh) * W + w0 + kw;
            take(plane[at], (M)at, &best, &arg);
        }
    *y = best;
    *index = (int)arg;
}

/* y and index (planes, OH, OW) of planes p0 .. p1 of x (planes, H, W), 16 windows at
   once. Every window holds a cell of the image (pads are at most half the kernel). Per
   output row, the windows wholly inside the image's columns run 16 at a time in
   vectors (GCC's vector extension), each lane a window's maximum and index, over the
   window's cells; the last vector overlaps the one before rather than leave a tail.
   Stride 2 loads two vectors and takes their even lanes. The windows at the row's ends,
   and rows of fewer than 16 such windows, run one at a time. */
typedef T vec16 __attribute__((vector_size(16 * sizeof(T)), aligned(sizeof(T))));
typedef M mask16 __attribute__((vector_size(16 * sizeof(T)), aligned(sizeof(T))));

void maxpool_forward(const T* restrict x, T* restrict y, int* restrict index, const L p0,
            const L p1, const L H, const L W, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW)
{
    typedef vec16 vec;
    typedef mask16 mask;
    enum { VL = 16 };
    /* the outputs whose window's columns all lie in the image: lo <= ow < hi */
    L lo = (PW + SW - 1) / SW, hi = W - KW + PW >= 0 ? (W - KW + PW) / SW + 1 : 0;
    if (hi > OW) hi = OW;
    if (lo > hi) lo = hi;
    mask lane;
    for (L j = 0; j < VL; ++j) lane[j] = (M)(j * SW);
    for (L p = p0; p < p1; ++p) {
        const T* restrict plane = x + p * H * W;
        for (L oh = 0; oh < OH; ++oh) {
            const L h0 = oh * SH - PH;
            const L kh0 = h0 < 0 ? -h0 : 0, kh1 = H - h0 < KH ? H - h0 : KH;
            T* restrict yr = y + (p * OH + oh) * OW;
            int* restrict ir = index + (p * OH + oh) * OW;
            L ow = 0;
            for (; ow < lo; ++ow)
                edge_window(plane, yr + ow, ir + ow, h0, kh0, kh1, ow * SW - PW, W, KW);
            for (L next = ow; next < hi && hi - lo >= VL; next += VL) {
                ow = next + VL <= hi ? next : hi - VL;
                const L w0 = ow * SW - PW;
                vec best = (vec){0} - (T)__builtin_inf();
                mask arg = lane + (M)((h0 + kh0) * W + w0);
                for (L kh = kh0; kh < kh1; ++kh) {
                    const T* restrict row = plane + (h0 + kh) * W + w0;
                    for (L kw = 0; kw < KW; ++kw) {
                        vec v;
                        if (SW == 1)
                            memcpy(&v, row + kw, sizeof(v));
                        else if (SW == 2 && w0 + kw + 2 * VL <= W) {
                            vec a, b;
                            memcpy(&a, row + kw, sizeof(a));
                            memcpy(&b, row + kw + VL, sizeof(b));
                            v = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                        } else
                            for (L j = 0; j < VL; ++j) v[j] = row[kw + j * SW];
                        const mask m = (v > best) | (v != v);
                        best = (vec)(((mask)v & m) | ((mask)best & ~m));
                        arg = ((lane + (M)((h0 + kh) * W + w0 + kw)) & m) | (arg & ~m);
                    }
                }
                memcpy(yr + ow, &best, sizeof(best));
                for (L j = 0; j < VL; ++j) ir[ow + j] = (int)arg[j];
                ow += VL;
            }
            for (; ow < OW; ++ow)
                edge_window(plane, yr + ow, ir + ow, h0, kh0, kh1, ow * SW - PW, W, KW);
        }
    }
}
/* y and index (planes, OH, OW) of planes p0 .. p1 of x (planes, H, W), 8 windows at
   once. Every window holds a cell of the image (pads are at most half the kernel). Per
   output row, the windows wholly inside the image's columns run 8 at a time in
   vectors (GCC's vector extension), each lane a window's maximum and index, over the
   window's cells; the last vector overlaps the one before rather than leave a tail.
   Stride 2 loads two vectors and takes their even lanes. The windows at the row's ends,
   and rows of fewer than 8 such windows, run one at a time. */
typedef T vec8 __attribute__((vector_size(8 * sizeof(T)), aligned(sizeof(T))));
typedef M mask8 __attribute__((vector_size(8 * sizeof(T)), aligned(sizeof(T))));

void maxpool_forward_narrow(const T* restrict x, T* restrict y, int* restrict index, const L p0,
            const L p1, const L H, const L W, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW)
{
    typedef vec8 vec;
    typedef mask8 mask;
    enum { VL = 8 };
    /* the outputs whose window's columns all lie in the image: lo <= ow < hi */
    L lo = (PW + SW - 1) / SW, hi = W - KW + PW >= 0 ? (W - KW + PW) / SW + 1 : 0;
    if (hi > OW) hi = OW;
    if (lo > hi) lo = hi;
    mask lane;
    for (L j = 0; j < VL; ++j) lane[j] = (M)(j * SW);
    for (L p = p0; p < p1; ++p) {
        const T* restrict plane = x + p * H * W;
        for (L oh = 0; oh < OH; ++oh) {
            const L h0 = oh * SH - PH;
            const L kh0 = h0 < 0 ? -h0 : 0, kh1 = H - h0 < KH ? H - h0 : KH;
            T* restrict yr = y + (p * OH + oh) * OW;
            int* restrict ir = index + (p * OH + oh) * OW;
            L ow = 0;
            for (; ow < lo; ++ow)
                edge_window(plane, yr + ow, ir + ow, h0, kh0, kh1, ow * SW - PW, W, KW);
            for (L next = ow; next < hi && hi - lo >= VL; next += VL) {
                ow = next + VL <= hi ? next : hi - VL;
                const L w0 = ow * SW - PW;
                vec best = (vec){0} - (T)__builtin_inf();
                mask arg = lane + (M)((h0 + kh0) * W + w0);
                for (L kh = kh0; kh < kh1; ++kh) {
                    const T* restrict row = plane + (h0 + kh) * W + w0;
                    for (L kw = 0; kw < KW; ++kw) {
                        vec v;
                        if (SW == 1)
                            memcpy(&v, row + kw, sizeof(v));
                        else if (SW == 2 && w0 + kw + 2 * VL <= W) {
                            vec a, b;
                            memcpy(&a, row + kw, sizeof(a));
                            memcpy(&b, row + kw + VL, sizeof(b));
                            v = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
                        } else
                            for (L j = 0; j < VL; ++j) v[j] = row[kw + j * SW];
                        const mask m = (v > best) | (v != v);
                        best = (vec)(((mask)v & m) | ((mask)best & ~m));
                        arg = ((lane + (M)((h0 + kh) * W + w0 + kw)) & m) | (arg & ~m);
                    }
                }
                memcpy(yr + ow, &best, sizeof(best));
                for (L j = 0; j < VL; ++j) ir[ow + j] = (int)arg[j];
                ow += VL;
            }
            for (; ow < OW; ++ow)
                edge_window(plane, yr + ow, ir + ow, h0, kh0, kh1, ow * SW - PW, W, KW);
        }
    }
}
/* y and index (planes, OH, OW) of planes p0 .. p1 of x (planes, H, W), 4 windows at
   once. Every window holds a cell of the image (pads are at most half the kernel). Per
   output row, the windows wholly inside the image's columns run 4 at a time in
   vectors (GCC's vector extension), each lane a window's maximum and index, over the
   window's cells; the last vector overlaps the one before rather than leave a tail.
   Stride 2 loads two vectors and takes their even lanes. The windows at the row's ends,
   and rows of fewer than 4 such windows, run one at a time. */
typedef T vec4 __attribute__((vector_size(4 * sizeof(T)), aligned(sizeof(T))));
typedef M mask4 __attribute__((vector_size(4 * sizeof(T)), aligned(sizeof(T))));

void maxpool_forward_short(const T* restrict x, T* restrict y, int* restrict index, const L p0,
            const L p1, const L H, const L W, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW)
{
    typedef vec4 vec;
    typedef mask4 mask;
    enum { VL = 4 };
    /* the outputs whose window's columns all lie in the image: lo <= ow < hi */
    L lo = (PW + SW - 1) / SW, hi = W - KW + PW >= 0 ? (W - KW + PW) / SW + 1 : 0;
    if (hi > OW) hi = OW;
    if (lo > hi) lo = hi;
    mask lane;
    for (L j = 0; j < VL; ++j) lane[j] = (M)(j * SW);
    for (L p = p0; p < p1; ++p) {
        const T* restrict plane = x + p * H * W;
        for (L oh = 0; oh < OH; ++oh) {
            const L h0 = oh * SH - PH;
            const L kh0 = h0 < 0 ? -h0 : 0, kh1 = H - h0 < KH ? H - h0 : KH;
            T* restrict yr = y + (p * OH + oh) * OW;
            int* restrict ir = index + (p * OH + oh) * OW;
            L ow = 0;
            for (; ow < lo; ++ow)
                edge_window(plane, yr + ow, ir + ow, h0, kh0, kh1, ow * SW - PW, W, KW);
            for (L next = ow; next < hi && hi - lo >= VL; next += VL) {
                ow = next + VL <= hi ? next : hi - VL;
                const L w0 = ow * SW - PW;
                vec best = (vec){0} - (T)__builtin_inf();
                mask arg = lane + (M)((h0 + kh0) * W + w0);
                for (L kh = kh0; kh < kh1; ++kh) {
                    const T* restrict row = plane + (h0 + kh) * W + w0;
                    for (L kw = 0; kw < KW; ++kw) {
                        vec v;
                        if (SW == 1)
                            memcpy(&v, row + kw, sizeof(v));
                        else if (SW == 2 && w0 + kw + 2 * VL <= W) {
                            vec a, b;
                            memcpy(&a, row + kw, sizeof(a));
                            memcpy(&b, row + kw + VL, sizeof(b));
                            v = __builtin_shufflevector(a, b, 0, 2, 4, 6);
                        } else
                            for (L j = 0; j < VL; ++j) v[j] = row[kw + j * SW];
                        const mask m = (v > best) | (v != v);
                        best = (vec)(((mask)v & m) | ((mask)best & ~m));
                        arg = ((lane + (M)((h0 + kh) * W + w0 + kw)) & m) | (arg & ~m);
                    }
                }
                memcpy(yr + ow, &best, sizeof(best));
                for (L j = 0; j < VL; ++j) ir[ow + j] = (int)arg[j];
                ow += VL;
            }
            for (; ow < OW; ++ow)
                edge_window(plane, yr + ow, ir + ow, h0, kh0, kh1, ow * SW - PW, W, KW);
        }
    }
}

/* dx (planes, H, W) of planes p0 .. p1: zeros, plus each output's gradient at its
   index. */
void maxpool_backward(const T* restrict gy, const int* restrict index, T* restrict dx,
                      const L p0, const L p1, const L H, const L W, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW)
{
    (void)KH; (void)KW; (void)SH; (void)SW; (void)PH; (void)PW;
    const L N = OH * OW;
    for (L p = p0; p < p1; ++p) {
        T* restrict plane = dx + p * H * W;
        const T* restrict g = gy + p * N;
        const int* restrict at = index + p * N;
        memset(plane, 0, H * W * sizeof(T));
        for (L i = 0; i < N; ++i) plane[at[i]] += g[i];
    }
}
