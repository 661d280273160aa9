"""Where W4's compiled LSTM loop spends its time: the forward and backward C functions
timed alone, in CPU time of this thread (which another process's load changes little).

A training step of W4 on the native target records the calls the loop makes (function,
steps, table of pointers); each is then called again N times, as it is and with its
GEMMs replaced by a function that does nothing (what is left: the passes over the
gates). The same calls of the pooled functions (runtime.native.loops) on one
part, all on this thread, with BLAS's GEMM and with the weights packed (LOOP_PACK): what
splitting a step costs where there is nothing to split it over, and what packing saves. Around the calls, per training step: the Python of the loop's forward and
backward (arrays, tables, hand-overs) and the weight gradients' GEMMs after the loop.

    python benchmarks/loop_profile.py [--threads 1] [--repeats 15] [--calls 200]
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time

from isolation import fix_malloc, limit_blas, load_average
from netdsl.runtime.native import loops as native_loops
from netdsl.runtime.native.pool import pool_address
from netdsl.runtime.native.toolchain import build
import sequence_speed

_NOOP_GEMM = ("typedef long long I;\n"
              "void noop_gemm(int o, int ta, int tb, I m, I n, I k, float alpha, const float* a,"
              " I lda, const float* b, I ldb, float beta, float* c, I ldc) {}\n")


def cpu_ms(call, calls: int) -> float:
    start = time.thread_time()
    for _ in range(calls):
        call()
    return (time.thread_time() - start) / calls * 1e3


def sizes(function, steps: int, B: int) -> tuple:
    """T and B, and the rows 0..B for functions built before the row range was dropped
    (to compare with older trees)."""
    return (steps, B) if len(function.argtypes) == 4 else (steps, B, 0, B)


def pooled_twins(loops, segment, functions, packed: bool) -> dict:
    """The pooled function of each recorded unpooled one, of the same loop and needs
    (its slots are the same), its weights `packed` or not."""
    twins = {}
    for (_, needs, padded, pooled, _), made in list(loops._made.items()):
        if made is None or pooled:
            continue
        _, forward, backward = loops._compiled(segment, dict(needs), padded, True, packed)
        twins[id(made[1])], twins[id(made[2])] = forward, backward
    return {id(f): twins[id(f)] for f in functions if id(f) in twins}


def around(trainer, loops, steps: int = 15) -> dict:
    """CPU ms per training step of what runs around the two C calls: the loop's forward
    and backward in Python (arrays made, tables, hand-overs), and the weight gradients'
    GEMMs after the backward call; one value per step."""
    spent: dict = {}

    def timed(label, function):
        def call(*args, **kwargs):
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.thread_time() - start
        return call

    names = ("forward", "backward", "_call", "_weight_grads")
    for name in names:   # instance attributes over the methods, removed after
        setattr(loops, name, timed(name, getattr(loops, name)))
    rows: dict = {"Python around both calls": [], "weight gradients after the loop": []}
    try:
        for _ in range(steps):
            spent.clear()
            trainer.step()
            rows["weight gradients after the loop"].append(spent["_weight_grads"] * 1e3)
            rows["Python around both calls"].append(
                (spent["forward"] + spent["backward"] - spent["_weight_grads"]
                 - spent["_call"]) * 1e3)
    finally:
        for name in names:
            delattr(loops, name)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    fix_malloc()   # as sequence_speed.py: no page faults from freed and remapped arrays
    limiter = limit_blas(args.threads)  # noqa: F841  kept alive for the whole run
    # the whole-batch functions are recorded: neither split nor packed
    defaults = native_loops.LOOP_POOL, native_loops.LOOP_PACK
    native_loops.LOOP_POOL = native_loops.LOOP_PACK = False
    w = next(w for w in sequence_speed.WORKLOADS if w.id == "W4")
    trainer = sequence_speed.Ours(w, sequence_speed.make_batch(w), "native")
    loops = trainer.ex.compiled_loops
    recorded = []
    call, make_table = loops._call, loops._table

    def table_kept(run, grads):
        table = make_table(run, grads)
        table.arrays = list(run.keep)   # alive for the calls made again below
        return table

    def record(kernel, function, steps, table):
        recorded.append((function, steps, table))
        call(kernel, function, steps, table)

    loops._table = table_kept

    loops._call = record
    trainer.step()
    loops._call = call
    noop = ctypes.cast(build(_NOOP_GEMM).noop_gemm, ctypes.c_void_p).value
    load = load_average()
    [segment] = [s for s in trainer.ex.lowered.schedule.segments if hasattr(s, "loop")]
    functions = [function for function, _, _ in recorded]
    twins = {"BLAS": pooled_twins(loops, segment, functions, False),
             "packed": pooled_twins(loops, segment, functions, True)}
    pool = pool_address()
    rows = {"forward": [], "backward": [],
            **{f"{way}, pooled, 1 part, {how}": [] for way in ("forward", "backward")
               for how in twins},
            "forward, GEMM a no-op": [], "backward, GEMM a no-op": [], "training step": [],
            "training step, default settings": []}
    for _ in range(args.repeats):
        recorded.clear()
        loops._call = record
        trainer.step()
        loops._call = call
        (fwd, t_fwd, table_fwd), (bwd, t_bwd, table_bwd) = recorded
        for label, function, steps, table in (("forward", fwd, t_fwd, table_fwd),
                                              ("backward", bwd, t_bwd, table_bwd)):
            rows[label].append(cpu_ms(lambda: function(
                loops.address, *sizes(function, steps, loops.ex.size), table), args.calls))
            for how, made in twins.items():
                twin = made.get(id(function))
                if twin is not None:
                    rows[f"{label}, pooled, 1 part, {how}"].append(cpu_ms(lambda: twin(
                        loops.address, pool, 1, steps, loops.ex.size, table), args.calls))
            rows[f"{label}, GEMM a no-op"].append(cpu_ms(
                lambda: function(noop, *sizes(function, steps, loops.ex.size), table), args.calls))
        rows["training step"].append(statistics.median(cpu_ms(trainer.step, 1)
                                                       for _ in range(15)))
        native_loops.LOOP_POOL, native_loops.LOOP_PACK = defaults   # as a run takes them
        rows["training step, default settings"].append(statistics.median(cpu_ms(trainer.step, 1)
                                                                  for _ in range(15)))
        native_loops.LOOP_POOL = native_loops.LOOP_PACK = False
    rows.update(around(trainer, loops))
    print(f"W4 compiled loop, {args.threads} BLAS thread(s), CPU ms per call, median "
          f"[range] of {args.repeats} x {args.calls} calls; load average {load:.2f} -> "
          f"{load_average():.2f}")
    for label, values in rows.items():
        if not values:
            continue
        print(f"  {label:34s} {statistics.median(values):7.3f} "
              f"[{min(values):.3f}-{max(values):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
