"""BLAS's thread count read through OpenBLAS's own getter (runtime.host's DIRECT_COUNT)
against threadpoolctl's query at every call (NETDSL_BLAS_COUNT_DIRECT=0), W1's training
step on the native target in one process.

    python benchmarks/thread_count_ab.py [--threads 2] [--pairs 300] [--keep]

One trainer takes its steps with the count read each way in turn, the order rotated
every round, so that the machine's load falls on both alike. W1's step reads the count
at each of its eight dense GEMMs (runtime.native.dense's key). Prints the medians of
the calling thread's CPU time, the process's and the wall clock a step, in how many
rounds the direct read was the shorter by each, and the load average before and after;
with --keep the raw numbers go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import train_speed
from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.runtime import host

CLOCKS = {"thread": time.thread_time, "cpu": time.process_time, "wall": time.perf_counter}


def _trainer(workload):
    return train_speed.warmed_trainer(workload, steps=0)   # warmed below, each side


def _queried() -> int:
    """The count as before: threadpoolctl's query of every BLAS library."""
    return max((c.num_threads for c in host._blas_controllers()), default=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    [w1] = [w for w in train_speed.WORKLOADS if w.id == "W1"]
    host.DIRECT_COUNT, host._count = True, None
    getters = {"direct": host._counter(), "threadpoolctl": _queried}
    trainer = _trainer(w1)
    for name in getters:   # warm-up: kernels compiled, choices timed
        host._count = getters[name]
        for _ in range(5):
            trainer.step()
    print(f"W1, {args.threads} threads, {malloc}, {args.pairs} rounds")
    before = load_average()
    names = list(getters)
    times = {name: {clock: [] for clock in CLOCKS} for name in names}
    won = dict.fromkeys(CLOCKS, 0)
    for i in range(args.pairs):
        took = {}
        for name in names[i % 2:] + names[:i % 2]:
            host._count = getters[name]
            start = {clock: read() for clock, read in CLOCKS.items()}
            trainer.step()
            took[name] = {clock: read() - start[clock] for clock, read in CLOCKS.items()}
            for clock, seconds in took[name].items():
                times[name][clock].append(seconds)
        for clock in CLOCKS:
            won[clock] += took["direct"][clock] < took["threadpoolctl"][clock]
    host._count = None
    kept = {"threads": args.threads, "rounds": args.pairs,
            "load": [before, load_average()],
            "medians_ms": {name: {clock: statistics.median(v) * 1e3 for clock, v in t.items()}
                           for name, t in times.items()},
            "direct_won": won, "raw_s": times}
    m = kept["medians_ms"]
    for clock in CLOCKS:
        print(f"{clock}: direct {m['direct'][clock]:.3f} ms, threadpoolctl "
              f"{m['threadpoolctl'][clock]:.3f} ms; direct shorter in {won[clock]} of "
              f"{args.pairs}")
    print(f"load {kept['load'][0]:.2f} -> {kept['load'][1]:.2f}")
    keep_results("thread_count_ab", kept, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
