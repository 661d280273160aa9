"""How much shorter the second core makes each op kind and layer of a step, netdsl's and
PyTorch's, in one process.

    python benchmarks/thread_scaling.py [--only W3] [--rounds 6] [--steps 3] [--keep]

For a feed-forward workload of train_speed.py, both sides train on one thread and on
two in turn, `--steps` steps a block, the blocks alternating `--rounds` times (the order
swapped every round), so that the machine's load falls on both thread counts alike.
netdsl's op calls are timed as op_profile.py times them (self time per call), labelled
by kind and by step (its graph node, forward and backward apart); PyTorch's by its
profiler's self CPU time per aten op, by kind. Per kind (and per netdsl layer) it prints
the median of the blocks' ms per step on one thread and on two, and their ratio (the
second core's speed-up: 2.0 at best); the kinds whose speed-up falls furthest below
PyTorch's are where two threads lose. `--keep` writes every block to
benchmarks/results/.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time

import torch
from threadpoolctl import threadpool_limits
from torch.profiler import ProfilerActivity, profile

import train_speed
from isolation import fix_malloc, keep_results, load_average
from op_profile import SelfTimer, feed_forward_sides, kind_of


def _instrument(trainer, timer: SelfTimer) -> None:
    """Every step's op forward and backward timed under "kind|node|pass", and the
    optimiser's update."""
    ex = trainer.ex if hasattr(trainer, "ex") else trainer.executor
    for step in ex.plan.steps:
        op = step.op
        kind = kind_of(op.name)
        op.forward = timer.wrap(f"{kind}|{step.node}|forward", op.forward)
        op.backward = timer.wrap(f"{kind}|{step.node}|backward", op.backward)
    ex._calls.clear()   # the executor keeps the bound forwards of its first call
    trainer.optimizer.step = timer.wrap("optimizer|optimizer|update", trainer.optimizer.step)


def _ours_block(trainer, timer: SelfTimer, steps: int) -> dict:
    """ms per step by label, and "total|step|wall"."""
    timer.seconds.clear()
    began = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    took = collections.Counter({k: v / steps * 1e3 for k, v in timer.seconds.items()})
    took["total|step|wall"] = (time.perf_counter() - began) / steps * 1e3
    return took


def _theirs_block(trainer, steps: int) -> dict:
    """ms per step by kind (self CPU time of aten ops), and "total"."""
    with train_speed.quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        total = (time.perf_counter() - began) / steps * 1e3
    took = collections.Counter()
    for event in prof.key_averages():
        if event.key.startswith(("aten::", "Optimizer")):
            took[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / steps
    took["total"] = total
    return took


def _threads(n: int):
    torch.set_num_threads(n)
    return threadpool_limits(limits=n, user_api="blas")


def _medians(blocks: list[dict]) -> dict:
    labels = set().union(*blocks)
    return {label: statistics.median(b.get(label, 0.0) for b in blocks) for label in labels}


def _table(title: str, one: dict, two: dict, rows) -> None:
    print(f"\n{title}\n\n| | 1 thread ms | 2 threads ms | speed-up |\n|---|---|---|---|")
    for label in rows:
        a, b = one.get(label, 0.0), two.get(label, 0.0)
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b if b else 0:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W3")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    print(fix_malloc())
    kept = {}
    for workload in train_speed.WORKLOADS:
        if workload.id not in args.only.split(","):
            continue
        before = load_average()
        ours, theirs = feed_forward_sides(workload, "native")
        timer = SelfTimer()
        for n in (1, 2):   # kernels compiled and choices timed for both thread counts
            limiter = _threads(n)
            for _ in range(3):
                ours.step()
                theirs.step()
            del limiter
        _instrument(ours, timer)
        blocks = {n: {"ours": [], "theirs": []} for n in (1, 2)}
        for r in range(args.rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                limiter = _threads(n)
                ours.step()
                blocks[n]["ours"].append(_ours_block(ours, timer, args.steps))
                theirs.step()
                blocks[n]["theirs"].append(_theirs_block(theirs, args.steps))
                del limiter
        after = load_average()
        mine = {n: _medians(blocks[n]["ours"]) for n in (1, 2)}
        their = {n: _medians(blocks[n]["theirs"]) for n in (1, 2)}
        by_kind = {n: collections.Counter() for n in (1, 2)}
        for n in (1, 2):
            for label, ms in mine[n].items():
                by_kind[n][label.split("|")[0]] += ms
        print(f"\n## {workload.id} {workload.title} (load {before:.2f} -> {after:.2f}; "
              f"medians of {args.rounds} blocks of {args.steps} steps)")
        kinds = sorted(set(by_kind[1]) | set(their[1]), key=lambda k: -by_kind[1].get(k, 0))
        _table("netdsl by kind (total: the step's wall clock)", by_kind[1], by_kind[2],
               [k for k in kinds if by_kind[1].get(k)])
        _table("PyTorch by kind (total: the step's wall clock)", their[1], their[2],
               [k for k in kinds if their[1].get(k)] + ["total"])
        # a layer's loss to the second core: its two-thread time less half its one's
        layers = sorted((label for label in mine[1] if mine[1][label] > 0
                         and not label.startswith(("total", "optimizer"))),
                        key=lambda label: mine[1][label] / 2 - mine[2].get(label, 0))
        _table("netdsl by layer, the largest loss to the second core first (2 threads' "
               "ms less half of 1 thread's)", mine[1], mine[2], layers)
        kept[workload.id] = {"load": [before, after], "rounds": args.rounds,
                             "steps": args.steps, "blocks": blocks}
    if args.keep:
        print(f"raw numbers: {keep_results('thread_scaling', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
