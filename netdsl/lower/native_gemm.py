"""C source of a GEMM over a weight packed once, for the native target's pooled loops.

A recurrent loop multiplies by the same weight at every step, and a pooled loop's part
by the same block of it (netdsl.lower.native_loop). OpenBLAS packs its B operand again
at every call; these functions pack the weight once a call, in panels of PANEL columns
(P[panel][k][PANEL]), and multiply 8 rows by 32 columns at a time in 16 accumulators of
16 floats where the CPU has AVX-512 (GCC's vector extensions), 4 rows by 16 columns in 8
of 8 floats elsewhere: AVX2's 16 registers cannot hold the first block's 16 of 16
floats, and GCC then moved them through the stack at every step of k (2 GFLOP/s where
OpenBLAS made 20-30 on an AVX2 EPYC). float32 only; M must be a multiple of 8 and N of PANEL, which the generated code checks before
it calls them. Only text is made here.
"""
from __future__ import annotations

__all__ = ["PACKED_GEMM", "PANEL"]

# a packed weight's panels: this many columns each (two vectors of 16 floats)
PANEL = 32

# float32 only: a GEMM over a weight packed once a loop, in panels of PANEL columns: the
# part's block is the same at every step, where OpenBLAS packs it again at each call
PACKED_GEMM = [
    "/* a weight packed in panels of 32 columns, P[panel][k][32], once a call */",
    "#if defined(__AVX512F__)",
    "#define PACK_VL 16   /* floats a vector: 8 rows by 32 columns in 16 registers */",
    "#define PACK_ROWS 8",
    "#else",
    "#define PACK_VL 8    /* AVX2's 16 registers: 4 rows by 16 columns in 8 */",
    "#define PACK_ROWS 4",
    "#endif",
    "typedef float vpf __attribute__((vector_size(PACK_VL * sizeof(float))));",
    "static void pack_panels(const float* w, long long ldw, long long K, long long N,",
    "                        float* p) {",
    "    for (long long c = 0; c < N; c += 32)",
    "        for (long long k = 0; k < K; k++)",
    "            memcpy(p + c*K + k*32, w + k*ldw + c, 32*sizeof(float));",
    "}",
    "",
    "/* C (M x N) = A (M x K) times the packed panels, plus C unless beta is 0;",
    "   M a multiple of 8, N of 32: PACK_ROWS rows by two vectors' columns at a time */",
    "static void gemm_packed(long long M, long long N, long long K, const float* A,",
    "                        long long lda, const float* p, int beta, float* C, long long ldc) {",
    "    for (long long c = 0; c < N; c += 32) {",
    "        const float* panel = p + c*K;",
    "        for (long long h = 0; h < 32; h += 2*PACK_VL)",
    "        for (long long r = 0; r < M; r += PACK_ROWS) {",
    "            vpf acc[PACK_ROWS][2];",
    "            float* y = C + r*ldc + c + h;",
    "            for (int i = 0; i < PACK_ROWS; i++) {",
    "                if (beta) {",
    "                    memcpy(&acc[i][0], y + i*ldc, sizeof(vpf));",
    "                    memcpy(&acc[i][1], y + i*ldc + PACK_VL, sizeof(vpf));",
    "                } else {",
    "                    acc[i][0] = (vpf){0};",
    "                    acc[i][1] = (vpf){0};",
    "                }",
    "            }",
    "            const float* a = A + r*lda;",
    "            for (long long k = 0; k < K; k++) {",
    "                vpf b0, b1;",
    "                memcpy(&b0, panel + k*32 + h, sizeof(vpf));",
    "                memcpy(&b1, panel + k*32 + h + PACK_VL, sizeof(vpf));",
    "                for (int i = 0; i < PACK_ROWS; i++) {",
    "                    const float x = a[i*lda + k];",
    "                    acc[i][0] += x * b0;",
    "                    acc[i][1] += x * b1;",
    "                }",
    "            }",
    "            for (int i = 0; i < PACK_ROWS; i++) {",
    "                memcpy(y + i*ldc, &acc[i][0], sizeof(vpf));",
    "                memcpy(y + i*ldc + PACK_VL, &acc[i][1], sizeof(vpf));",
    "            }",
    "        }",
    "    }",
    "}",
    "",
]
