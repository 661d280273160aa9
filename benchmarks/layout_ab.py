"""The layout pass's choice against NCHW throughout: each region's measured costs, the
layout `auto` picks, and the training step under nchw, auto and nhwc alternating.

    python benchmarks/layout_ab.py [--only W3,W6] [--pairs 20] [--threads 2] [--keep]

For each workload, first the regions' costs are measured (runtime.layout_costs: every
step of a region timed in training steps of both lowerings, kept in layout_costs.json)
and printed with the layout `auto` then chooses. Then three trainers of the native
target in one process, from the same parameters and batch: "nchw" (no layout change,
the path before the pass), "auto" (the pass's choice) and "nhwc" (every region NHWC).
They run in turn, one step each, the order rotated every round, so that the machine's
load falls on all alike. Prints per side the medians of wall and process CPU time a
step, and in how many rounds auto and nhwc were shorter than nchw (by each); the load
average before and after. `--keep` writes the raw numbers to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import train_speed
from isolation import keep_results
from netdsl.driver import check_file
from netdsl.lower import lower
from netdsl.runtime import layout_costs

SIDES = ("nchw", "auto", "nhwc")


def _trainer(network, workload, mode: str):
    lowered = lower(network, "native", layout_mode=mode)
    return lowered, train_speed.warmed_trainer(workload, lowered=lowered, steps=0)


def _step(trainer) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(workload, rounds: int) -> dict:
    network = check_file(str(train_speed.SPECS / workload.spec))
    began = time.perf_counter()
    layout_costs.measure(network, "native", batch=workload.batch)
    measured = time.perf_counter() - began
    sides = {mode: _trainer(network, workload, mode) for mode in SIDES}
    regions = [{"steps": len(r.steps), "first": r.steps[0], "last": r.steps[-1],
                "costs_ms": {k: v * 1e3 for k, v in (r.costs or {}).items()},
                "layout": r.layout, "why": r.why}
               for r in sides["auto"][0].laid_out.regions]
    for _, trainer in sides.values():   # warm-up: kernels, timed choices
        for _ in range(3):
            _step(trainer)
    times = {name: {"wall": [], "cpu": []} for name in SIDES}
    won = {name: {"wall": 0, "cpu": 0} for name in SIDES[1:]}
    for i in range(rounds):
        order = SIDES[i % 3:] + SIDES[:i % 3]
        took = {}
        for name in order:
            took[name] = _step(sides[name][1])
            times[name]["wall"].append(took[name][0])
            times[name]["cpu"].append(took[name][1])
        for name in SIDES[1:]:
            won[name]["wall"] += took[name][0] < took["nchw"][0]
            won[name]["cpu"] += took[name][1] < took["nchw"][1]
    medians = {name: {k: statistics.median(v) * 1e3 for k, v in t.items()}
               for name, t in times.items()}
    return {"regions": regions, "measure_s": measured, "medians_ms": medians, "won": won,
            "raw_s": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W3,W6")
    parser.add_argument("--pairs", type=int, default=20, help="rounds of the three sides")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="raw numbers to benchmarks/results")
    args = parser.parse_args()

    def show(workload, result):
        print(f"{workload.id}: costs measured in {result['measure_s']:.1f} s")
        for region in result["regions"]:
            costs = ", ".join(f"{k} {v:.2f} ms" for k, v in region["costs_ms"].items())
            print(f"  region {region['first']}..{region['last']} ({region['steps']} steps): "
                  f"{costs or 'unmeasured'} -> {region['layout']} ({region['why']})")
        m, won = result["medians_ms"], result["won"]
        for name in SIDES:
            line = f"  {name}: {m[name]['wall']:.2f} ms (cpu {m[name]['cpu']:.2f})"
            if name in won:
                line += (f"; shorter than nchw in {won[name]['wall']} of {args.pairs} "
                         f"(cpu: {won[name]['cpu']})")
            print(line)
        print("  load {:.2f} -> {:.2f}".format(*result["load"]))

    kept = train_speed.each_workload(args.only, args.threads, args.pairs, run, show)
    if args.keep:
        print(f"raw numbers: {keep_results('layout_ab', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
