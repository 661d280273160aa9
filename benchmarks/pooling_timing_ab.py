"""A max pooling's first call on the native target, which times its forward kernels,
with the kernels wider than the compiler's vectors timed too (`wide`:
NETDSL_POOLING_WIDE_TIMED=1, as before) and without them (`fitting`: the default),
alternating in one process.

Each round forgets the shapes' choices and runs one first call of each path on each
of W2's and W6's pooling shapes, the order turned every round. Per path: the median
wall-clock and process CPU time of a first call (the timing and its result), in how
many rounds `fitting` was the shorter, and the kernel each path kept per shape (the
steady state is the same where they keep the same kernel). The load average is
printed; with --keep the raw numbers go to benchmarks/results/.

    python benchmarks/pooling_timing_ab.py [--rounds 40] [--keep]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import numpy as np

from isolation import fix_malloc, keep_results, load_average
from netdsl.ops.pool import MaxPool
from netdsl.runtime.native import pooling, toolchain
from netdsl.types import TensorType

# (name, input shape, kernel, stride, pad): W2's two poolings at batch 64, W6's 3x3
# stride-1 pooling at batch 16
SHAPES = [("W2 pool1", (64, 6, 28, 28), 2, 2, 0), ("W2 pool2", (64, 16, 10, 10), 2, 2, 0),
          ("W6 pool 3x3", (16, 64, 28, 28), 3, 1, 1)]


def first_call(x, geometry, wide: bool) -> tuple[float, float, str]:
    """(wall ms, CPU ms, kernel kept) of a shape's first call with `wide` as the switch."""
    pooling.WIDE_TIMED_ANYWHERE = wide
    pooling._chosen.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    pooling.forward(x, geometry)
    took = (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3
    [kept] = pooling._chosen.values()
    return (*took, kept)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    fix_malloc()
    rng = np.random.default_rng(0)
    problems = []
    for name, shape, k, s, p in SHAPES:
        geometry = MaxPool(kernel=k, stride=s, pad=p, ceil=False).geometry(TensorType(shape[1:]))
        problems.append((name, rng.standard_normal(shape).astype("float32"), geometry))
    for _, x, g in problems:   # kernels compiled and warm
        first_call(x, g, True)
    before = load_average()
    paths = {"fitting": False, "wide": True}
    times = {name: {path: {"wall": [], "cpu": []} for path in paths} for name, *_ in problems}
    kept = {name: {path: Counter() for path in paths} for name, *_ in problems}
    won = {name: {"wall": 0, "cpu": 0} for name, *_ in problems}
    for i in range(args.rounds):
        order = list(paths)[i % 2:] + list(paths)[:i % 2]
        for name, x, g in problems:
            took = {}
            for path in order:
                wall, cpu, kernel = first_call(x, g, paths[path])
                took[path] = wall, cpu
                times[name][path]["wall"].append(wall)
                times[name][path]["cpu"].append(cpu)
                kept[name][path][kernel] += 1
            won[name]["wall"] += took["fitting"][0] < took["wide"][0]
            won[name]["cpu"] += took["fitting"][1] < took["wide"][1]
    after = load_average()
    print(f"vector bytes {toolchain.vector_bytes()}; load {before:.2f} -> {after:.2f}; "
          f"{args.rounds} rounds")
    medians = {}
    for name, *_ in problems:
        medians[name] = {path: {k: statistics.median(v) for k, v in t.items()}
                         for path, t in times[name].items()}
        m = medians[name]
        print(f"{name}: first call fitting {m['fitting']['wall']:.2f} ms "
              f"(CPU {m['fitting']['cpu']:.2f}), wide {m['wide']['wall']:.2f} ms "
              f"(CPU {m['wide']['cpu']:.2f}); fitting shorter in {won[name]['wall']} "
              f"(CPU {won[name]['cpu']}) of {args.rounds}; kept: fitting "
              f"{dict(kept[name]['fitting'])}, wide {dict(kept[name]['wide'])}")
    keep_results("pooling_timing_ab", {
        "load": [before, after], "vector_bytes": toolchain.vector_bytes(),
        "rounds": args.rounds, "medians_ms": medians, "fitting_won": won,
        "kept": {n: {p: dict(c) for p, c in k.items()} for n, k in kept.items()},
        "raw_ms": times}, keep=args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
