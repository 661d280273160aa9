"""A convolution's relu in its output write, and max pooling in C, against the old paths.

    python benchmarks/conv_chain_ab.py [--only W2,W6] [--pairs 40] [--threads 2]
                                       [--part both|chain|pool]

For each workload, two trainers of the native target in one process, from the same
parameters and batch: "new" (the relus joined to their convolutions,
lower.conv_chain.ABSORB, and max pooling compiled, runtime.native.pooling.COMPILED) and
"old" (both off; `--part` switches one of them only). They alternate every step, the
order within a pair swapped every pair, so that the machine's load falls on both alike.
Prints per workload the medians of wall and process CPU time a step, and in how many
pairs the new step was the shorter (by each); the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import train_speed
from isolation import fix_malloc, limit_blas, load_average
from netdsl.lower import conv_chain
from netdsl.runtime.native import pooling


def _trainer(workload, absorb: bool):
    previous, conv_chain.ABSORB = conv_chain.ABSORB, absorb
    try:   # the switch is the lowering's; each side is warmed below
        return train_speed.warmed_trainer(workload, steps=0)
    finally:
        conv_chain.ABSORB = previous


def _step(trainer, compiled_pooling: bool) -> tuple[float, float]:
    pooling.COMPILED = compiled_pooling
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(workload, pairs: int, part: str) -> dict:
    previous = pooling.COMPILED
    try:
        return _alternate(workload, pairs, part)
    finally:
        pooling.COMPILED = previous


def _alternate(workload, pairs: int, part: str) -> dict:
    chain_new = part in ("both", "chain")
    pool_new = part in ("both", "pool")
    sides = {"new": (_trainer(workload, chain_new), pool_new),
             "old": (_trainer(workload, False), False)}
    for trainer, compiled in sides.values():   # warm-up: kernels, timed choices
        for _ in range(3):
            _step(trainer, compiled)
    times = {name: {"wall": [], "cpu": []} for name in sides}
    won = won_cpu = 0
    for i in range(pairs):
        order = ("new", "old") if i % 2 == 0 else ("old", "new")
        took = {}
        for name in order:
            trainer, compiled = sides[name]
            took[name] = _step(trainer, compiled)
            times[name]["wall"].append(took[name][0])
            times[name]["cpu"].append(took[name][1])
        won += took["new"][0] < took["old"][0]
        won_cpu += took["new"][1] < took["old"][1]
    return {name: {k: statistics.median(v) * 1e3 for k, v in t.items()}
            for name, t in times.items()} | {"won": won, "won_cpu": won_cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W2,W6")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--part", choices=("both", "chain", "pool"), default="both")
    args = parser.parse_args()
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    wanted = args.only.split(",")
    print(f"{args.threads} threads, {malloc}, part {args.part}, {args.pairs} pairs, "
          f"{os.cpu_count()} CPUs")
    for workload in train_speed.WORKLOADS:
        if workload.id not in wanted:
            continue
        before = load_average()
        result = run(workload, args.pairs, args.part)
        after = load_average()
        new, old = result["new"], result["old"]
        print(f"{workload.id}: new {new['wall']:.2f} ms (cpu {new['cpu']:.2f}), "
              f"old {old['wall']:.2f} ms (cpu {old['cpu']:.2f}); new shorter in "
              f"{result['won']} of {args.pairs} pairs (cpu: {result['won_cpu']}); load "
              f"{before:.2f} -> {after:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
