"""Batchnorm's lean passes, or a switch of Winograd's, against the old path, in one process.

    python benchmarks/batchnorm_passes_ab.py [--only W3] [--pairs 40] [--threads 2]
                                              [--calls 30] [--keep]
                                              [--switch passes|winograd|winograd-lean|
                                                        winograd-back|choice-memo|
                                                        winograd-all|winograd-slab]

The per-channel programs' C is made both ways (lower.native.LEAN_PASSES on and off,
NETDSL_BN_PASSES) and both libraries are loaded; the native target's calls then run one
or the other by swapping the compiled functions. Two measures, each alternating the two
every repeat, the order swapped every pair, so that the machine's load falls on both:

- the calls alone: each fused batchnorm step of the workload (its own shapes, random
  data), forward and backward in training, timed as the op's call (Python included);
- the workload's training step on the native target (one trainer, the functions
  swapped before each step).

`--switch winograd` alternates Winograd's chunk shared by the slabs running at once
(lower.native_conv.WINOGRAD_SHARE, NETDSL_WINOGRAD_SHARE) with the old one per slab
instead: the step, and its peak as train_speed.py measures it, each way. `--switch
winograd-lean` alternates Winograd's lean scratch (lower.native_conv.WINOGRAD_LEAN,
NETDSL_WINOGRAD_LEAN: a slab's whole scratch within its share of the chunk budget, and
dx made after the weight gradient) with the old one, and `--switch winograd-back` the
weight gradient taken back by G^T . G in C (WINOGRAD_BACK_IN_C, NETDSL_WINOGRAD_BACK_IN_C)
with NumPy's einsum, and `--switch choice-memo` a layer's choice found from memos of its
key and of the choices file's path (runtime.native.conv.CHOICE_MEMO,
NETDSL_CONV_CHOICE_MEMO) with both made again at every call, measured alike;
`--switch winograd-all` those three together. `--switch winograd-slab` alternates a
Winograd call split in one slab per thread (WINOGRAD_SLAB_A_THREAD,
NETDSL_WINOGRAD_SLAB_A_THREAD) with the host's split.

Prints medians (wall clock, and the process's CPU time), in how many pairs the new side
("lean") was the shorter by each, and the load average before and after; `--keep`
writes the raw numbers to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import train_speed
from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.lower import native as native_lower
from netdsl.lower import native_conv as conv_lowering
from netdsl.ops.base import Ctx
from netdsl.ops.channels import ChannelProgram
from netdsl.runtime import native
from netdsl.runtime.native import conv as conv_runtime


def _both_ways(dtype: str) -> dict:
    """{"lean": entries, "old": entries}: the compiled functions of every per-channel
    program prepared so far, made with the lean passes and without."""
    programs = [entry[0] for entry in native._functions.values()
                if isinstance(entry[0], ChannelProgram)]
    sides = {}
    previous = native_lower.LEAN_PASSES
    try:
        for side, lean in (("old", False), ("lean", True)):
            native_lower.LEAN_PASSES = lean
            native.prepare(programs, dtype)
            sides[side] = {key: entry for key, entry in native._functions.items()
                           if isinstance(entry[0], ChannelProgram)}
    finally:
        native_lower.LEAN_PASSES = previous
    return sides


# a convolutions' switch that --switch names, alternated on and off: (module, name)
CONV_SWITCHES = {"winograd": (conv_lowering, "WINOGRAD_SHARE"),
                 "winograd-lean": (conv_lowering, "WINOGRAD_LEAN"),
                 "winograd-back": (conv_lowering, "WINOGRAD_BACK_IN_C"),
                 "choice-memo": (conv_runtime, "CHOICE_MEMO"),
                 "winograd-slab": (conv_lowering, "WINOGRAD_SLAB_A_THREAD")}
# the three that are new together: the lean scratch, the transform back, the memos
CONV_SWITCHES["winograd-all"] = tuple(CONV_SWITCHES[name] for name in (
    "winograd-lean", "winograd-back", "choice-memo"))
_conv_switch = [CONV_SWITCHES["winograd"]]


def _winograd_sides() -> dict:
    """The two sides of `--switch winograd` (or winograd-lean): its switch on and off."""
    return {"lean": True, "old": False}


def _take(side_value) -> None:
    """Make a side current: compiled functions to swap in, or a Winograd switch."""
    if isinstance(side_value, bool):
        switches = _conv_switch[0]
        for module, name in (switches if isinstance(switches[0], tuple) else (switches,)):
            setattr(module, name, side_value)
    else:
        native._functions.update(side_value)


def _alternate(sides: dict, run, pairs: int) -> dict:
    """Wall-clock and process CPU time (all threads') of each run, alternating the sides:
    on a busy machine the CPU time leaves out what other processes hold the cores for."""
    times = {side: [] for side in sides}
    cpu = {side: [] for side in sides}
    won = won_cpu = 0
    for i in range(pairs):
        took, spent = {}, {}
        for side in (("lean", "old") if i % 2 == 0 else ("old", "lean")):
            _take(sides[side])
            began, began_cpu = time.perf_counter(), time.process_time()
            run()
            spent[side] = time.process_time() - began_cpu
            took[side] = time.perf_counter() - began
            times[side].append(took[side] * 1e3)
            cpu[side].append(spent[side] * 1e3)
        won += took["lean"] < took["old"]
        won_cpu += spent["lean"] < spent["old"]
    _take(sides["lean"])
    return {"median_ms": {s: statistics.median(t) for s, t in times.items()}, "won": won,
            "pairs": pairs, "raw_ms": times,
            "median_cpu_ms": {s: statistics.median(t) for s, t in cpu.items()},
            "won_cpu": won_cpu, "raw_cpu_ms": cpu}


def _calls(lowered, batch: int, dtype: str, repeats: int):
    """A function running every fused batchnorm step's forward and backward once, on
    random arrays of its shapes."""
    rng = np.random.default_rng(0)
    calls = []
    for step in lowered.plan.steps:
        op = step.op
        if not hasattr(op, "head") or not hasattr(op.head, "programs"):
            continue
        shapes = [tuple(t.dims) for t in step.input_types]
        arrays = [rng.standard_normal((batch, *s)).astype(dtype) for s in shapes]
        channels = shapes[0][0]
        weight, bias = np.ones(channels, dtype), np.zeros(channels, dtype)
        ctx = Ctx(np, training=True, buffers={}, dtype=dtype)
        ctx.compiled = True
        ctx.needs_input_grad = (True,) * len(arrays)
        gy = rng.standard_normal(arrays[0].shape).astype(dtype)
        calls.append((op, ctx, arrays, weight, bias, gy))

    def run():
        for _ in range(repeats):
            for op, ctx, arrays, weight, bias, gy in calls:
                op.forward(ctx, *arrays, weight=weight, bias=bias)
                op.backward(ctx, gy)
    return run, len(calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W3")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30, help="pairs of the calls alone")
    parser.add_argument("--switch", choices=("passes", *CONV_SWITCHES), default="passes")
    parser.add_argument("--keep", action="store_true", help="raw numbers to benchmarks/results")
    args = parser.parse_args()
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    print(f"{args.threads} threads, {malloc}, {args.switch}: {args.pairs} step pairs, "
          f"{args.calls} call pairs")
    kept = {}
    for workload in train_speed.WORKLOADS:
        if workload.id not in args.only.split(","):
            continue
        before = load_average()
        trainer = train_speed.warmed_trainer(workload)
        lowered, params, (x, y) = trainer.lowered, trainer.params, trainer.data
        if args.switch in CONV_SWITCHES:
            _conv_switch[0] = CONV_SWITCHES[args.switch]
            sides = _winograd_sides()
            steps = _alternate(sides, trainer.step, args.pairs)
            # three each, in turn: on two threads the peak moves as the slabs happen to end
            traced = {side: [] for side in sides}
            for _ in range(3):
                for side, share in sides.items():
                    _take(share)
                    traced[side].append(
                        train_speed.netdsl_peak_bytes(lowered, params, (x, y)) / 2**20)
            peaks = {side: max(values) for side, values in traced.items()}
            _take(sides["lean"])
            results = (("step", steps),)
            print(f"{workload.id} peak (largest of 3): {args.switch} on {peaks['lean']:.2f} "
                  f"MiB, off {peaks['old']:.2f} MiB; all {traced}")
            record = {"steps": steps, "peak_mib": peaks, "peaks_mib": traced}
        else:
            sides = _both_ways(str(x.dtype))
            run, count = _calls(lowered, workload.batch, str(x.dtype), 1)
            calls = _alternate(sides, run, args.calls)
            steps = _alternate(sides, trainer.step, args.pairs)
            results = (("batchnorm calls", calls), ("step", steps))
            print(f"{workload.id}: {count} fused batchnorm steps")
            record = {"calls": calls, "steps": steps}
        after = load_average()
        kept[workload.id] = {**record, "switch": args.switch, "load": [before, after],
                             "threads": args.threads}
        for what, r in results:
            m = r["median_ms"]
            c = r["median_cpu_ms"]
            print(f"{workload.id} {what}: lean {m['lean']:.2f} ms, old {m['old']:.2f} ms; "
                  f"lean shorter in {r['won']} of {r['pairs']}; CPU time lean "
                  f"{c['lean']:.2f} ms, old {c['old']:.2f} ms, lean shorter in "
                  f"{r['won_cpu']} of {r['pairs']}")
        print(f"{workload.id}: load {before:.2f} -> {after:.2f}")
    if args.keep:
        print(f"raw numbers: {keep_results('batchnorm_passes_ab', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
