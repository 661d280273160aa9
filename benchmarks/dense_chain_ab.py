"""A dense layer's relu joined to it (bias and relu in one pass after the GEMM, the mask
and the bias's gradient in one pass before backward's GEMMs) against the old path.

    python benchmarks/dense_chain_ab.py [--only W1] [--pairs 200] [--threads 2] [--keep]

For each workload, two trainers of the native target in one process, from the same
parameters and batch: "new" (the chains joined, lower.conv_chain.GEMM_CHAINS:
NETDSL_NATIVE_DENSE=1, their passes compiled) and "old" (apart: the default); either
multiplies by the GEMMs chosen per shape (runtime.native.dense). They alternate every
step, the order rotated every round, so that the machine's load falls on both alike. Prints per workload the medians of wall and process CPU time a step, and in how
many rounds each side was the shorter against old (by each); the load average before
and after. With --keep the raw per-step numbers go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import train_speed
from isolation import keep_results
from netdsl.lower import conv_chain


def _trainer(workload, joined: bool):
    previous = conv_chain.GEMM_CHAINS
    conv_chain.GEMM_CHAINS = joined
    try:   # the switch is the lowering's; each side is warmed below
        return train_speed.warmed_trainer(workload, steps=0)
    finally:
        conv_chain.GEMM_CHAINS = previous


def _step(trainer) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(workload, pairs: int) -> dict:
    sides = {"new": _trainer(workload, True), "old": _trainer(workload, False)}
    for side in sides.values():   # warm-up: kernels compiled
        for _ in range(5):
            _step(side)
    names = list(sides)
    times = {name: {"wall": [], "cpu": []} for name in sides}
    won = {name: {"wall": 0, "cpu": 0} for name in sides if name != "old"}
    for i in range(pairs):
        order = names[i % len(names):] + names[:i % len(names)]
        took = {}
        for name in order:
            took[name] = _step(sides[name])
            times[name]["wall"].append(took[name][0])
            times[name]["cpu"].append(took[name][1])
        for name in won:
            won[name]["wall"] += took[name][0] < took["old"][0]
            won[name]["cpu"] += took[name][1] < took["old"][1]
    return {"medians_ms": {name: {k: statistics.median(v) * 1e3 for k, v in t.items()}
                           for name, t in times.items()},
            "won": won, "raw_s": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W1")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    def show(workload, result):
        medians = result["medians_ms"]
        line = ", ".join(f"{name} {m['wall']:.3f} ms (cpu {m['cpu']:.3f})"
                         for name, m in medians.items())
        wins = ", ".join(f"{name} shorter than old in {w['wall']} of {args.pairs} "
                         f"(cpu: {w['cpu']})" for name, w in result["won"].items())
        before, after = result["load"]
        print(f"{workload.id}: {line}; {wins}; load {before:.2f} -> {after:.2f}")

    kept = train_speed.each_workload(args.only, args.threads, args.pairs, run, show)
    keep_results("dense_chain_ab", kept, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
