"""How fast the NumPy convolution and max-pooling ops run next to PyTorch on the CPU.

    python benchmarks/op_speed.py [--repeats 7] [--threads 2] [--only lenet] [--settle 0.3]

One row per layer of the training workloads (LeNet-5 at batch 64, ResNet-20 at batch
32, an Inception module at batch 16), float32. Each repeat times netdsl and PyTorch
one after the other (forward alone, then forward and backward), so load changes hit
both; the table shows medians and the ratio netdsl / torch (below 1: netdsl is faster).
Forward runs in training mode on both sides: max-pooling records its argmax, as
training needs.

Both sides run on the same number of threads, and the benchmark isolates them from
each other as benchmarks/isolation.py describes: a pause (--settle seconds) and one
untimed call before each timed block, and glibc's malloc thresholds fixed first.
For single-threaded figures run python benchmarks/op_speed.py --threads 1. A full run
takes about three minutes.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from netdsl.ops import OPS, bind
from netdsl.ops.base import Ctx
from netdsl.types import floats

from isolation import blas_pool, fix_malloc, limit_blas, settle

# (workload, layer, op, positional args, keyword args, input shape (B, C, H, W))
LAYERS = [
    ("lenet", "conv1 1>6 k5 p2", "conv", [6, 5], {"pad": 2}, (64, 1, 28, 28)),
    ("lenet", "pool1 2", "maxpool", [2], {}, (64, 6, 28, 28)),
    ("lenet", "conv2 6>16 k5", "conv", [16, 5], {}, (64, 6, 14, 14)),
    ("lenet", "pool2 2", "maxpool", [2], {}, (64, 16, 10, 10)),
    ("resnet", "stem 3>16 k3", "conv", [16, 3], {"pad": 1, "bias": False}, (32, 3, 32, 32)),
    ("resnet", "16>16 k3 @32", "conv", [16, 3], {"pad": 1, "bias": False}, (32, 16, 32, 32)),
    ("resnet", "16>32 k3 s2", "conv", [32, 3], {"stride": 2, "pad": 1, "bias": False},
     (32, 16, 32, 32)),
    ("resnet", "16>32 k1 s2", "conv", [32, 1], {"stride": 2, "bias": False}, (32, 16, 32, 32)),
    ("resnet", "32>32 k3 @16", "conv", [32, 3], {"pad": 1, "bias": False}, (32, 32, 16, 16)),
    ("resnet", "32>64 k3 s2", "conv", [64, 3], {"stride": 2, "pad": 1, "bias": False},
     (32, 32, 16, 16)),
    ("resnet", "32>64 k1 s2", "conv", [64, 1], {"stride": 2, "bias": False}, (32, 32, 16, 16)),
    ("resnet", "64>64 k3 @8", "conv", [64, 3], {"pad": 1, "bias": False}, (32, 64, 8, 8)),
    ("inception", "1x1 64>64", "conv", [64, 1], {}, (16, 64, 28, 28)),
    ("inception", "1x1 64>96", "conv", [96, 1], {}, (16, 64, 28, 28)),
    ("inception", "3x3 96>128 p1", "conv", [128, 3], {"pad": 1}, (16, 96, 28, 28)),
    ("inception", "1x1 64>16", "conv", [16, 1], {}, (16, 64, 28, 28)),
    ("inception", "5x5 16>32 p2", "conv", [32, 5], {"pad": 2}, (16, 16, 28, 28)),
    ("inception", "pool 3 s1 p1", "maxpool", [3], {"stride": 1, "pad": 1}, (16, 64, 28, 28)),
    ("inception", "1x1 64>32", "conv", [32, 1], {}, (16, 64, 28, 28)),
]


def torch_twin(name, args, kwargs):
    """The PyTorch call that computes the same layer: f(x, params) -> y."""
    if name == "conv":
        stride, pad = kwargs.get("stride", 1), kwargs.get("pad", 0)
        return lambda x, p: F.conv2d(x, p["weight"], p.get("bias"), stride, pad)
    kernel = args[0]
    stride, pad = kwargs.get("stride", kernel), kwargs.get("pad", 0)
    return lambda x, p: F.max_pool2d(x, kernel, stride, pad)


class Layer:
    """One layer, set up on both sides with the same input, parameters and output gradient."""

    def __init__(self, name, args, kwargs, shape, rng):
        self.op = bind(OPS[name], list(args), dict(kwargs))
        per_example = floats(*shape[1:])
        self.params = self.op.init(rng, per_example)
        self.x = rng.standard_normal(shape, dtype=np.float32)
        y = self.op.forward(Ctx(np, training=True), self.x, **self.params)
        self.gy = rng.standard_normal(y.shape, dtype=np.float32)
        self.fn = torch_twin(name, args, kwargs)
        self.tx = torch.from_numpy(self.x.copy()).requires_grad_()
        self.tp = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in self.params.items()}
        self.tgy = torch.from_numpy(self.gy.copy())

    def ours(self, backward: bool):
        ctx = Ctx(np, training=True)
        y = self.op.forward(ctx, self.x, **self.params)
        if backward:
            self.op.backward(ctx, self.gy)
        return y

    def theirs(self, backward: bool):
        y = self.fn(self.tx, self.tp)
        if backward:
            y.backward(self.tgy)
            self.tx.grad = None
            for p in self.tp.values():
                p.grad = None
        return y


def seconds(fn, backward: bool, number: int) -> float:
    """Mean seconds per call over `number` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn(backward)
    return (time.perf_counter() - start) / number


