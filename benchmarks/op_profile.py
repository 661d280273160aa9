"""Where a training step's time goes: netdsl's op kinds next to PyTorch's profiler.

    python benchmarks/op_profile.py [--only W3,W4] [--steps 10] [--target native]

For each reference workload (the networks, batches and optimisers of train_speed.py and
sequence_speed.py), one side after the other trains `--steps` steps with a profiler on,
after a warm-up, on the same number of threads:

    netdsl: every step's op forward and backward, each loop's compiled kernels, the
            host loops' own bookkeeping and the optimiser update are timed around the
            call; a nested call's time is taken out of its caller's (self time).
    torch:  torch.profiler's self CPU time per aten op.

Both sides' op names fall into the same kinds (convolution, dense, batchnorm, ...:
`KINDS`); what no timed call covers (the executor's or autograd's own Python and C++,
allocation between calls, the profiler's cost) is "framework". A loop's input projection
that the lowering hoisted out of it counts with the loop, as PyTorch's LSTM op makes
its own inside; its share is printed under the table. The table gives
milliseconds per training step and kind for each side, and their difference: the
kinds where netdsl loses time are the ones to work on. The profilers slow both sides
down (torch's by its per-op records, netdsl's by a perf_counter pair per call), so
the totals are larger than train_speed.py's; the unprofiled step times are shown too.
Run it on a quiet machine, as the other benchmarks.
"""
from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import sequence_speed
import train_speed
from isolation import blas_pool, fix_malloc, limit_blas, load_average, warn_if_busy
from netdsl.runtime import execute
from netdsl.runtime.execute import Executor
from netdsl.runtime.optim import make_optimizer

# an op name (netdsl's, or torch's without "aten::") -> the kind it is counted under;
# the first pattern that matches wins
KINDS = [
    # netdsl's project is a 1x1 convolution and its batchnorm: PyTorch's twin counts both
    # here and under batchnorm
    ("convolution", r"conv|^project$"),
    # a loop's input projection, which the lowering hoists out of it (netdsl.lower.hoist),
    # counts with the loop: PyTorch's LSTM and RNN ops make theirs inside
    ("recurrent loop", r"^loop\b|lstm|rnn|gru"),
    # a dense layer joined to the chain after it (dense_relu) mostly multiplies
    ("dense (GEMM)", r"^(dense|dense_\w+|addmm|mm|bmm|matmul|linear|t|transpose)$"),
    ("batchnorm", r"batch_?norm"),
    ("activation, fused chains", r"^(fused|relu|sigmoid|tanh|threshold_backward|"
                                 r"sigmoid_backward|tanh_backward|clamp_min)"),
    ("pooling", r"pool"),
    ("loss", r"cross_entropy|log_softmax|nll_loss|_softmax"),
    ("optimizer", r"^(optimizer|Optimizer|_foreach|addcmul_|addcdiv_|lerp_|sqrt|_fused_adam|"
                  r"_fused_sgd)"),
    ("elementwise, concat", r"^(add|mul|sub|div|add_|mul_|split|concat|cat|sum|mean|last)"),
    ("memory, views, copies", r"^(empty|zero|zeros|fill_|clone|copy_|to|_to_copy|as_strided|"
                              r"expand|contiguous|resize_|view|reshape|flatten|select|slice|"
                              r"stack|unbind|narrow|squeeze|unsqueeze|detach|ones_like|"
                              r"zeros_like|empty_like|empty_strided|lift_fresh|_unsafe_view|"
                              r"transpose_|item|_local_scalar_dense|resolve_conj)"),
]


def kind_of(name: str) -> str:
    bare = name.removeprefix("aten::")
    for kind, pattern in KINDS:
        if re.search(pattern, bare):
            return kind
    return "other ops"


class SelfTimer:
    """Self time per label of nested timed calls."""

    def __init__(self):
        self.seconds: collections.Counter = collections.Counter()
        self.stack: list[list] = []

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            frame = [0.0]  # time spent in nested timed calls
            self.stack.append(frame)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.stack.pop()
                self.seconds[label] += spent - frame[0]
                if self.stack:
                    self.stack[-1][0] += spent
        return timed


HOISTED = "loop: hoisted input projection"


def label_of(step, in_loops: set) -> str:
    """What a step's time is counted as: its op's name, or HOISTED for a part of a loop's
    member that the lowering took out of the loop (its `origin` is in `in_loops`, the
    nodes of the plan's loops)."""
    if step.node not in in_loops and step.origin in in_loops:
        return HOISTED
    return step.op.name


def instrument(ex: Executor, optimizer, timer: SelfTimer) -> None:
    """Time every op call, loop and optimiser update of one executor (instance attributes
    over the methods, so nothing else is touched)."""
    in_loops = {s.node for loop in ex.plan.loops for s in loop.steps}
    for step in ex.plan.steps:
        op = step.op
        if getattr(op, "_profiled", False):
            continue
        label = label_of(step, in_loops)
        op.forward = timer.wrap(label, op.forward)
        op.backward = timer.wrap(label, op.backward)
        op._profiled = True
    # the executor's calls made so far each keep the forward they found (Executor.calls):
    # theirs are timed too; those made from now on find the timed one
    ops = {step.node: step.op for step in ex.plan.steps}
    for node, call in ex.calls().items():
        if call.forward is not ops[node].forward:
            call.forward = timer.wrap(ops[node].name, call.forward)
    compiled = ex.compiled_loops
    if compiled is not None:
        compiled.forward = timer.wrap("loop", compiled.forward)
        compiled.backward = timer.wrap("loop", compiled.backward)
    optimizer.step = timer.wrap("optimizer", optimizer.step)


