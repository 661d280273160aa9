#include <string.h>

typedef long long L;
typedef double T;
/* scipy_cblas_?gemm64_: CBLAS's ?gemm */
typedef long long I;
typedef void (*gemm_t)(int, int, int, I, I, I, T, const T*, I, const T*, I, T, T*, I);
/* a vector of 4 elements (GCC's and Clang's vector extension), at any element's address */
enum { VL = 4 };
typedef T vec __attribute__((vector_size(VL * sizeof(T)), aligned(sizeof(T))));
#define CHAINED 0
#define CHAIN(v) (v)
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
enum { KB = 64 };
void conv_winograd_weights(const T* restrict w, T* restrict U, const L O, const L C)
{
    const L OC = O * C;
    for (L i0 = 0; i0 < OC; i0 += KB) {
        const L nb = OC - i0 < KB ? OC - i0 : KB;
        T g[9][KB], u[16][KB];
        for (L i = 0; i < KB; ++i)
            for (L j = 0; j < 9; ++j) g[j][i] = i < nb ? w[9 * (i0 + i) + j] : 0;
        for (L i = 0; i < KB; i += VL) {
            vec t[4][3];
            for (L j = 0; j < 3; ++j) {   /* G g */
                const vec r0 = LOAD(&g[j][i]), r1 = LOAD(&g[3 + j][i]);
                const vec r2 = LOAD(&g[6 + j][i]);
                t[0][j] = r0;
                t[1][j] = (r0 + r1 + r2) / 2;
                t[2][j] = (r0 - r1 + r2) / 2;
                t[3][j] = r2;
            }
            for (L a = 0; a < 4; ++a) {   /* (G g) G^T */
                STORE(&u[4 * a][i], t[a][0]);
                STORE(&u[4 * a + 1][i], (t[a][0] + t[a][1] + t[a][2]) / 2);
                STORE(&u[4 * a + 2][i], (t[a][0] - t[a][1] + t[a][2]) / 2);
                STORE(&u[4 * a + 3][i], t[a][2]);
            }
        }
        for (L k = 0; k < 16; ++k) memcpy(U + k * OC + i0, u[k], nb * sizeof(T));
    }
}

/* dw (O, C, 3, 3) = G^T u G of each (4, 4) u of dU (16, O, C): the weight gradient
   taken back from the transformed domain, KB kernels at a time as above. */
void conv_winograd_weights_back(const T* restrict dU, T* restrict dw, const L O,
                                const L C)
{
    const L OC = O * C;
    for (L i0 = 0; i0 < OC; i0 += KB) {
        const L nb = OC - i0 < KB ? OC - i0 : KB;
        T u[16][KB], g[9][KB];
        for (L k = 0; k < 16; ++k) {
            memcpy(u[k], dU + k * OC + i0, nb * sizeof(T));
            for (L i = nb; i < KB; ++i) u[k][i] = 0;
        }
        for (L i = 0; i < KB; i += VL) {
            vec t[3][4];
            for (L b = 0; b < 4; ++b) {   /* G^T u */
                const vec r0 = LOAD(&u[b][i]), r1 = LOAD(&u[4 + b][i]);
                const vec r2 = LOAD(&u[8 + b][i]), r3 = LOAD(&u[12 + b][i]);
                const vec half = (r1 + r2) / 2;
                t[0][b] = r0 + half;
                t[1][b] = (r1 - r2) / 2;
                t[2][b] = half + r3;
            }
            for (L r = 0; r < 3; ++r) {   /* (G^T u) G */
                const vec half = (t[r][1] + t[r][2]) / 2;
                STORE(&g[3 * r][i], t[r][0] + half);
                STORE(&g[3 * r + 1][i], (t[r][1] - t[r][2]) / 2);
                STORE(&g[3 * r + 2][i], half + t[r][3]);
            }
        }
        for (L i = 0; i < nb; ++i)
            for (L j = 0; j < 9; ++j) dw[9 * (i0 + i) + j] = g[j][i];
    }
}

/* Image xb (C, H, W) padded (PH rows above, PW columns left, zeros to HP rows and
   2 * WE columns) into D, each padded row as its even columns then its odd ones (WE
   each): a tile's four columns are then two runs of consecutive tiles each. */
