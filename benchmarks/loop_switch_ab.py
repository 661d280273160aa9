"""A switch of the compiled loops (an attribute of runtime.native.loops, such as
ZERO_START, or of another runtime.native module named before it: split_gemm.CLAIMED) on
and off, W4's and W5's training steps (native target) alternating in one process.

    python benchmarks/loop_switch_ab.py [--switch ZERO_START] [--threads 2] [--rounds 100]
                                        [--only W4] [--keep]

One trainer per workload (sequence_speed.py's, Adam); each round takes one step with the
switch on and one with it off, the order turned every round, after five untimed steps
of each. Per side: the median wall-clock step and the median process CPU time of a step
(the pool's spinning included), and in how many rounds the switch's step was the
shorter, by wall and by CPU. The load average is printed at the start and the end; with
--keep the raw per-step numbers go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.runtime.optim import make_optimizer
import sequence_speed


def timed(step) -> tuple[float, float]:
    """(wall ms, process CPU ms) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def owner(switch: str):
    """(module, attribute) of a switch: ATTR of runtime.native.loops, or MODULE.ATTR."""
    module, _, name = switch.rpartition(".")
    return importlib.import_module(f"netdsl.runtime.native.{module or 'loops'}"), name


def compare(w, switch: str, rounds: int) -> dict:
    batch = sequence_speed.make_batch(w)
    ours = sequence_speed.Ours(w, batch, "native")
    ours.optimizer = make_optimizer("adam", {"lr": sequence_speed.LR}, ours.ex.flat_params,
                                    native=True)

    module, name = owner(switch)

    def side(on: bool):
        def step():
            setattr(module, name, on)
            ours.step()
        return step

    sides = {"on": side(True), "off": side(False)}
    for step in sides.values():
        for _ in range(5):
            step()
    walls = {name: [] for name in sides}
    cpus = {name: [] for name in sides}
    for round_ in range(rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for name in order:
            wall, cpu = timed(sides[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {"walls": walls, "cpus": cpus,
            "on_shorter": sum(a < b for a, b in zip(walls["on"], walls["off"])),
            "on_less_cpu": sum(a < b for a, b in zip(cpus["on"], cpus["off"]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switch", default="ZERO_START")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--only", help="W4 or W5")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    module, name = owner(args.switch)
    if not hasattr(module, name):
        parser.error(f"{module.__name__} has no switch {name}")
    fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841  kept for the run
    results = {"switch": args.switch, "threads": args.threads, "rounds": args.rounds,
               "workloads": {}}
    for w in sequence_speed.WORKLOADS:
        if args.only and w.id != args.only:
            continue
        before = load_average()
        r = compare(w, args.switch, args.rounds)
        r["load"] = {"before": before, "after": load_average()}
        results["workloads"][w.id] = r
        med = {name: (statistics.median(r["walls"][name]), statistics.median(r["cpus"][name]))
               for name in ("on", "off")}
        print(f"{w.id}, {args.threads} threads, {args.switch} on / off, {args.rounds} rounds: "
              f"wall {med['on'][0]:.2f} / {med['off'][0]:.2f} ms (on shorter in "
              f"{r['on_shorter']}), CPU {med['on'][1]:.2f} / {med['off'][1]:.2f} ms (on less "
              f"in {r['on_less_cpu']}); load {before:.2f} -> {r['load']['after']:.2f}",
              flush=True)
    keep_results("loop_switch_ab", results, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
