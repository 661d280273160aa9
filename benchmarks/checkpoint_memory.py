"""Memory and time of BPTT over T = 1000 steps with and without bptt(checkpoint=k).

The workload is W4's LSTM (hidden 128, 32 inputs, many-to-one, Adam) at batch 16 over
1000 steps. For each CPU target (host: NumPy calls; native: the compiled loop) and each
k (none, and k = 32, about the square root of T) it records:

- the planned bytes the loop keeps for backward (netdsl.lower.loop_memory, as
  `netc compile --steps 1000` prints them);
- measured with tracemalloc, which follows NumPy's allocations: the bytes alive between
  forward and backward, and the peak of two training steps (forward, backward, Adam);
- the step time, median over repeats of one step each, the load average beside it.

The memory figures do not depend on the machine; the times do.

    python benchmarks/checkpoint_memory.py [--steps 1000] [--batch 16] [--every 32]
                                           [--repeats 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from isolation import blas_pool, fix_malloc, keep_results, limit_blas, load_average, warn_if_busy
from netdsl.driver import check_file
from netdsl.lower import lower
from netdsl.lower.loop_memory import loop_memory
from netdsl.lower.schedule import LoopSegment
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.optim import make_optimizer

SPEC = Path(__file__).resolve().parent / "specs" / "w4_lstm.net"
LR = 1e-3


class Step:
    """One training step of the spec on a fixed batch, with BPTT checkpointed every
    `every` steps (None: not)."""

    def __init__(self, lowered, batch: dict, every: int | None):
        self.ex = Executor(lowered, initial_params(lowered.built, "auto", 0))
        self.ex.checkpoint = every
        self.optimizer = make_optimizer("adam", {"lr": LR}, self.ex.flat_params,
                                        native=lowered.target.name == "native")
        self.backward, self.batch = lowered.backward(), batch

    def __call__(self) -> None:
        self.ex.forward(self.batch, True)
        self.ex.backward(self.backward)
        self.optimizer.step(self.ex.flat_grads, LR)


def planned_bytes(lowered, steps: int, batch: int, every: int | None) -> int:
    (segment,) = [s for s in lowered.schedule.segments if isinstance(s, LoopSegment)]
    kept = None
    if lowered.target.name == "native":
        from netdsl.runtime.native.loops import compile_loop, default_needs
        kept = compile_loop(segment, lowered.plan.types, "float32",
                            default_needs(lowered, segment))[0].kept
    return loop_memory(segment, lowered.plan.types, kept).stored(steps, batch, 4, every)


def measured_bytes(step: Step) -> tuple[int, int]:
    """(bytes alive between forward and backward, peak of two steps), beyond those
    alive before."""
    step()   # buffers settle, a native loop compiles
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        step.ex.forward(step.batch, True)
        held = tracemalloc.get_traced_memory()[0] - base
        step.ex.backward(step.backward)
        step.optimizer.step(step.ex.flat_grads, LR)
        step()
        return held, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="sequence length T (1000)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=32, help="checkpoint every k steps (32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841  kept alive for the whole run
    library, threads = blas_pool()
    print(f"W4 LSTM 128 at T={args.steps}, batch {args.batch}, float32; {library} {threads} "
          f"threads; {malloc}; {args.repeats} repeats of one step")
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((args.batch, args.steps, 32), dtype=np.float32),
             "y": rng.integers(0, 10, args.batch)}
    net = check_file(str(SPEC))
    results = []
    for target in ("host", "native"):
        lowered = lower(net, target)
        for every in (None, args.every):
            load = warn_if_busy(f"before {target} checkpoint={every}")
            step = Step(lowered, batch, every)
            held, peak = measured_bytes(step)
            times = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                step()
                times.append(time.perf_counter() - began)
            r = {"target": target, "checkpoint": every,
                 "planned_mib": planned_bytes(lowered, args.steps, args.batch, every) / 2**20,
                 "held_mib": held / 2**20, "peak_mib": peak / 2**20,
                 "step_ms": statistics.median(times) * 1e3, "step_ms_all": [t * 1e3 for t in times],
                 "load_average": {"before": load, "after": load_average()}}
            results.append(r)
            print(f"{target:6} checkpoint={str(every):4}  planned {r['planned_mib']:6.1f} MiB  "
                  f"held {r['held_mib']:6.1f} MiB  peak {r['peak_mib']:6.1f} MiB  "
                  f"step {r['step_ms']:7.0f} ms  load {load:.2f} -> "
                  f"{r['load_average']['after']:.2f}")
    kept = keep_results("checkpoint_memory", {"steps": args.steps, "batch": args.batch,
                                              "every": args.every, "results": results},
                        also=args.json)
    print(f"raw numbers: {kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