static void split_columns(const T* restrict xb, T* restrict D, const L C, const L H,
                          const L W, const L PH, const L PW, const L HP, const L WE)
{
    /* the q whose even column 2q - PW (odd column 2q + 1 - PW) lies in the image */
    L elo = (PW + 1) / 2, ehi = (W + PW + 1) / 2, olo = PW / 2, ohi = (W + PW) / 2;
    if (ehi > WE) ehi = WE;
    if (ohi > WE) ohi = WE;
    memset(D, 0, C * HP * 2 * WE * sizeof(T));
    for (L c = 0; c < C; ++c)
        for (L h = 0; h < H && h + PH < HP; ++h) {
            const T* restrict in = xb + (c * H + h) * W;
            T* restrict even = D + (c * HP + h + PH) * 2 * WE;
            T* restrict odd = even + WE;
            for (L q = elo; q < ehi; ++q) even[q] = in[2 * q - PW];
            for (L q = olo; q < ohi; ++q) odd[q] = in[2 * q + 1 - PW];
        }
}

/* V (C, 16, PS) from column 0 on: B^T d B of the tiles of tile row th of the image in
   D (split_columns' layout), VL tiles at a time (past TW into what follows). */
static void input_tiles(T* restrict V, const T* restrict D, const L th, const L C,
                        const L HP, const L WE, const L TW, const L PS)
{
    for (L c = 0; c < C; ++c) {
        const T* restrict r = D + (c * HP + 2 * th) * 2 * WE;
        T* restrict v = V + c * 16 * PS;
        for (L q = 0; q < TW; q += VL) {
            /* d[i][j]: row i, columns j = 0 .. 3 of VL consecutive tiles */
            vec d[4][4], t[4][4];
            for (L i = 0; i < 4; ++i) {
                const T* restrict even = r + i * 2 * WE + q;
                d[i][0] = LOAD(even);
                d[i][1] = LOAD(even + WE);
                d[i][2] = LOAD(even + 1);
                d[i][3] = LOAD(even + WE + 1);
            }
            for (L j = 0; j < 4; ++j) {   /* B^T d */
                t[0][j] = d[0][j] - d[2][j];
                t[1][j] = d[1][j] + d[2][j];
                t[2][j] = d[2][j] - d[1][j];
                t[3][j] = d[1][j] - d[3][j];
            }
            for (L a = 0; a < 4; ++a) {   /* (B^T d) B */
                STORE(v + (4 * a + 0) * PS + q, t[a][0] - t[a][2]);
                STORE(v + (4 * a + 1) * PS + q, t[a][1] + t[a][2]);
                STORE(v + (4 * a + 2) * PS + q, t[a][2] - t[a][1]);
                STORE(v + (4 * a + 3) * PS + q, t[a][1] - t[a][3]);
            }
        }
    }
}

/* y (B, O, OH, OW) of images b0 .. b1 (a 3x3 kernel at stride 1, PH and PW the pads
   above and left; the pads below and right are those OH and OW imply), from U of
   conv_winograd_weights. The tile rows u = b * TH + th of the images run in chunks of
   ROWS: per chunk, V (C, 16, tiles) = B^T d B of every tile and channel, the sixteen
   GEMMs M[k] (O, tiles) = U[k] (O, C) V[k] (M laid out (O, 16, tiles): a tile's 16
   cells are a few strides apart, which the loads' addressing covers without a
   pointer each), and A^T m A of every tile and output
   channel, plus the bias, into y (a last odd row or column dropped). The transforms
   run along a tile row 4 tiles at a time (past its end into the next row's, which
   overwrites them, or into VL cells of slack at the end of V's and M's rows). scratch
   (winograd_scratch): V, M, the image being read as split_columns lays it out, four
   vectors for the rows' ends. */
