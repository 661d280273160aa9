"""Where a dense network's step goes outside its GEMMs, with the dense layers' chains joined
(NETDSL_NATIVE_DENSE=1) and apart, the two alternating in one process.

    python benchmarks/dense_parts_ab.py [--only W1] [--steps 500] [--threads 1] [--keep]

Two trainers of the native target from the same parameters and batch, one joined and one
apart (as dense_chain_ab.py), take their steps in turn, the order swapped every round.
Every op's forward and backward and the optimiser's update are timed around the call
(op_profile.py's self times), and each dense GEMM apart from its op (the seam ops.linear
.dense_gemm): so "dense" and "dense_relu" are a layer's bias, chain and seam without its
products, "GEMM" all of them, and "executor" what no timed call covers. The clock is the
thread's CPU time, which other jobs on the machine inflate less than the wall's. Prints
microseconds a step per label and side, and the load average before and after; with
--keep the totals go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time

import op_profile
import train_speed
from dense_chain_ab import _trainer
from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.ops import linear


def _timed_gemms(timers: dict, current: list) -> None:
    """Each dense GEMM counted as "GEMM" on the timer of the side taking its step."""
    provided = linear.dense_gemm.provided["numpy"]

    def gemm(*args, **kwargs):
        return timers[current[0]].wrap("GEMM", provided)(*args, **kwargs)

    linear.dense_gemm.provided["numpy"] = gemm


def run(workload, steps: int) -> dict:
    sides = {"joined": _trainer(workload, True), "apart": _trainer(workload, False)}
    timers = {name: op_profile.SelfTimer() for name in sides}
    current = [None]
    _timed_gemms(timers, current)
    for name, trainer in sides.items():
        op_profile.instrument(trainer.executor, trainer.optimizer, timers[name])
    for _ in range(10):   # warm-up: kernels compiled, GEMMs chosen
        for name, trainer in sides.items():
            current[0] = name
            trainer.step()
    for timer in timers.values():
        timer.seconds.clear()
    total = collections.Counter()
    names = list(sides)
    for i in range(steps):
        for name in (names if i % 2 else names[::-1]):
            current[0] = name
            start = time.thread_time()
            sides[name].step()
            total[name] += time.thread_time() - start
    result = {}
    for name, timer in timers.items():
        labels = {label: seconds / steps * 1e6 for label, seconds in timer.seconds.items()}
        labels["executor"] = (total[name] - sum(timer.seconds.values())) / steps * 1e6
        result[name] = {"step_us": total[name] / steps * 1e6, "labels_us": labels}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W1")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    # the op timers read the thread's CPU clock
    op_profile.time.perf_counter = time.thread_time
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    print(f"{args.threads} threads, {malloc}, {args.steps} steps a side, thread CPU time")
    kept = {"threads": args.threads, "steps": args.steps, "workloads": {}}
    for workload in train_speed.WORKLOADS:
        if workload.id not in args.only.split(","):
            continue
        before = load_average()
        result = run(workload, args.steps)
        after = load_average()
        kept["workloads"][workload.id] = {**result, "load": [before, after]}
        print(f"\n{workload.id} (load {before:.2f} -> {after:.2f}), µs a step\n")
        labels = sorted({k for side in result.values() for k in side["labels_us"]})
        print("| | " + " | ".join(result) + " |\n|---|" + "---|" * len(result))
        for label in labels:
            print(f"| {label} | " + " | ".join(
                f"{side['labels_us'].get(label, 0.0):.1f}" for side in result.values()) + " |")
        print("| step | " + " | ".join(f"{side['step_us']:.1f}" for side in result.values())
              + " |")
    keep_results("dense_parts_ab", kept, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
