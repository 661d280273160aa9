"""C source of a GEMM over a weight packed once, for the native target's pooled loops.

A recurrent loop multiplies by the same weight at every step, and a pooled loop's part
by the same block of it (netdsl.lower.native_loop). OpenBLAS packs its B operand again
at every call; these functions pack the weight once a call, in panels of PANEL columns
(P[panel][k][PANEL]), and multiply 8 rows by 32 columns at a time in 16 accumulators of
16 floats (GCC's vector extensions: AVX-512 registers where the CPU has them). float32
only; M must be a multiple of 8 and N of PANEL, which the generated code checks before
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
    "typedef float v16f __attribute__((vector_size(64)));",
    "static void pack_panels(const float* w, long long ldw, long long K, long long N,",
    "                        float* p) {",
    "    for (long long c = 0; c < N; c += 32)",
    "        for (long long k = 0; k < K; k++)",
    "            memcpy(p + c*K + k*32, w + k*ldw + c, 32*sizeof(float));",
    "}",
    "",
    "/* C (M x N) = A (M x K) times the packed panels, plus C unless beta is 0;",
    "   M a multiple of 8, N of 32: 8 rows by 32 columns in 16 vector registers */",
    "static void gemm_packed(long long M, long long N, long long K, const float* A,",
    "                        long long lda, const float* p, int beta, float* C, long long ldc) {",
    "    for (long long c = 0; c < N; c += 32) {",
    "        const float* panel = p + c*K;",
    "        for (long long r = 0; r < M; r += 8) {",
    "            v16f acc[8][2];",
    "            for (int i = 0; i < 8; i++) {",
    "                if (beta) {",
    "                    memcpy(&acc[i][0], C + (r + i)*ldc + c, 64);",
    "                    memcpy(&acc[i][1], C + (r + i)*ldc + c + 16, 64);",
    "                } else {",
    "                    acc[i][0] = (v16f){0};",
    "                    acc[i][1] = (v16f){0};",
    "                }",
    "            }",
    "            const float* a = A + r*lda;",
    "            for (long long k = 0; k < K; k++) {",
    "                v16f b0, b1;",
    "                memcpy(&b0, panel + k*32, 64);",
    "                memcpy(&b1, panel + k*32 + 16, 64);",
    "                for (int i = 0; i < 8; i++) {",
    "                    const float x = a[i*lda + k];",
    "                    acc[i][0] += x * b0;",
    "                    acc[i][1] += x * b1;",
    "                }",
    "            }",
    "            for (int i = 0; i < 8; i++) {",
    "                memcpy(C + (r + i)*ldc + c, &acc[i][0], 64);",
    "                memcpy(C + (r + i)*ldc + c + 16, &acc[i][1], 64);",
    "            }",
    "        }",
    "    }",
    "}",
    "",
]
