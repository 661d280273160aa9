"""A switch of W6's (Inception's) native step, on against off, in one process.

    python benchmarks/inception_ab.py [--only W6] [--pairs 30] [--threads 2]
                                      [--switch pooling-timed] [--keep]

One trainer of the native target; before each step a module-level switch is set on
("new") or off ("old"), the two alternating every step and the order swapped every
pair, so that the machine's load falls on both alike. The switches:

- `pooling-timed`: max pooling's forward kernel timed per shape on its first call
  (runtime.native.pooling.TIMED, NETDSL_POOLING_TIMED) against the widest vector a
  row's windows fill;
- `pooling-split`: max pooling split over the host's threads from 4 MiB (W6's first
  module's 9.6 MB pooling too) against from runtime.native.pooling.SPLIT_BYTES.

Prints per workload the medians of wall and process CPU time a step, in how many pairs
the new step was the shorter (by each), and the load average before and after; `--keep`
writes the raw numbers to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import train_speed
from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.runtime.native import pooling


def _set_pooling_timed(on: bool) -> None:
    pooling.TIMED = on


# the old threshold, and the new side's of `pooling-split`
_POOLING_SPLIT = {False: pooling.SPLIT_BYTES, True: 4 << 20}


def _set_pooling_split(on: bool) -> None:
    pooling.SPLIT_BYTES = _POOLING_SPLIT[on]


SWITCHES = {"pooling-timed": (_set_pooling_timed, lambda: pooling.TIMED),
            "pooling-split": (_set_pooling_split,
                              lambda: pooling.SPLIT_BYTES == _POOLING_SPLIT[True])}


def _trainer(workload):
    return train_speed.warmed_trainer(workload, steps=0)   # warmed below, each side


def _step(trainer, setter, on: bool) -> tuple[float, float]:
    setter(on)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def run(workload, switch: str, pairs: int) -> dict:
    setter, current = SWITCHES[switch]
    previous = current()
    try:
        trainer = _trainer(workload)
        for on in (True, False, True, False):   # warm-up: kernels built, choices timed
            _step(trainer, setter, on)
        times = {side: {"wall": [], "cpu": []} for side in ("new", "old")}
        won = won_cpu = 0
        for i in range(pairs):
            order = ("new", "old") if i % 2 == 0 else ("old", "new")
            took = {}
            for side in order:
                took[side] = _step(trainer, setter, side == "new")
                times[side]["wall"].append(took[side][0])
                times[side]["cpu"].append(took[side][1])
            won += took["new"][0] < took["old"][0]
            won_cpu += took["new"][1] < took["old"][1]
    finally:
        setter(previous)
    return {"median_ms": {side: {k: statistics.median(v) for k, v in t.items()}
                          for side, t in times.items()},
            "won": won, "won_cpu": won_cpu, "pairs": pairs, "raw_ms": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W6")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--switch", choices=tuple(SWITCHES), default="pooling-timed")
    parser.add_argument("--keep", action="store_true", help="raw numbers to benchmarks/results")
    args = parser.parse_args()
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    print(f"{args.threads} threads, {malloc}, switch {args.switch}, {args.pairs} pairs, "
          f"{os.cpu_count()} CPUs")
    kept = {}
    for workload in train_speed.WORKLOADS:
        if workload.id not in args.only.split(","):
            continue
        before = load_average()
        result = run(workload, args.switch, args.pairs)
        after = load_average()
        new, old = result["median_ms"]["new"], result["median_ms"]["old"]
        print(f"{workload.id}: new {new['wall']:.2f} ms (cpu {new['cpu']:.2f}), "
              f"old {old['wall']:.2f} ms (cpu {old['cpu']:.2f}); new shorter in "
              f"{result['won']} of {args.pairs} pairs (cpu: {result['won_cpu']}); load "
              f"{before:.2f} -> {after:.2f}")
        kept[workload.id] = {**result, "switch": args.switch, "threads": args.threads,
                             "load": [before, after]}
    if args.keep:
        print(f"raw numbers: {keep_results('inception_ab', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
