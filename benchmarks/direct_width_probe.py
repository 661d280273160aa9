"""The direct forward kernel built for 32-byte vectors, against gemm, on W6's layers.

    python benchmarks/direct_width_probe.py [--block 4 24] [--repeats 7]

Without AVX-512 the direct kernels (blocks of two 64-byte vectors of positions by 8
output channels, their loaded vectors pinned to registers only with AVX-512) take 10 to
20 times gemm's time on W6's layers (docs/cpu.md, "W6 on the AVX2 EPYC"). This probe
builds, in this process only, the convolution module with 32-byte vectors
(lower.native_conv.lanes: 16 float32 positions, two vectors) and the register hint
under AVX2 too, the direct forward's block of `--block` output channels by positions,
and times it against gemm (one thread, the process's CPU time, best of `--repeats`
alternating; the two outputs' largest difference relative to max |y| is printed). It
changes nothing outside this process: a measure of what a kernel sized for AVX2 would
give, not that kernel.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from isolation import limit_blas, load_average
from netdsl.lower import native_conv as lowering

# (label, channels in, out, kernel, pad) at 28x28, batch 16
LAYERS = [("5x5 16->32", 16, 32, 5, 2), ("5x5 32->96", 32, 96, 5, 2),
          ("3x3 96->128", 96, 128, 3, 1)]

_PINNED = "defined(__AVX512F__)\n#define IN_REGISTER"


def _probe_build(block: tuple[int, int]) -> None:
    """The module's text with 32-byte vectors, pinned under AVX2, and one direct block."""
    assert _PINNED in lowering._TEMPLATE
    lowering.lanes = lambda dtype: 2 * 32 // lowering.CTYPE_SIZES[dtype]
    lowering._TEMPLATE = lowering._TEMPLATE.replace(
        _PINNED, "defined(__AVX2__)\n#define IN_REGISTER")
    lowering.direct_blocks = lambda dtype: {"conv_forward_direct": block,
                                            "conv_forward_direct_narrow": block}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--block", type=int, nargs=2, default=(4, 24),
                        metavar=("CHANNELS", "POSITIONS"))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    limiter = limit_blas(1)  # noqa: F841 (kept for the run)
    _probe_build(tuple(args.block))
    from netdsl.ops.windows import Geometry
    from netdsl.runtime.host import one_blas_thread
    from netdsl.runtime.native import conv
    print(f"load {load_average():.2f}; direct block {args.block[0]} channels by "
          f"{args.block[1]} positions, 32-byte vectors; ms of CPU time, best of "
          f"{args.repeats}")
    rng = np.random.default_rng(0)
    for label, c, o, k, p in LAYERS:
        g = Geometry.of((28, 28), (k, k), (1, 1), (1, 1), [(p, p)] * 2)
        x = rng.standard_normal((16, c, 28, 28)).astype(np.float32)
        w = rng.standard_normal((o, c, k, k)).astype(np.float32)
        with one_blas_thread(np):
            ref = conv.forward("gemm", x, w, None, g)
            got = conv.forward("direct", x, w, None, g, kernel="conv_forward_direct")
            times = {"gemm": [], "direct": []}
            for _ in range(args.repeats):
                for kind in times:
                    began = time.process_time()
                    conv.forward(kind, x, w, None, g, kernel="conv_forward_direct"
                                 if kind == "direct" else None)
                    times[kind].append((time.process_time() - began) * 1e3)
        error = float(np.abs(ref - got).max() / np.abs(ref).max())
        print(f"{label}: gemm {min(times['gemm']):.1f}, direct {min(times['direct']):.1f} "
              f"(difference {error:.1e} of max |y|)")
    print(f"load {load_average():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
