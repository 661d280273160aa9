"""W1's dense GEMMs one by one: OpenBLAS on one thread, OpenBLAS on two, and the generated
C's own GEMM (runtime.native.dense, its B operand packed at every call) on the calling
thread or split over the C pool in 2 parts.

W1 is 64-256-256-10 at batch 128: per layer the forward's x W^T, the weight's gradient
gy^T x and the input's gy W (the first layer's is not needed in training, listed
anyway). First, before any GEMM runs on two threads, --fresh-rounds rounds of the
one-thread paths alone: OpenBLAS 0.3.31's one-thread SGEMM was about three times
slower in a process that had not yet run a GEMM on two threads (docs/cpu.md). Then
each round times a block of calls of every path in turn (the order rotated every
round), and keeps each block's median call; per shape and path the median over the
rounds and in how many rounds each path was the fastest. OpenBLAS's workers are
parked before each block of the own GEMM's on two parts. The load average is printed
before and after; with --keep the raw numbers go to benchmarks/results/.

    python benchmarks/dense_gemm_shapes.py [--rounds 30] [--calls 50] [--fresh-rounds 5]
                                           [--keep]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from isolation import fix_malloc, keep_results, load_average
from netdsl.runtime.native import dense
from netdsl.runtime.native.pool import park_blas_workers

BATCH, WIDTHS = 128, (64, 256, 256, 10)


def shapes(rng) -> dict:
    """name -> (numpy's product, the own GEMM's call with `parts`)."""
    made = {}
    for layer, (n_in, n_out) in enumerate(zip(WIDTHS, WIDTHS[1:]), 1):
        x = rng.standard_normal((BATCH, n_in), dtype=np.float32)
        w = rng.standard_normal((n_out, n_in), dtype=np.float32)
        gy = rng.standard_normal((BATCH, n_out), dtype=np.float32)
        y = np.empty((BATCH, n_out), np.float32)
        dw = np.empty((n_out, n_in), np.float32)
        dx = np.empty((BATCH, n_in), np.float32)
        made[f"fwd{layer} {BATCH}x{n_in}x{n_out}"] = (
            lambda x=x, w=w, y=y: np.matmul(x, w.T, out=y),
            lambda parts, x=x, w=w, y=y: dense.matmul(x, w.T, y, parts))
        made[f"dW{layer} {n_out}x{BATCH}x{n_in}"] = (
            lambda gy=gy, x=x, dw=dw: np.matmul(gy.T, x, out=dw),
            lambda parts, gy=gy, x=x, dw=dw: dense.matmul(gy.T, x, dw, parts))
        made[f"dx{layer} {BATCH}x{n_out}x{n_in}"] = (
            lambda gy=gy, w=w, dx=dx: np.matmul(gy, w, out=dx),
            lambda parts, gy=gy, w=w, dx=dx: dense.matmul(gy, w, dx, parts))
        # the products must agree
        np.testing.assert_allclose(dense.matmul(x, w.T, None, 2), x @ w.T, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dense.matmul(gy.T, x, None, 2), gy.T @ x, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dense.matmul(gy, w, None, 2), gy @ w, rtol=1e-4, atol=1e-3)
    return made


def block(call, calls: int) -> float:
    """The median of `calls` timed calls, in microseconds."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--fresh-rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    fix_malloc()
    limiter = threadpool_limits(limits=1, user_api="blas")   # noqa: F841 (kept)
    rng = np.random.default_rng(0)
    made = shapes(rng)   # the own GEMM's checks: on one thread, or the pool's
    load_before = load_average()
    fresh = _fresh(made, args)
    paths = {
        "blas1": lambda numpy, own: _with_blas(1, numpy),
        "blas2": lambda numpy, own: _with_blas(2, numpy),
        "own1": lambda numpy, own: _with_blas(1, lambda: own(1)),
        "own2": lambda numpy, own: _parked(lambda: own(2)),
    }
    results = {name: {path: [] for path in paths} for name in made}
    for r in range(args.rounds):
        order = list(paths)[r % len(paths):] + list(paths)[:r % len(paths)]
        for name, calls in made.items():
            for path in order:
                results[name][path].append(paths[path](*calls)(args.calls))
    load_after = load_average()
    print(f"load average {load_before:.2f} -> {load_after:.2f}; {args.rounds} rounds of "
          f"{args.calls} calls; medians in us (rounds won)")
    print(f"{'shape':24s}" + "".join(f"{p:>15s}" for p in paths))
    summary = {}
    for name, by_path in results.items():
        wins = {p: 0 for p in paths}
        for r in range(args.rounds):
            wins[min(paths, key=lambda p: by_path[p][r])] += 1
        med = {p: statistics.median(v) for p, v in by_path.items()}
        summary[name] = {"median_us": med, "wins": wins}
        print(f"{name:24s}" + "".join(f"{med[p]:10.1f} ({wins[p]:2d})" for p in paths))
    keep_results("dense_gemm_shapes", {"load": [load_before, load_after], "rounds": args.rounds,
                                       "calls": args.calls, "summary": summary,
                                       "fresh": fresh, "raw": results}, keep=args.keep)


def _fresh(made: dict, args) -> dict:
    """Per shape the medians of OpenBLAS and the own GEMM on one thread, alternating,
    before any GEMM of this process ran on two threads."""
    if not args.fresh_rounds:
        return {}
    times = {name: {"blas1": [], "own1": []} for name in made}
    for r in range(args.fresh_rounds):
        for name, (numpy, own) in made.items():
            sides = [("blas1", numpy), ("own1", lambda: own(1))]
            for path, call in sides[r % 2:] + sides[:r % 2]:
                call()
                times[name][path].append(block(call, args.calls))
    print(f"before any two-thread GEMM, one thread, {args.fresh_rounds} rounds: medians in us")
    fresh = {}
    for name, by_path in times.items():
        fresh[name] = {p: statistics.median(v) for p, v in by_path.items()}
        print(f"{name:24s}" + "".join(f"{p:>7s} {m:9.1f}" for p, m in fresh[name].items()))
    return fresh


def _with_blas(threads: int, call):
    def run(calls: int) -> float:
        with threadpool_limits(limits=threads, user_api="blas"):
            call()   # warm
            return block(call, calls)
    return run


def _parked(call):
    def run(calls: int) -> float:
        park_blas_workers()
        call()
        return block(call, calls)
    return run


if __name__ == "__main__":
    main()