void conv_forward_winograd(gemm_t gemm, const T* restrict x, const T* restrict U,
                           const T* restrict bias, T* restrict y, T* restrict scratch,
                           const L b0, const L b1, const L ROWS, const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    (void)KH; (void)KW; (void)SH; (void)SW; (void)DH; (void)DW;
    const L TH = (OH + 1) / 2, TW = (OW + 1) / 2, TV = (TW + VL - 1) / VL * VL;
    const L PS = ROWS * TW + VL, HP = 2 * TH + 2, WE = TV + 1;
    T* restrict V = scratch;
    T* restrict M = V + 16 * C * PS;
    T* restrict D = M + 16 * O * PS;
    T* restrict Z = D + C * HP * 2 * WE;      /* 4 vectors */
    L ready = -1;   /* the image D holds */
    for (L u0 = b0 * TH; u0 < b1 * TH; u0 += ROWS) {
        const L u1 = u0 + ROWS < b1 * TH ? u0 + ROWS : b1 * TH, n = (u1 - u0) * TW;
        for (L u = u0; u < u1; ++u) {
            const L b = u / TH, th = u % TH;
            if (b != ready) {
                split_columns(x + b * C * H * W, D, C, H, W, PH, PW, HP, WE);
                ready = b;
            }
            input_tiles(V + (u - u0) * TW, D, th, C, HP, WE, TW, PS);
        }
        for (L k = 0; k < 16; ++k)
            gemm(101, 111, 111, O, n, C, 1, U + k * O * C, C, V + k * PS, 16 * PS, 0,
                 M + k * PS, 16 * PS);
        for (L u = u0; u < u1; ++u) {
            const L b = u / TH, th = u % TH;
            for (L o = 0; o < O; ++o) {
                const T start = bias ? bias[o] : 0;
                const T* restrict m = M + o * 16 * PS + (u - u0) * TW;
                T* restrict out = y + ((b * O + o) * OH + 2 * th) * OW;
                const int both = 2 * th + 1 < OH;   /* a last odd row has no second */
                for (L q = 0; q < TW; q += VL) {
                    vec s0[4], s1[4], e[4];
                    for (L j = 0; j < 4; ++j) {   /* A^T m */
                        const vec m0 = LOAD(m + j * PS + q);
                        const vec m1 = LOAD(m + (4 + j) * PS + q);
                        const vec m2 = LOAD(m + (8 + j) * PS + q);
                        const vec m3 = LOAD(m + (12 + j) * PS + q);
                        s0[j] = m0 + m1 + m2;
                        s1[j] = m1 - m2 - m3;
                    }
                    e[0] = s0[0] + s0[1] + s0[2] + start;   /* (A^T m) A */
                    e[1] = s0[1] - s0[2] - s0[3] + start;
                    e[2] = s1[0] + s1[1] + s1[2] + start;
                    e[3] = s1[1] - s1[2] - s1[3] + start;
                    /* the tiles' two columns side by side */
                    const vec r0 = __builtin_shufflevector(e[0], e[1], 0, 4, 1, 5);
                    const vec r1 = __builtin_shufflevector(e[0], e[1], 2, 6, 3, 7);
                    const vec r2 = __builtin_shufflevector(e[2], e[3], 0, 4, 1, 5);
                    const vec r3 = __builtin_shufflevector(e[2], e[3], 2, 6, 3, 7);
                    if (2 * q + 2 * VL <= OW) {   /* whole vectors inside the rows */
                        STORE(out + 2 * q, r0);
                        STORE(out + 2 * q + VL, r1);
                        if (both) {
                            STORE(out + OW + 2 * q, r2);
                            STORE(out + OW + 2 * q + VL, r3);
                        }
                    } else {   /* the rows' ends: a whole vector, the rest through Z */
                        L at = 2 * q;
                        vec last0 = r0, last1 = r2;
                        if (at + VL <= OW) {
                            STORE(out + at, r0);
                            if (both) STORE(out + OW + at, r2);
                            at += VL;
                            last0 = r1;
                            last1 = r3;
                        }
                        STORE(Z, last0);
                        STORE(Z + VL, last1);
                        for (L i = at; i < OW; ++i) {
                            out[i] = Z[i - at];
                            if (both) out[OW + i] = Z[VL + i - at];
                        }
                    }
                }
                if (CHAINED)   /* the rows just written, still in the cache */
                    for (L i = 0; i < (both ? 2 * OW : OW); ++i) out[i] = CHAIN(out[i]);
            }
        }
    }
}
/* Images b0 .. b1's weight gradient in the Winograd domain, added to G16 (16, O, C),
   and their bias gradient, added to db (O): the forward is y = A^T [U * V] A per tile,
   so dL/dU[k] = the sum over tiles of (A dy A^T)[k] * V[k], with dy the tile's 2x2 of
   gy (zero past OH and OW), and dL/dg = G^T (dL/dU) G, which the caller takes. Per
   chunk of ROWS tile rows: V as the forward makes it, Y (O, 16, tiles) = A dy A^T,
   and sixteen GEMMs G16[k] (O, C) += Y[k] (O, tiles) V[k]^T. scratch
   (winograd_grad_scratch): V, Y, the image and its gy as split_columns lays them out. */
