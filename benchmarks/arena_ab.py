"""The arena (netdsl/lower/arena.py) and the slabs' kept scratch against the old paths.

    python benchmarks/arena_ab.py [--only W1,W2,W3] [--pairs 40] [--threads 2]
                                  [--part arena|scratch] [--keep]

For each workload, two trainers of the native target in one process, from the same
parameters and batch. `--part arena`: "new" keeps its values in the arena
(Executor.arena_values, planned as NETDSL_ARENA=1 plans it), "old" allocates each at its
step (the default path).
`--part scratch`: one trainer, whose steps alternate between the convolutions' slab
scratch kept per thread between calls (runtime.native.slabs.KEEP_SCRATCH) and made at
each call. The steps alternate, the order within a pair swapped every pair, so that the
machine's load falls on both alike. Prints per workload the medians of wall and process
CPU time a step, in how many pairs the new step was the shorter (by each), the traced
peak of building a trainer and two steps each way (as train_speed.py measures it), and
the load average before and after; with --keep the raw numbers go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import tracemalloc

import train_speed
from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.driver import check_file
from netdsl.lower import lower
from netdsl.lower import memory as memory_plan
from netdsl.runtime.init import initial_params
from netdsl.runtime.native import slabs


def _trainer(lowered, workload, arena: bool):
    params = initial_params(lowered.built, "he", seed=train_speed.SEED)
    x, y, _ = train_speed.make_batch(workload)
    trainer = train_speed.NetdslTrainer(lowered, params, (x, y))
    trainer.executor.arena_values = arena
    return trainer


def _sides(lowered, workload, part: str) -> dict:
    """name -> (trainer, slabs.KEEP_SCRATCH while it steps)."""
    if part == "arena":
        return {"new": (_trainer(lowered, workload, True), slabs.KEEP_SCRATCH),
                "old": (_trainer(lowered, workload, False), slabs.KEEP_SCRATCH)}
    trainer = _trainer(lowered, workload, True)
    return {"new": (trainer, True), "old": (trainer, False)}


def _step(trainer, keep: bool) -> tuple[float, float]:
    slabs.KEEP_SCRATCH = keep
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def _peak(lowered, workload, part: str, new: bool) -> int:
    """Traced peak bytes of building a trainer and two steps."""
    gc.collect()
    slabs.release_scratch()
    tracemalloc.start()
    try:
        arena = new or part != "arena"
        slabs.KEEP_SCRATCH = new if part == "scratch" else slabs.KEEP_SCRATCH
        trainer = _trainer(lowered, workload, arena)
        for _ in range(2):
            trainer.step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        slabs.release_scratch()


def run(workload, pairs: int, part: str) -> dict:
    previous = slabs.KEEP_SCRATCH
    try:
        lowered = lower(check_file(str(train_speed.SPECS / workload.spec)), "native")
        sides = _sides(lowered, workload, part)
        for name, (trainer, keep) in sides.items():   # warm-up: kernels, timed choices
            for _ in range(3):
                _step(trainer, keep)
        peaks = {"new": [], "old": []}
        for _ in range(2):
            for name in ("new", "old"):
                peaks[name].append(_peak(lowered, workload, part, name == "new"))
        times = {name: {"wall": [], "cpu": []} for name in sides}
        won = won_cpu = 0
        for i in range(pairs):
            order = ("new", "old") if i % 2 == 0 else ("old", "new")
            took = {}
            for name in order:
                took[name] = _step(*sides[name])
                times[name]["wall"].append(took[name][0])
                times[name]["cpu"].append(took[name][1])
            won += took["new"][0] < took["old"][0]
            won_cpu += took["new"][1] < took["old"][1]
    finally:
        slabs.KEEP_SCRATCH = previous
    medians = {name: {k: statistics.median(v) * 1e3 for k, v in t.items()}
               for name, t in times.items()}
    return {"medians_ms": medians, "won": won, "won_cpu": won_cpu, "raw_s": times,
            "peak_bytes": {name: min(p) for name, p in peaks.items()}, "peaks_raw": peaks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W1,W2,W3")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--part", choices=("arena", "scratch"), default="arena")
    parser.add_argument("--keep", action="store_true", help="file the raw numbers")
    args = parser.parse_args()
    memory_plan.ARENA = True   # planned for the side that uses it; the other does not
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    wanted = args.only.split(",")
    print(f"{args.threads} threads, {malloc}, part {args.part}, {args.pairs} pairs, "
          f"{os.cpu_count()} CPUs")
    results = {}
    for workload in train_speed.WORKLOADS:
        if workload.id not in wanted:
            continue
        before = load_average()
        result = run(workload, args.pairs, args.part)
        after = load_average()
        result["load"] = [before, after]
        results[workload.id] = result
        new, old = result["medians_ms"]["new"], result["medians_ms"]["old"]
        peak = result["peak_bytes"]
        print(f"{workload.id}: new {new['wall']:.2f} ms (cpu {new['cpu']:.2f}), "
              f"old {old['wall']:.2f} ms (cpu {old['cpu']:.2f}); new shorter in "
              f"{result['won']} of {args.pairs} pairs (cpu: {result['won_cpu']}); peak "
              f"new {peak['new'] / 2**20:.3f} MiB, old {peak['old'] / 2**20:.3f} MiB; load "
              f"{before:.2f} -> {after:.2f}")
    keep_results(f"arena_ab-{args.part}", {"threads": args.threads, "pairs": args.pairs,
                                           "malloc": malloc, "workloads": results},
                 keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
