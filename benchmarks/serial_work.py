"""The work a native step does on its calling thread alone, per op kind and shape.

    python benchmarks/serial_work.py [--only W3] [--threads 2] [--steps 10]

On two threads a step is as short as the work no second thread can share: each op
call's Python and NumPy around its kernels (allocations, transforms, partial sums,
lookups) and the executor's own. For a feed-forward workload of train_speed.py on the
native target, every op call is timed in the calling thread's CPU time
(`time.thread_time`), and so is the part of it spent in the kernels' calls
(`runtime.native.slabs.run_slabs`, and a call made whole, `run_whole`); the difference
is the call's serial work. Prints, per step, the calling thread's CPU time, the part in
op calls, and the serial part by op kind and input shape (largest first), beside each
call's whole time on that thread. CPU time leaves out what other processes hold the
cores for, so the figures mean something on a busy machine too (its caches shared,
they are still somewhat larger there).
"""
from __future__ import annotations

import argparse
import collections
import sys
import time

import train_speed
from isolation import fix_malloc, keep_results, limit_blas, load_average
from op_profile import kind_of
from netdsl.runtime import native
from netdsl.runtime.native import conv, slabs


class KernelTime:
    """The calling thread's CPU time inside the kernels' calls, summed."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            began = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - began
        return timed


def _instrument(trainer, kernels: KernelTime) -> tuple[dict, dict]:
    """({label: serial seconds}, {label: whole seconds}) that the trainer's op calls
    fill, labelled "kind pass (input shape)"."""
    # where the kernels are called from: each module's own name for them
    for module, name in ((slabs, "run_slabs"), (conv, "run_slabs"),
                         (native, "run_slabs"), (native, "run_whole")):
        setattr(module, name, kernels.wrap(getattr(module, name)))
    serial, whole = collections.Counter(), collections.Counter()

    def wrap(label, fn):
        def timed(*args, **kwargs):
            began, inside = time.thread_time(), kernels.seconds
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - began
                whole[label] += spent
                serial[label] += spent - (kernels.seconds - inside)
        return timed

    ex = trainer.executor
    for step in ex.plan.steps:
        op, kind = step.op, kind_of(step.op.name)
        shape = tuple(step.input_types[0].dims)
        op.forward = wrap(f"{kind} forward {shape}", op.forward)
        op.backward = wrap(f"{kind} backward {shape}", op.backward)
    ex._calls.clear()   # the executor keeps the bound forwards of its first call
    return serial, whole


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    print(fix_malloc())
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    kept = {}
    for workload in train_speed.WORKLOADS:
        if workload.id not in args.only.split(","):
            continue
        before = load_average()
        trainer = train_speed.warmed_trainer(workload)
        serial, whole = _instrument(trainer, KernelTime())
        began = time.thread_time()
        for _ in range(args.steps):
            trainer.step()
        step = (time.thread_time() - began) / args.steps * 1e3
        after = load_average()
        ms = {label: s / args.steps * 1e3 for label, s in serial.items()}
        calls = {label: s / args.steps * 1e3 for label, s in whole.items()}
        print(f"\n## {workload.id} {workload.title}, {args.threads} threads "
              f"(load {before:.2f} -> {after:.2f}; {args.steps} steps)\n")
        print(f"calling thread: {step:.1f} ms CPU a step; in op calls "
              f"{sum(calls.values()):.1f}, of which serial {sum(ms.values()):.1f}\n")
        by_kind = collections.Counter()
        for label, value in ms.items():
            by_kind[label.split(" ")[0]] += value
        print("| kind | serial ms |\n|---|---|")
        for kind, value in by_kind.most_common():
            print(f"| {kind} | {value:.2f} |")
        print("\n| op call | serial ms | whole ms (this thread) |\n|---|---|---|")
        for label in sorted(ms, key=lambda k: -ms[k]):
            print(f"| {label} | {ms[label]:.2f} | {calls[label]:.2f} |")
        kept[workload.id] = {"load": [before, after], "threads": args.threads,
                             "steps": args.steps, "thread_ms": step, "serial_ms": ms,
                             "call_ms": calls}
    if args.keep:
        print(f"raw numbers: {keep_results('serial_work', kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
