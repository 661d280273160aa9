"""The native kernels' slabs on the C pool against the Python threads, and the
thresholds below which a kernel stays whole.

    python benchmarks/slabs_ab.py [--only W2,W3,W6] [--pairs 40] [--threads 2]
                                  [--new c_slabs=1] [--old c_slabs=0] [--keep]

For each workload, one trainer of the native target; its steps alternate between two
settings, "new" and "old" (the order within a pair swapped every pair, so that the
machine's load falls on both alike). A setting is a comma-separated list of NAME=VALUE
from SETTINGS (what is not named keeps its default):

    c_slabs   runtime.native.slabs.C_SLABS: slabs handed to the C pool (1) or to
              Python threads (0)
    chains    runtime.native.SPLIT_BYTES: an elementwise chain splits from these bytes
    channels  runtime.native.CHANNEL_SPLIT_BYTES: batchnorm's channel programs
    pooling   runtime.native.pooling.SPLIT_BYTES: max pooling
    conv      runtime.host.MIN_SPLIT_BYTES: below it an op (a convolution) stays whole

Prints per workload the medians of wall and process CPU time a step, in how many pairs
the new step was the shorter (by each), and the load average before and after; with
--keep the raw numbers go to benchmarks/results/.

    python benchmarks/slabs_ab.py --handover 30 [--keep]

times the hand-over alone instead: a relu forward over W2's dense activations (64 x
120, float32) called whole, split on the pool and split on Python threads (all
thresholds 0), blocks of 200 calls of each in turn; the medians and minima of a call.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import train_speed
from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.runtime import host
from netdsl.runtime import native
from netdsl.runtime.native import pooling, slabs

SETTINGS = {"c_slabs": (slabs, "C_SLABS", lambda v: v not in ("0", "false", "False")),
            "chains": (native, "SPLIT_BYTES", int),
            "channels": (native, "CHANNEL_SPLIT_BYTES", int),
            "pooling": (pooling, "SPLIT_BYTES", int),
            "conv": (host, "MIN_SPLIT_BYTES", int)}


def parse(text: str) -> dict:
    """NAME=VALUE,... as {(module, attribute): value}."""
    found = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        module, attribute, convert = SETTINGS[name.strip()]
        found[(module, attribute)] = convert(value.strip())
    return found


def _trainer(workload):
    return train_speed.warmed_trainer(workload, steps=0)   # warmed below, each side


def _step(trainer, setting: dict, defaults: dict) -> tuple[float, float]:
    for (module, attribute), value in {**defaults, **setting}.items():
        setattr(module, attribute, value)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(workload, pairs: int, sides: dict) -> dict:
    defaults = {(m, a): getattr(m, a) for m, a, _ in SETTINGS.values()}
    try:
        return _alternate(workload, pairs, sides, defaults)
    finally:
        for (module, attribute), value in defaults.items():
            setattr(module, attribute, value)


def _alternate(workload, pairs: int, sides: dict, defaults: dict) -> dict:
    trainer = _trainer(workload)
    for setting in sides.values():   # warm-up: kernels, timed choices, both ways
        for _ in range(3):
            _step(trainer, setting, defaults)
    times = {name: {"wall": [], "cpu": []} for name in sides}
    won = won_cpu = 0
    for i in range(pairs):
        order = ("new", "old") if i % 2 == 0 else ("old", "new")
        took = {}
        for name in order:
            took[name] = _step(trainer, sides[name], defaults)
            times[name]["wall"].append(took[name][0])
            times[name]["cpu"].append(took[name][1])
        won += took["new"][0] < took["old"][0]
        won_cpu += took["new"][1] < took["old"][1]
    return {"raw": times, "won": won, "won_cpu": won_cpu,
            **{name: {k: statistics.median(v) * 1e3 for k, v in t.items()}
               for name, t in times.items()}}


def handover(rounds: int) -> dict:
    """µs a call of a small relu whole, split on the pool, split on Python threads."""
    import numpy as np

    from netdsl.lower.codegen import Chain, run_program
    from netdsl.lower.conv_chain import Epilogue
    from netdsl.ops.activation import Relu

    program = Epilogue(Chain((Relu(),), ((0,),), 1)).programs.forward
    native.prepare([program], "float32")
    x = np.random.default_rng(0).standard_normal((64, 120)).astype(np.float32)
    arrays = {"x0": x}
    ways = {"whole": {}, "pool": {(native, "SPLIT_BYTES"): 0, (host, "MIN_SPLIT_BYTES"): 0,
                                  (slabs, "C_SLABS"): True},
            "python": {(native, "SPLIT_BYTES"): 0, (host, "MIN_SPLIT_BYTES"): 0,
                       (slabs, "C_SLABS"): False}}
    defaults = {(m, a): getattr(m, a) for m, a, _ in SETTINGS.values()}
    times = {name: [] for name in ways}
    try:
        for _ in range(rounds):
            for name, setting in ways.items():
                for (module, attribute), value in {**defaults, **setting}.items():
                    setattr(module, attribute, value)
                began = time.perf_counter()
                for _ in range(200):
                    run_program(np, program, arrays, None, "float32")
                times[name].append((time.perf_counter() - began) / 200 * 1e6)
    finally:
        for (module, attribute), value in defaults.items():
            setattr(module, attribute, value)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W2,W3,W6")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new", default="c_slabs=1")
    parser.add_argument("--old", default="c_slabs=0")
    parser.add_argument("--keep", action="store_true", help="raw numbers to benchmarks/results")
    parser.add_argument("--handover", type=int, default=0, metavar="ROUNDS",
                        help="time the hand-over alone, in this many rounds")
    args = parser.parse_args()
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    if args.handover:
        before = load_average()
        times = handover(args.handover)
        after = load_average()
        for name, each in times.items():
            print(f"{name}: {statistics.median(each):.1f} µs a call (least {min(each):.1f})")
        print(f"load {before:.2f} -> {after:.2f}")
        if args.keep:
            print(f"raw numbers: {keep_results('slabs_handover', {'us': times, 'load': [before, after]})}")
        return 0
    sides = {"new": parse(args.new), "old": parse(args.old)}
    wanted = args.only.split(",")
    print(f"{args.threads} threads, {malloc}, new {args.new}, old {args.old}, "
          f"{args.pairs} pairs, {os.cpu_count()} CPUs")
    kept = {"threads": args.threads, "new": args.new, "old": args.old, "pairs": args.pairs,
            "workloads": {}}
    for workload in train_speed.WORKLOADS:
        if workload.id not in wanted:
            continue
        before = load_average()
        result = run(workload, args.pairs, sides)
        after = load_average()
        new, old = result["new"], result["old"]
        print(f"{workload.id}: new {new['wall']:.2f} ms (cpu {new['cpu']:.2f}), "
              f"old {old['wall']:.2f} ms (cpu {old['cpu']:.2f}); new shorter in "
              f"{result['won']} of {args.pairs} pairs (cpu: {result['won_cpu']}); load "
              f"{before:.2f} -> {after:.2f}", flush=True)
        kept["workloads"][workload.id] = {**result, "load": [before, after]}
    if args.keep:
        print(f"raw numbers: {keep_results('slabs_ab', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
