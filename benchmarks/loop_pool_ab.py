"""The compiled recurrent loops split over the thread pool against the whole-batch loop:
W4's and W5's training steps (native target) alternating in one process.

Paths, all on the same executor (runtime.native.loops' switches set before each step;
each path's functions compiled before the timing):

- `pooled`: each step of the loop split over the pool, and the pass's other GEMMs (the
  hoisted projection, the weight gradients, the head) split over it too, BLAS on one
  thread for the whole pass (LOOP_POOL and STEP_POOL);
- `whole`: the default on two threads, the whole-batch loop, every GEMM on BLAS's
  threads (LOOP_POOL and LOOP_PACK off);
- with --split, `split` as well: the loop split, the other GEMMs on BLAS's threads and
  OpenBLAS's workers parked before each split call (STEP_POOL off: the earlier path).

Each round runs one step of each path, the order turned every round. Per path: the
median wall-clock step, the median process CPU time of a step (spinning included), and
in how many rounds the pooled step was the shorter. Alternating every step charges one
path for the threads the other left spinning (OpenBLAS's after the whole-batch step):
--block N runs N steps of a path in a row instead, after three untimed ones and a 0.3 s
pause. Then each block's median is a block's figure: the script prints every path's
block medians, their spread, and how many blocks each path won against `whole` (its
block median the lower of the round's pair), which is what the default is decided on.
With --torch PyTorch's step runs in each round as well, on the same threads. The pooled
paths run whatever the step's size (POOL_MIN_MACS set to 0: W5's steps are below it),
their float32 weights packed unless --blas-gemm (LOOP_PACK). The load average and
OPENBLAS_THREAD_TIMEOUT are printed; with --keep the raw per-step numbers go to
benchmarks/results/.

    python benchmarks/loop_pool_ab.py [--threads 2] [--rounds 60] [--block 25]
                                      [--only W4] [--split] [--torch] [--blas-gemm] [--keep]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.runtime.native import loops as native_loops
import sequence_speed


def timed(step) -> tuple[float, float]:
    """(wall ms, process CPU ms) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def compare(w, rounds: int, with_torch: bool, packed: bool, block: int = 1,
            split: bool = False) -> dict:
    batch = sequence_speed.make_batch(w)
    ours = sequence_speed.Ours(w, batch, "native")
    theirs = sequence_speed.Theirs(w, batch) if with_torch else None

    def path(pooled: bool, step_pool: bool = True):
        def step():   # whole: neither split nor packed (one thread packs by default)
            native_loops.LOOP_POOL = pooled
            native_loops.LOOP_PACK = pooled and packed
            native_loops.STEP_POOL = step_pool
            ours.step()
        return step

    paths = {"pooled": path(True), "whole": path(False)}
    if split:
        paths["split"] = path(True, step_pool=False)
    if theirs is not None:
        paths["torch"] = theirs.step
    for step in paths.values():   # compile both loops, warm the caches
        for _ in range(5):
            step()
    kernels = [made[0].pooled for made in ours.ex.compiled_loops._made.values() if made]
    assert True in kernels and False in kernels, "both paths must have run compiled"
    times = {name: [] for name in paths}
    cpu = {name: [] for name in paths}
    names = list(paths)
    for r in range(rounds):
        turn = r % len(names)
        for name in names[turn:] + names[:turn]:
            if block > 1:   # a path's threads (and OpenBLAS's) as its own steps left them
                for _ in range(3):
                    paths[name]()
                time.sleep(0.3)
            for _ in range(block):
                wall_ms, cpu_ms = timed(paths[name])
                times[name].append(wall_ms)
                cpu[name].append(cpu_ms)
    won = sum(p < q for p, q in zip(times["pooled"], times["whole"]))
    blocks = {name: [statistics.median(values[i:i + block])
                     for i in range(0, len(values), block)] for name, values in times.items()}
    blocks_won = {name: sum(p < q for p, q in zip(blocks[name], blocks["whole"]))
                  for name in paths if name != "whole"}
    if split:
        blocks_won["pooled against split"] = sum(
            p < q for p, q in zip(blocks["pooled"], blocks["split"]))
    return {"times": times, "cpu": cpu, "won": won, "block_medians": blocks,
            "blocks_won": blocks_won}


def report(w, args, result: dict, before: float, after: float) -> None:
    steps = args.rounds * args.block
    print(f"{w.id} ({w.title}), {args.threads} threads, {args.rounds} rounds of "
          f"{args.block} step(s), load {before:.2f} -> {after:.2f}, "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}: "
          f"pooled the shorter in {result['won']} of {steps} pairs")
    for name, values in result["times"].items():
        blocks = result["block_medians"][name]
        print(f"  {name:7s} step {statistics.median(values):7.2f} ms "
              f"[{min(values):.2f}-{max(values):.2f}], process CPU "
              f"{statistics.median(result['cpu'][name]):7.2f} ms")
        if args.block > 1:
            print(f"          block medians {min(blocks):.2f}-{max(blocks):.2f} ms: "
                  + ", ".join(f"{b:.2f}" for b in blocks))
    if args.block > 1:
        for name, count in result["blocks_won"].items():
            path, _, other = name.partition(" against ")
            other = other or "whole"
            print(f"  {path} won {count} of {args.rounds} blocks against {other}, "
                  f"{other} won {args.rounds - count}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--only", choices=[w.id for w in sequence_speed.WORKLOADS])
    parser.add_argument("--torch", action="store_true", help="PyTorch's step in each round too")
    parser.add_argument("--keep", action="store_true", help="raw numbers to benchmarks/results")
    parser.add_argument("--block", type=int, default=1,
                        help="steps of one path in a row, after 3 untimed ones and a pause")
    parser.add_argument("--split", action="store_true",
                        help="also the split loop with the other GEMMs on BLAS's threads")
    parser.add_argument("--blas-gemm", action="store_true",
                        help="the pooled parts call BLAS's GEMM (no packed weights)")
    args = parser.parse_args(argv)
    fix_malloc()
    native_loops.POOL_MIN_MACS = 0
    limiter = limit_blas(args.threads)  # noqa: F841  kept alive for the whole run
    torch.set_num_threads(args.threads)
    kept = {"threads": args.threads, "rounds": args.rounds, "block": args.block,
            "packed": not args.blas_gemm,
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
            "workloads": {}}
    for w in sequence_speed.WORKLOADS:
        if args.only and w.id != args.only:
            continue
        before = load_average()
        result = compare(w, args.rounds, args.torch, not args.blas_gemm, args.block,
                         args.split)
        after = load_average()
        kept["workloads"][w.id] = {**result, "load_before": before, "load_after": after}
        report(w, args, result, before, after)
    if args.keep:
        print(f"raw numbers: {keep_results('loop_pool_ab', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
