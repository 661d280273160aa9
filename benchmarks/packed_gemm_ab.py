"""A pooled loop's part: its GEMM over a weight packed once (netdsl.lower.native_gemm)
against BLAS's GEMM on one thread, W4's blocks, alternating in one process.

Per shape (M x K by K x N: a part's block of the step's recurrent product, forward and
backward, on 1 and 2 parts), rounds of `calls` calls of each in turn, the order turned
every round; the median over rounds of the CPU time a call takes, and the load average
before and after. The packed GEMM's panels are packed once before the calls, as a loop
packs them once a call.

    python benchmarks/packed_gemm_ab.py [--rounds 9] [--calls 2000] [--keep]
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time

import numpy as np

from isolation import keep_results, limit_blas, load_average
from netdsl.lower.native_gemm import PACKED_GEMM
from netdsl.runtime.native.blas import gemm
from netdsl.runtime.native.toolchain import build

# (label, M, K, N): W4's step, batch 32, hidden 128, the recurrent weight 128 x 512
SHAPES = (("forward, 1 part", 32, 128, 512), ("forward part of 2", 32, 128, 256),
          ("backward, 1 part", 32, 512, 128), ("backward part of 2", 32, 512, 64))

_HARNESS = """
typedef %s I;
typedef void (*gemm_t)(int, int, int, I, I, I, float, const float*, I, const float*, I,
                       float, float*, I);
void packed_calls(long long calls, long long M, long long N, long long K, const float* A,
                  const float* W, long long ldw, float* C, float* p) {
    pack_panels(W, ldw, K, N, p);
    for (long long i = 0; i < calls; i++)
        gemm_packed(M, N, K, A, K, p, 1, C, N);
}
void blas_calls(void* gemm, long long calls, long long M, long long N, long long K,
                const float* A, const float* W, long long ldw, float* C) {
    for (long long i = 0; i < calls; i++)
        ((gemm_t)gemm)(101, 111, 111, M, N, K, 1, A, K, W, ldw, 1, C, N);
}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    limiter = limit_blas(1)  # noqa: F841  one thread, as a pooled part calls it
    address, integer, _ = gemm("float32")
    library = build("#include <string.h>\n" + "\n".join(PACKED_GEMM) + _HARNESS % integer)
    rng = np.random.default_rng(0)
    before, kept = load_average(), {"calls": args.calls, "shapes": {}}
    for label, M, K, N in SHAPES:
        a = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((K, 2 * N)).astype(np.float32)   # a block of a weight
        c = np.zeros((M, N), np.float32)
        p = np.empty(K * N, np.float32)
        ptr = [ctypes.c_void_p(x.ctypes.data) for x in (a, w, c, p)]
        n = [ctypes.c_longlong(v) for v in (args.calls, M, N, K, 2 * N)]
        ways = {"packed": lambda: library.packed_calls(*n[:4], ptr[0], ptr[1], n[4], ptr[2],
                                                       ptr[3]),
                "blas": lambda: library.blas_calls(ctypes.c_void_p(address), *n[:4], ptr[0],
                                                   ptr[1], n[4], ptr[2])}
        times = {way: [] for way in ways}
        for r in range(args.rounds):
            for way in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                began = time.thread_time()
                ways[way]()
                times[way].append((time.thread_time() - began) / args.calls * 1e6)
        medians = {way: statistics.median(t) for way, t in times.items()}
        gflops = {way: 2 * M * N * K / m / 1e3 for way, m in medians.items()}
        kept["shapes"][label] = times
        print(f"{label:20s} {M}x{K} by {K}x{N}: packed {medians['packed']:6.2f} us "
              f"({gflops['packed']:5.1f} GFLOP/s), BLAS {medians['blas']:6.2f} us "
              f"({gflops['blas']:5.1f} GFLOP/s)")
    after = load_average()
    kept["load_before"], kept["load_after"] = before, after
    print(f"load {before:.2f} -> {after:.2f}")
    if args.keep:
        print(f"raw numbers: {keep_results('packed_gemm_ab', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