def calls_for(fn, backward: bool, budget: float = 0.05) -> int:
    """Calls per timing so that one timing lasts about `budget` seconds."""
    fn(backward)  # warm up: allocator, BLAS threads
    once = seconds(fn, backward, 1)
    return max(1, int(budget / max(once, 1e-6)))


def bench(layer: Layer, repeats: int, settle_s: float) -> dict[str, float]:
    """Median seconds per call: netdsl and torch, forward and forward+backward, interleaved."""
    runs = {key: [] for key in ("ours_f", "theirs_f", "ours_fb", "theirs_fb")}
    numbers = {(side, bw): calls_for(getattr(layer, side), bw)
               for side in ("ours", "theirs") for bw in (False, True)}
    for _ in range(repeats):
        for bw, tag in ((False, "f"), (True, "fb")):
            for side in ("ours", "theirs"):
                fn = getattr(layer, side)
                settle(lambda: fn(bw), settle_s)
                runs[f"{side}_{tag}"].append(seconds(fn, bw, numbers[side, bw]))
    return {key: statistics.median(times) for key, times in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--only", help="one workload: lenet, resnet or inception")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="pause before each timed block, seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    malloc = fix_malloc()
    rng = np.random.default_rng(0)
    blas, blas_threads = blas_pool()
    print(f"# {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), "
          f"NumPy {np.__version__} ({blas}, {blas_threads} threads), torch {torch.__version__} "
          f"({args.threads} threads), float32, {malloc}, medians of {args.repeats}")
    print("| workload | layer | fwd ms | torch | ratio | fwd+bwd ms | torch | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for workload, label, name, pos, kw, shape in LAYERS:
        if args.only and workload != args.only:
            continue
        t = bench(Layer(name, pos, kw, shape, rng), args.repeats, args.settle)
        rf, rfb = t["ours_f"] / t["theirs_f"], t["ours_fb"] / t["theirs_fb"]
        ratios.append((rf, rfb))
        print(f"| {workload} | {label} | {t['ours_f'] * 1e3:.2f} | {t['theirs_f'] * 1e3:.2f} | "
              f"{rf:.2f} | {t['ours_fb'] * 1e3:.2f} | {t['theirs_fb'] * 1e3:.2f} | {rfb:.2f} |")
    geo = [statistics.geometric_mean(r) for r in zip(*ratios)]
    print(f"| all | geometric mean | | | {geo[0]:.2f} | | | {geo[1]:.2f} |")


if __name__ == "__main__":
    main()
