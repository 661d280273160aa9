"""Single convolution layers: netdsl's NumPy path, the native target's compiled kernels
and PyTorch, forward and backward, interleaved.

    python benchmarks/conv_speed.py [--threads 1] [--repeats 15] [--batch 32] [--only W3]
                                    [--cpu-time] [--settle 0.05]

The layers are those of W2 (LeNet-5), W3 (ResNet-20) and W6 (Inception: its 3x3, 5x5
and 1x1 layers), float32. Per layer and side: the median of `--repeats` timings, the sides taking turns
within each repeat. netdsl runs as its executors run it (the slabs of the batch on the
host's threads, BLAS on one thread); the native columns are each kernel, not the choice
(`wino`, Winograd F(2x2, 3x3), only on 3x3 layers at stride 1; its backward is dx by
it and dweight by the direct kernel). Before each timed call the script pauses
`--settle` seconds and makes one untimed call (isolation.settle): PyTorch's OpenMP
threads spin for a while after its own call, and on two threads the next side shared
the cores with them. Prints the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from isolation import limit_blas, load_average, settle  # noqa: E402
from netdsl.ops import convolve  # noqa: E402
from netdsl.ops.windows import Geometry  # noqa: E402
from netdsl.runtime.host import one_blas_thread  # noqa: E402
from netdsl.runtime.native import conv as native_conv  # noqa: E402

# (label, channels in, out, size, kernel, stride, pad)
LAYERS = [("W3 16@32", 16, 16, 32, 3, 1, 1), ("W3 32@16", 32, 32, 16, 3, 1, 1),
          ("W3 64@8", 64, 64, 8, 3, 1, 1), ("W3 3->16@32", 3, 16, 32, 3, 1, 1),
          ("W3 16->32 s2", 16, 32, 32, 3, 2, 1), ("W3 32->64 s2", 32, 64, 16, 3, 2, 1),
          ("W2 1->6 5x5", 1, 6, 28, 5, 1, 2), ("W2 6->16 5x5", 6, 16, 14, 5, 1, 0),
          ("W6 96->128@28", 96, 128, 28, 3, 1, 1), ("W6 16->32 5x5@28", 16, 32, 28, 5, 1, 2),
          # the rest of W6's layers (batch 16 in its step): 3b's 3x3 and 5x5, the 1x1s
          ("W6 128->192@28", 128, 192, 28, 3, 1, 1), ("W6 32->96 5x5@28", 32, 96, 28, 5, 1, 2),
          ("W6 1x1 64->64", 64, 64, 28, 1, 1, 0), ("W6 1x1 64->96", 64, 96, 28, 1, 1, 0),
          ("W6 1x1 64->16", 64, 16, 28, 1, 1, 0), ("W6 1x1 64->32", 64, 32, 28, 1, 1, 0),
          ("W6 1x1 256->128", 256, 128, 28, 1, 1, 0), ("W6 1x1 256->32", 256, 32, 28, 1, 1, 0),
          ("W6 1x1 256->64", 256, 64, 28, 1, 1, 0)]


def _timed(fn, clock=time.perf_counter) -> float:
    began = clock()
    fn()
    return (clock() - began) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--only", help="layers whose label holds this text, e.g. W3")
    parser.add_argument("--settle", type=float, default=0.05,
                        help="seconds to pause, then one untimed call, before each timed "
                             "call (0: none)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the calling thread's CPU time, not the wall clock: on a "
                             "busy machine it leaves out the time other processes hold the "
                             "core (one thread only)")
    args = parser.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time counts one thread's time: use it with --threads 1")
    clock = time.thread_time if args.cpu_time else time.perf_counter
    limiter = limit_blas(args.threads)  # noqa: F841  (it must stay referenced)
    torch.set_num_threads(args.threads)
    print(f"load average before: {load_average()}; {args.threads} thread(s), batch "
          f"{args.batch}, median of {args.repeats}, ms"
          + (" of the thread's CPU time" if args.cpu_time else ""))
    print(f"{'layer':18} {'np fwd':>7} {'gemm':>6} {'direct':>6} {'wino':>6} {'torch':>6} | "
          f"{'np bwd':>7} {'gemm':>6} {'direct':>6} {'wino':>6} {'torch f+b':>9}")
    rng = np.random.default_rng(0)
    for label, c, o, size, k, s, p in LAYERS:
        if args.only and args.only not in label:
            continue
        g = Geometry.of((size, size), (k, k), (s, s), (1, 1), [(p, p)] * 2)
        x = rng.standard_normal((args.batch, c, size, size)).astype(np.float32)
        w = rng.standard_normal((o, c, k, k)).astype(np.float32)
        gy = rng.standard_normal((args.batch, o, *g.out)).astype(np.float32)
        tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
        tgy = torch.from_numpy(gy)
        sides = {
            "np fwd": lambda: convolve.conv_nd.generic(np, x, w, None, g, 1),
            "gemm": lambda: native_conv.forward("gemm", x, w, None, g),
            "direct": lambda: native_conv.forward("direct", x, w, None, g),
            "wino": lambda: native_conv.forward("winograd", x, w, None, g),
            "torch": lambda: F.conv2d(tx, tw, stride=s, padding=p),
            "np bwd": lambda: convolve.conv_nd_backward.generic(np, gy, x, w, g, 1),
            "bwd gemm": lambda: native_conv.backward(gy, x, w, g, kind="gemm"),
            "bwd direct": lambda: native_conv.backward(gy, x, w, g, kind="direct"),
            "bwd wino": lambda: native_conv.backward(gy, x, w, g, kind="winograd"),
            "torch f+b": lambda: torch.autograd.grad(F.conv2d(tx, tw, stride=s, padding=p),
                                                     (tx, tw), tgy),
        }
        if not native_conv._winograd_fits(g):
            del sides["wino"], sides["bwd wino"]
        times = {name: [] for name in sides}
        with one_blas_thread(np):
            for fn in sides.values():
                fn()
            for _ in range(args.repeats):
                for name, fn in sides.items():
                    if args.settle:
                        settle(fn, args.settle)
                    times[name].append(_timed(fn, clock))
        med = {name: statistics.median(t) for name, t in times.items()}
        cell = lambda name: f"{med[name]:6.2f}" if name in med else "     -"  # noqa: E731
        print(f"{label:18} {med['np fwd']:7.2f} {cell('gemm')} {cell('direct')} {cell('wino')} "
              f"{med['torch']:6.2f} | {med['np bwd']:7.2f} {cell('bwd gemm')} "
              f"{cell('bwd direct')} {cell('bwd wino')} {med['torch f+b']:9.2f}")
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