def host_loops_timed(timer: SelfTimer):
    """The host executor's loop walkers, timed as the loop's bookkeeping (their ops are
    timed inside them)."""
    saved = execute.forward_loop, execute.backward_loop
    execute.forward_loop = timer.wrap("loop", saved[0])
    execute.backward_loop = timer.wrap("loop", saved[1])
    return saved


def netdsl_profile(trainer, steps: int) -> tuple[dict, float, float, float]:
    """(ms per step by kind, profiled ms per step, unprofiled ms per step, ms per step of
    the hoisted input projections within the recurrent loop's)."""
    plain = median_ms(trainer.step, steps)
    timer = SelfTimer()
    ex = getattr(trainer, "executor", None) or trainer.ex
    instrument(ex, trainer.optimizer, timer)
    saved = host_loops_timed(timer)
    try:
        trainer.step()
        timer.seconds.clear()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        total = (time.perf_counter() - start) / steps * 1e3
    finally:
        execute.forward_loop, execute.backward_loop = saved
    by_kind = collections.Counter()
    for label, seconds in timer.seconds.items():
        by_kind[kind_of(label)] += seconds / steps * 1e3
    return by_kind, total, plain, timer.seconds[HOISTED] / steps * 1e3


def torch_profile(trainer, steps: int) -> tuple[dict, float, float]:
    plain = median_ms(trainer.step, steps)
    with train_speed.quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        total = (time.perf_counter() - start) / steps * 1e3
    by_kind = collections.Counter()
    for event in prof.key_averages():
        # autograd's nodes (ConvolutionBackward0, ...) hold its own work: "framework"
        if event.key.startswith(("aten::", "Optimizer")):
            by_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / steps
    return by_kind, total, plain


def median_ms(step, steps: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def feed_forward_sides(workload, target: str):
    ours = train_speed.warmed_trainer(workload, target, steps=0)   # median_ms warms it
    x, y = ours.data
    theirs = train_speed.TorchTrainer(train_speed.new_torch_model(workload),
                                      (torch.from_numpy(x), torch.from_numpy(y)))
    return ours, theirs


def sequence_sides(workload, target: str):
    batch = sequence_speed.make_batch(workload)
    ours = sequence_speed.Ours(workload, batch, target)
    ours.optimizer = make_optimizer("adam", {"lr": sequence_speed.LR}, ours.ex.flat_params,
                                    native=target == "native")
    return ours, sequence_speed.Theirs(workload, batch)


def workloads():
    for w in train_speed.WORKLOADS:
        yield w, feed_forward_sides
    for w in sequence_speed.WORKLOADS:
        yield w, sequence_sides


def report(wid: str, title: str, ours, theirs, load: tuple[float, float]) -> None:
    (mine, mine_total, mine_plain, hoisted), (their, their_total, their_plain) = ours, theirs
    mine["framework"] = max(0.0, mine_total - sum(mine.values()))
    their["framework"] = max(0.0, their_total - sum(their.values()))
    print(f"\n## {wid} {title}: ms per training step (load {load[0]:.2f} before, "
          f"{load[1]:.2f} after)\n")
    print(f"unprofiled: netdsl {mine_plain:.2f} ms, torch {their_plain:.2f} ms; "
          f"profiled: netdsl {mine_total:.2f} ms, torch {their_total:.2f} ms\n")
    print("| kind | netdsl ms | torch ms | netdsl − torch |")
    print("|---|---|---|---|")
    kinds = sorted(set(mine) | set(their), key=lambda k: -abs(mine[k] - their[k]))
    for kind in kinds:
        print(f"| {kind} | {mine[kind]:.2f} | {their[kind]:.2f} | {mine[kind] - their[kind]:+.2f} |")
    if hoisted:
        print(f"\nnetdsl's recurrent loop includes its hoisted input projection (forward, "
              f"weight gradient, bias): {hoisted:.2f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated workload ids, e.g. W3,W4")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", choices=("host", "native"), default="native")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be positive")
    wanted = {w.strip().upper() for w in (args.only or "").split(",") if w.strip()}
    malloc = fix_malloc()
    torch.set_num_threads(args.threads)
    limiter = limit_blas(args.threads)  # noqa: F841  kept alive for the whole run
    library, threads = blas_pool()
    print(f"# Per-op profile, netdsl ({args.target} target) vs PyTorch eager, CPU float32\n")
    print(f"{args.threads} threads (torch), {library} {threads} threads (numpy); {malloc}; "
          f"{args.steps} profiled steps per side; numpy {np.__version__}, torch {torch.__version__}")
    for workload, sides in workloads():
        if wanted and workload.id not in wanted:
            continue
        before = warn_if_busy(f"before {workload.id}")
        ours, theirs = sides(workload, args.target)
        mine = netdsl_profile(ours, args.steps)
        their = torch_profile(theirs, args.steps)
        report(workload.id, workload.title, mine, their, (before, load_average()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
