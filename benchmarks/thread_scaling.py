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
PyTorch's are where two threads lose. netdsl's calls, and each side's step, are also
timed in the process's CPU time (all its threads'): on a busy machine a wall clock
waits for the other processes, but CPU time spent on two threads beyond one thread's
is the split's own cost (hand-overs, spinning, work done twice). `--keep` writes
every block to benchmarks/results/.
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


class CpuTimer(SelfTimer):
    """SelfTimer in the process's CPU time (all its threads')."""

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            frame = [0.0]
            self.stack.append(frame)
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.process_time() - start
                self.stack.pop()
                self.seconds[label] += spent - frame[0]
                if self.stack:
                    self.stack[-1][0] += spent
        return timed


def _instrument(trainer, timers: tuple) -> None:
    """Every step's op forward and backward timed under "kind|node|pass", and the
    optimiser's update, by each of `timers`."""
    ex = trainer.ex if hasattr(trainer, "ex") else trainer.executor
    for timer in timers:
        for step in ex.plan.steps:
            op = step.op
            kind = kind_of(op.name)
            op.forward = timer.wrap(f"{kind}|{step.node}|forward", op.forward)
            op.backward = timer.wrap(f"{kind}|{step.node}|backward", op.backward)
        trainer.optimizer.step = timer.wrap("optimizer|optimizer|update",
                                            trainer.optimizer.step)
    ex._calls.clear()   # the executor keeps the bound forwards of its first call


def _ours_block(trainer, timers: tuple, steps: int) -> tuple[dict, dict]:
    """(wall, CPU) ms per step by label, each with "total|step|wall" (its step's)."""
    for timer in timers:
        timer.seconds.clear()
    began, began_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.step()
    ends = (time.perf_counter() - began, time.process_time() - began_cpu)
    blocks = []
    for timer, total in zip(timers, ends):
        took = collections.Counter({k: v / steps * 1e3 for k, v in timer.seconds.items()})
        took["total|step|wall"] = total / steps * 1e3
        blocks.append(took)
    return tuple(blocks)


def _theirs_block(trainer, steps: int) -> dict:
    """ms per step by kind (self CPU time of aten ops), "total" (the wall clock) and
    "total CPU" (the process's CPU time)."""
    with train_speed.quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        began, began_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.step()
        total = (time.perf_counter() - began) / steps * 1e3
        total_cpu = (time.process_time() - began_cpu) / steps * 1e3
    took = collections.Counter()
    for event in prof.key_averages():
        if event.key.startswith(("aten::", "Optimizer")):
            took[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / steps
    took["total"], took["total CPU"] = total, total_cpu
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
        timers = (SelfTimer(), CpuTimer())
        for n in (1, 2):   # kernels compiled and choices timed for both thread counts
            limiter = _threads(n)
            for _ in range(3):
                ours.step()
                theirs.step()
            del limiter
        _instrument(ours, timers)
        blocks = {n: {"ours": [], "ours_cpu": [], "theirs": []} for n in (1, 2)}
        for r in range(args.rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                limiter = _threads(n)
                ours.step()
                wall, cpu = _ours_block(ours, timers, args.steps)
                blocks[n]["ours"].append(wall)
                blocks[n]["ours_cpu"].append(cpu)
                theirs.step()
                blocks[n]["theirs"].append(_theirs_block(theirs, args.steps))
                del limiter
        after = load_average()
        mine = {n: _medians(blocks[n]["ours"]) for n in (1, 2)}
        mine_cpu = {n: _medians(blocks[n]["ours_cpu"]) for n in (1, 2)}
        their = {n: _medians(blocks[n]["theirs"]) for n in (1, 2)}
        by_kind = {n: collections.Counter() for n in (1, 2)}
        by_kind_cpu = {n: collections.Counter() for n in (1, 2)}
        for n in (1, 2):
            for label, ms in mine[n].items():
                by_kind[n][label.split("|")[0]] += ms
            for label, ms in mine_cpu[n].items():
                by_kind_cpu[n][label.split("|")[0]] += ms
        print(f"\n## {workload.id} {workload.title} (load {before:.2f} -> {after:.2f}; "
              f"medians of {args.rounds} blocks of {args.steps} steps)")
        kinds = sorted(set(by_kind[1]) | set(their[1]), key=lambda k: -by_kind[1].get(k, 0))
        _table("netdsl by kind (total: the step's wall clock)", by_kind[1], by_kind[2],
               [k for k in kinds if by_kind[1].get(k)])
        _table("netdsl by kind in CPU time (total: the step's; speed-up below 1: the "
               "second thread's extra CPU)", by_kind_cpu[1], by_kind_cpu[2],
               [k for k in kinds if by_kind_cpu[1].get(k)])
        _table("PyTorch by kind (total: the step's wall clock; total CPU: its CPU time)",
               their[1], their[2], [k for k in kinds if their[1].get(k)
                                    and not k.startswith("total")] + ["total", "total CPU"])
        # a layer's loss to the second core: its two-thread time less half its one's
        layers = sorted((label for label in mine[1] if mine[1][label] > 0
                         and not label.startswith(("total", "optimizer"))),
                        key=lambda label: mine[1][label] / 2 - mine[2].get(label, 0))
        _table("netdsl by layer, the largest loss to the second core first (2 threads' "
               "ms less half of 1 thread's)", mine[1], mine[2], layers)
        layers_cpu = sorted((label for label in mine_cpu[1] if mine_cpu[1][label] > 0
                             and not label.startswith(("total", "optimizer"))),
                            key=lambda label: mine_cpu[1][label] - mine_cpu[2].get(label, 0))
        _table("netdsl by layer in CPU time, the most CPU the second thread adds first",
               mine_cpu[1], mine_cpu[2], layers_cpu)
        kept[workload.id] = {"load": [before, after], "rounds": args.rounds,
                             "steps": args.steps, "blocks": blocks}
    if args.keep:
        print(f"raw numbers: {keep_results('thread_scaling', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