void conv_weight_grad_winograd(gemm_t gemm, const T* restrict gy, const T* restrict x,
                               T* restrict G16, T* restrict db, T* restrict scratch,
                               const L b0, const L b1, const L ROWS, const L C, const L H, const L W, const L O, const L KH, const L KW, const L OH, const L OW, const L SH, const L SW, const L PH, const L PW, const L DH, const L DW)
{
    (void)KH; (void)KW; (void)SH; (void)SW; (void)DH; (void)DW;
    const L TH = (OH + 1) / 2, TW = (OW + 1) / 2, TV = (TW + VL - 1) / VL * VL;
    const L PS = ROWS * TW + VL, HP = 2 * TH + 2, WE = TV + 1;
    T* restrict V = scratch;
    T* restrict Y = V + 16 * C * PS;
    T* restrict D = Y + 16 * O * PS;
    T* restrict E = D + C * HP * 2 * WE;      /* gy's image: (O, 2 TH, 2 WE) */
    L ready = -1;   /* the image D and E hold */
    for (L u0 = b0 * TH; u0 < b1 * TH; u0 += ROWS) {
        const L u1 = u0 + ROWS < b1 * TH ? u0 + ROWS : b1 * TH, n = (u1 - u0) * TW;
        for (L u = u0; u < u1; ++u) {
            const L b = u / TH, th = u % TH;
            if (b != ready) {
                const T* restrict g = gy + b * O * OH * OW;
                split_columns(x + b * C * H * W, D, C, H, W, PH, PW, HP, WE);
                split_columns(g, E, O, OH, OW, 0, 0, 2 * TH, WE);
                for (L o = 0; o < O && db; ++o) {
                    vec sum = {0};
                    T rest = 0;
                    const L N = OH * OW;
                    L i = 0;
                    for (; i + VL <= N; i += VL) sum += LOAD(g + o * N + i);
                    for (; i < N; ++i) rest += g[o * N + i];
                    for (L j = 0; j < VL; ++j) rest += sum[j];
                    db[o] += rest;
                }
                ready = b;
            }
            input_tiles(V + (u - u0) * TW, D, th, C, HP, WE, TW, PS);
            for (L o = 0; o < O; ++o) {
                const T* restrict r = E + (o * 2 * TH + 2 * th) * 2 * WE;
                T* restrict z = Y + o * 16 * PS + (u - u0) * TW;
                for (L q = 0; q < TW; q += VL) {
                    /* the tiles' dy: rows 0 and 1, columns 0 (even) and 1 (odd) */
                    const vec e0 = LOAD(r + q), o0 = LOAD(r + WE + q);
                    const vec e1 = LOAD(r + 2 * WE + q), o1 = LOAD(r + 3 * WE + q);
                    vec s[4][2];   /* A dy */
                    s[0][0] = e0;      s[0][1] = o0;
                    s[1][0] = e0 + e1; s[1][1] = o0 + o1;
                    s[2][0] = e0 - e1; s[2][1] = o0 - o1;
                    s[3][0] = -e1;     s[3][1] = -o1;
                    for (L a = 0; a < 4; ++a) {   /* (A dy) A^T */
                        STORE(z + (4 * a + 0) * PS + q, s[a][0]);
                        STORE(z + (4 * a + 1) * PS + q, s[a][0] + s[a][1]);
                        STORE(z + (4 * a + 2) * PS + q, s[a][0] - s[a][1]);
                        STORE(z + (4 * a + 3) * PS + q, -s[a][1]);
                    }
                }
            }
        }
        for (L k = 0; k < 16; ++k)
            gemm(101, 111, 112, O, C, n, 1, Y + k * PS, 16 * PS, V + k * PS, 16 * PS, 1,
                 G16 + k * O * C, C);
    }
}
