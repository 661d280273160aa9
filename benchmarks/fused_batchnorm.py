"""A batchnorm with the chain after it in its call, against the two apart, inside training.

    python benchmarks/fused_batchnorm.py [--only W3] [--steps 25] [--threads 1]

For each feed-forward reference workload with batchnorms (train_speed.py's), two
native lowerings train side by side, one step each in turn: the native target's own,
where a chain after a batchnorm runs inside its programs (lower/fuse.py), and one that
asks for the batchnorms' outputs, which keeps them values and so their chains apart.
Printed per side: the median and range over the steps of the time in the batchnorm and
chain calls, forward and backward (the self time of those op calls, as op_profile.py
takes it), and the median whole step. Run it on a quiet machine, as the other
benchmarks.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import train_speed
from isolation import fix_malloc, limit_blas, load_average
from op_profile import SelfTimer, kind_of
from netdsl.driver import check_file
from netdsl.lower import lower
from netdsl.runtime.init import initial_params

KINDS = ("batchnorm", "activation, fused chains")


def timed(trainer, timer: SelfTimer) -> None:
    """Time the batchnorm and chain calls of one trainer's executor, forward apart from
    backward."""
    for step in trainer.executor.plan.steps:
        op = step.op
        if kind_of(op.name) in KINDS and not getattr(op, "_timed", False):
            op.forward = timer.wrap("forward", op.forward)
            op.backward = timer.wrap("backward", op.backward)
            op._timed = True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="W3", help="comma-separated workload ids")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"# batchnorm and its chain: in one call or apart; {fix_malloc()}; "
          f"{args.threads} BLAS threads; {args.steps} steps each, in turn")
    limiter = limit_blas(args.threads)  # noqa: F841  kept alive for the whole run
    wanted = {w.strip().upper() for w in args.only.split(",")}
    for workload in train_speed.WORKLOADS:
        if workload.id not in wanted:
            continue
        x, y, _ = train_speed.make_batch(workload)
        graph = check_file(str(train_speed.SPECS / workload.spec)).graph
        fused = lower(graph, "native")
        norms = [s.node for s in fused.built.steps if s.op.name == "batchnorm"]
        if not norms:
            print(f"{workload.id}: no batchnorm")
            continue
        apart = lower(graph, "native", outputs=norms)
        params = initial_params(fused.built, "he", seed=train_speed.SEED)
        sides = {}
        for name, lowered in (("in one call", fused), ("apart", apart)):
            # both warmed below, in turn
            trainer = train_speed.warmed_trainer(workload, lowered=lowered, params=params,
                                                 steps=0)
            timer = SelfTimer()
            timed(trainer, timer)
            sides[name] = (trainer, timer, [], [], [])
        before = load_average()
        for _ in range(3):
            for trainer, *_ in sides.values():
                trainer.step()
        for _ in range(args.steps):
            for trainer, timer, forward, backward, whole in sides.values():
                timer.seconds.clear()
                start = time.perf_counter()
                trainer.step()
                whole.append((time.perf_counter() - start) * 1e3)
                forward.append(timer.seconds["forward"] * 1e3)
                backward.append(timer.seconds["backward"] * 1e3)
        print(f"\n{workload.id} {workload.title} (load {before:.2f} before, "
              f"{load_average():.2f} after), ms a step:")
        for name, (_, _, forward, backward, whole) in sides.items():
            print(f"  {name:12s} forward {statistics.median(forward):6.2f} "
                  f"[{min(forward):.2f}-{max(forward):.2f}]  backward "
                  f"{statistics.median(backward):6.2f} [{min(backward):.2f}-{max(backward):.2f}]"
                  f"  whole step {statistics.median(whole):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
