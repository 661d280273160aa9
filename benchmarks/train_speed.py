"""Training speed of netdsl's NumPy executor next to PyTorch eager on the CPU.

    python benchmarks/train_speed.py [--only W1,W3] [--repeats 3] [--json FILE]

The feed-forward reference workloads (W1 MLP, W2 LeNet-5, W3 ResNet-20, W6 two
Inception modules), float32, one fixed synthetic batch per workload from seed 0
(W1: the first 128 scikit-learn digits scaled to [0, 1], where scikit-learn is
installed). netdsl runs the specs in benchmarks/specs/; PyTorch runs the same
networks built here in torch.nn. Both use He-normal initialisation (zero biases),
softmax cross-entropy and SGD with momentum 0.9 at lr 0.01. One training step:

    netdsl: forward (training), backward, optimiser step, loss as a float
    torch:  zero_grad, forward, loss, backward, optimiser step, loss.item()

Timing. Both sides are warmed up (5 steps each). Then, per repeat, N steps of one
framework are timed one by one, then N steps of the other; which goes first
alternates between repeats, so load changes on a shared machine hit both. Both run on
the same number of threads (--threads; NumPy's BLAS is limited to it too), and they
are isolated from each other as benchmarks/isolation.py describes: before each timed
block a pause (--settle seconds, for the other side's spinning worker threads) and
one untimed step, and glibc's malloc thresholds are fixed before anything runs. Each
repeat gives each side the median of its step times and a ratio netdsl samples/s
over torch samples/s (above 1: netdsl is faster). The table shows medians over the
repeats of the per-repeat medians, and the ratio's median and range. N is the
workload's default (fewer for the slow ones) or smaller, so that the timed part
stays within --budget seconds; --steps fixes it.

Peak memory. Each side's allocator is traced while a fresh copy of the network is
built and trains for two steps (the second is the steady state: momentum buffers
exist and every activation, saved value and gradient is live at its peak):

    netdsl: tracemalloc, which sees NumPy's array buffers (NumPy reports them to it)
            and Python objects.
    torch:  torch.profiler with profile_memory, which reports the running total of
            bytes held through the CPU allocator at each allocation; the peak of it.

Both count the bytes live at once: parameters, gradients, optimiser state,
activations and temporaries, allocated from the start of the trace (the input batch
and the imports are not counted). Neither counts memory that bypasses the
framework's allocator (BLAS work buffers, oneDNN caches). Resident set sizes were
not used: PyTorch's first training step pages in about 85 MiB of library code and
lazily initialised state, which would swamp the small workloads.

Correctness check: the loss of the first and of the last timed step of each side;
with one fixed batch both must go down.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch._C._profiler import _EventType  # the event kinds of the profiler's event tree
from torch.profiler import ProfilerActivity, profile

from netdsl.driver import check_file
from netdsl.lower import Lowered, lower
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.optim import make_optimizer

try:
    # imported before main() limits BLAS: scikit-learn loads SciPy's own OpenBLAS, which a
    # limit set earlier leaves at its own thread count, and netdsl's host splits over the
    # most threads any loaded BLAS has (a "--threads 1" W3 ran on two after W1)
    from sklearn.datasets import load_digits
except ImportError:
    load_digits = None

from isolation import (blas_pool, fix_malloc, keep_results, limit_blas, load_average, settle,
                       warn_if_busy)

SPECS = Path(__file__).resolve().parent / "specs"
LR, MOMENTUM, SEED = 0.01, 0.9, 0
WARMUP = 5
MIN_STEPS = 3
MIB = 2 ** 20


# ---- the PyTorch twins


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


class BasicBlock(nn.Module):
    """conv3x3-BN-relu-conv3x3-BN plus the identity, or a 1x1 conv + BN where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet20() -> nn.Module:
    layers = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(BasicBlock(cin, width, stride if i == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


class Inception(nn.Module):
    """GoogLeNet's module: 1x1 / 1x1-3x3 / 1x1-5x5 / maxpool3-1x1 branches, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int):
        super().__init__()
        self.branches = nn.ModuleList([
            nn.Sequential(nn.Conv2d(cin, c1, 1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(cin, c3r, 1), nn.ReLU(), nn.Conv2d(c3r, c3, 3, padding=1),
                          nn.ReLU()),
            nn.Sequential(nn.Conv2d(cin, c5r, 1), nn.ReLU(), nn.Conv2d(c5r, c5, 5, padding=2),
                          nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, pp, 1), nn.ReLU()),
        ])
        self.channels = c1 + c3 + c5 + pp

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def inception2() -> nn.Module:
    first = Inception(64, 64, 96, 128, 16, 32, 32)             # 3a
    second = Inception(first.channels, 128, 128, 192, 32, 96, 64)  # 3b
    return nn.Sequential(first, second, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(second.channels, 10))


def he_normal(model: nn.Module) -> nn.Module:
    """He-normal weights (fan in, gain sqrt(2)) and zero biases, as netdsl's 'he' scheme."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


# ---- workloads


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    spec: str
    batch: int
    dims: tuple[int, ...]
    steps: int                      # timed steps per repeat, at most
    torch_model: Callable[[], nn.Module]


WORKLOADS = [
    Workload("W1", "MLP 64-256-256-10", "w1_mlp.net", 128, (64,), 50, mlp),
    Workload("W2", "LeNet-5", "w2_lenet5.net", 64, (1, 28, 28), 20, lenet5),
    Workload("W3", "ResNet-20", "w3_resnet20.net", 32, (3, 32, 32), 10, resnet20),
    Workload("W6", "2 Inception modules", "w6_inception.net", 16, (64, 28, 28), 5, inception2),
]


def make_batch(workload: Workload) -> tuple[np.ndarray, np.ndarray, str]:
    """Inputs (float32) and class labels (int64), and where they come from."""
    if workload.id == "W1" and load_digits is not None:
        digits = load_digits()
        x = (digits.data[:workload.batch] / 16).astype(np.float32)
        return x, digits.target[:workload.batch].astype(np.int64), "digits"
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((workload.batch, *workload.dims), dtype=np.float32)
    return x, rng.integers(0, 10, workload.batch, dtype=np.int64), "synthetic"


class NetdslTrainer:
    def __init__(self, lowered: Lowered, params: dict, batch: tuple[np.ndarray, np.ndarray]):
        # what it was made of, for a benchmark that traces a fresh copy's peak
        self.lowered, self.params, self.data = lowered, params, batch
        self.plan = lowered.plan
        self.executor = Executor(lowered, params, seed=SEED)
        self.executor.lodge_values = True  # as runtime.train's Trainer runs it
        # the update compiled on the native target, as runtime.train's Trainer makes it
        self.optimizer = make_optimizer("sgd", {"lr": LR, "momentum": MOMENTUM},
                                        self.executor.flat_params,
                                        native=lowered.target.name == "native")
        self.backward = lowered.backward()
        [self.loss_node] = self.plan.losses.values()
        self.batch = {"x": batch[0], "y": batch[1]}

    def step(self) -> float:
        out = self.executor.forward(self.batch, True)
        self.executor.backward(self.backward)
        self.optimizer.step(self.executor.flat_grads, LR)
        return float(out[self.loss_node])


def warmed_trainer(workload: Workload, target: str = "native", steps: int = 3,
                   lowered: Lowered | None = None, params: dict | None = None) -> NetdslTrainer:
    """A trainer of `workload` as the benchmarks make one: its spec lowered for `target`
    (or `lowered`), He-normal parameters from SEED (or `params`), the workload's batch,
    and `steps` steps taken (kernels compiled, choices timed; 0 for a benchmark that
    warms each of its sides itself)."""
    if lowered is None:
        lowered = lower(check_file(str(SPECS / workload.spec)), target)
    if params is None:
        params = initial_params(lowered.built, "he", seed=SEED)
    x, y, _ = make_batch(workload)
    trainer = NetdslTrainer(lowered, params, (x, y))
    for _ in range(steps):
        trainer.step()
    return trainer



def each_workload(wanted: str, threads: int, rounds: int, run: Callable[[Workload, int], dict],
                  show: Callable[[Workload, dict], None]) -> dict:
    """An A/B script's run: run(workload, rounds) for each workload id in `wanted`
    (comma-separated), BLAS on `threads` and malloc's threshold fixed, the load average
    before and after each kept in its result as "load"; show(workload, result) prints
    it. The raw numbers of all, for keep_results."""
    malloc = fix_malloc()
    limiter = limit_blas(threads)  # noqa: F841 (kept for the run)
    print(f"{threads} threads, {malloc}, {rounds} rounds, {os.cpu_count()} CPUs")
    kept = {"threads": threads, "rounds": rounds, "workloads": {}}
    for workload in WORKLOADS:
        if workload.id not in wanted.split(","):
            continue
        before = load_average()
        result = run(workload, rounds)
        result["load"] = [before, load_average()]
        kept["workloads"][workload.id] = result
        show(workload, result)
    return kept

class TorchTrainer:
    def __init__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
        self.model = model.train()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        self.loss_fn = nn.CrossEntropyLoss()
        self.x, self.y = batch

    def step(self) -> float:
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def new_torch_model(workload: Workload) -> nn.Module:
    torch.manual_seed(SEED)
    return he_normal(workload.torch_model())


# ---- measuring


def timed_steps(step: Callable[[], float], n: int,
                settle_s: float = 0.0) -> tuple[list[float], list[float]]:
    """Seconds and loss of each of `n` steps, after a pause and one untimed step."""
    gc.collect()
    if settle_s:
        settle(step, settle_s)
    seconds, losses = [], []
    for _ in range(n):
        start = time.perf_counter()
        losses.append(step())
        seconds.append(time.perf_counter() - start)
    return seconds, losses


def netdsl_peak_bytes(lowered: Lowered, params: dict, batch) -> int:
    """Peak bytes traced by tracemalloc while building the executor and training 2 steps."""
    tracemalloc.start()
    try:
        trainer = NetdslTrainer(lowered, params, batch)
        for _ in range(2):
            trainer.step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's native start/stop messages (file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def torch_peak_bytes(workload: Workload, batch) -> int:
    """Peak of the CPU allocator's running total while building the model and training 2 steps."""
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer = TorchTrainer(new_torch_model(workload), batch)
        for _ in range(2):
            trainer.step()
    return allocator_peak(prof)


def allocator_peak(prof) -> int:
    """The largest running total of the CPU allocator in a memory profile."""
    peak, pending = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        if event.typed[0] == _EventType.Allocation:
            peak = max(peak, event.extra_fields.total_allocated)
        pending.extend(event.children)
    return peak


def run_workload(workload: Workload, repeats: int, steps: int | None, budget: float,
                 settle_s: float, target: str = "host") -> dict:
    x, y, source = make_batch(workload)
    lowered = lower(check_file(str(SPECS / workload.spec)), target)
    plan = lowered.plan
    params = initial_params(lowered.built, "he", seed=SEED)
    torch_batch = (torch.from_numpy(x), torch.from_numpy(y))
    sides = {"netdsl": NetdslTrainer(lowered, params, (x, y)),
             "torch": TorchTrainer(new_torch_model(workload), torch_batch)}
    counts = {"netdsl": sum(param.size for param in plan.params.values()),
              "torch": sum(p.numel() for p in sides["torch"].model.parameters())}
    if counts["netdsl"] != counts["torch"]:
        raise RuntimeError(f"{workload.id}: netdsl has {counts['netdsl']} parameters, "
                           f"the torch twin {counts['torch']}")

    warmup = {name: timed_steps(side.step, WARMUP) for name, side in sides.items()}
    if steps is None:
        per_pair = sum(statistics.median(s[-3:]) for s, _ in warmup.values())
        steps = max(MIN_STEPS, min(workload.steps, int(budget / (repeats * per_pair))))

    runs = {name: {"seconds": [], "losses": []} for name in sides}
    for r in range(repeats):
        for name in (("netdsl", "torch") if r % 2 == 0 else ("torch", "netdsl")):
            seconds, losses = timed_steps(sides[name].step, steps, settle_s)
            runs[name]["seconds"].append(seconds)
            runs[name]["losses"].append(losses)
    del sides
    gc.collect()

    result = {"id": workload.id, "title": workload.title, "batch": workload.batch,
              "data": source, "parameters": counts["netdsl"], "warmup": WARMUP,
              "steps": steps, "repeats": repeats}
    for name, run in runs.items():
        medians = [statistics.median(s) for s in run["seconds"]]
        result[name] = {
            "step_seconds": run["seconds"], "losses": run["losses"],
            "warmup_seconds": warmup[name][0], "warmup_losses": warmup[name][1],
            "repeat_medians_s": medians,
            "median_s": statistics.median(medians),
            "samples_per_s": workload.batch / statistics.median(medians),
        }
    ratios = [t / n for n, t in zip(result["netdsl"]["repeat_medians_s"],
                                    result["torch"]["repeat_medians_s"])]
    result["ratio"] = {"per_repeat": ratios, "median": statistics.median(ratios),
                       "min": min(ratios), "max": max(ratios)}
    result["netdsl"]["peak_bytes"] = netdsl_peak_bytes(lowered, params, (x, y))
    result["torch"]["peak_bytes"] = torch_peak_bytes(workload, torch_batch)
    return result


# ---- reporting


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(threads: int, repeats: int, malloc: str) -> dict:
    blas, blas_n = blas_pool()
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_model(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas, "blas_threads": blas_n,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "threads_requested": threads, "repeats": repeats, "malloc": malloc,
            "load_average_start": warn_if_busy("at the start")}


def print_report(env: dict, results: list[dict], elapsed: float) -> None:
    print(f"# Training step, netdsl ({env['target']} target) vs PyTorch eager, CPU float32, "
          f"{env['date']}")
    print()
    print(f"{env['cpu']}, {env['cores']} cores; Python {env['python']}; NumPy {env['numpy']} "
          f"({env['blas']}, {env['blas_threads']} threads); torch {env['torch']} "
          f"({env['torch_threads']} threads); {env['malloc']}; {env['repeats']} interleaved repeats, "
          f"medians of per-repeat medians; ratio = netdsl samples/s / torch samples/s; "
          f"load average {env['load_average_start']:.1f} at the start, "
          f"{env['load_average_end']:.1f} at the end")
    print()
    print("| workload | batch | netdsl ms/step | torch ms/step | netdsl samples/s "
          "| torch samples/s | ratio median [min–max] | peak MiB netdsl / torch | load before / after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ours, theirs, ratio = r["netdsl"], r["torch"], r["ratio"]
        print(f"| {r['id']} {r['title']} | {r['batch']} | {ours['median_s'] * 1e3:.2f} "
              f"| {theirs['median_s'] * 1e3:.2f} | {ours['samples_per_s']:,.0f} "
              f"| {theirs['samples_per_s']:,.0f} | {ratio['median']:.2f} "
              f"[{ratio['min']:.2f}–{ratio['max']:.2f}] "
              f"| {ours['peak_bytes'] / MIB:.1f} / {theirs['peak_bytes'] / MIB:.1f} "
              f"| {r['load_average']['before']:.2f} / {r['load_average']['after']:.2f} |")
    print()
    print("| workload | data | timed steps | netdsl loss first → last | torch loss first → last |")
    print("|---|---|---|---|---|")
    for r in results:
        cells = []
        for name in ("netdsl", "torch"):
            first, last = r[name]["losses"][0][0], r[name]["losses"][-1][-1]
            cells.append(f"{first:.4f} → {last:.4f}" + ("" if last < first else " (not falling)"))
        print(f"| {r['id']} | {r['data']} | {r['repeats']} x {r['steps']} | {cells[0]} "
              f"| {cells[1]} |")
    print()
    print(f"Total time {elapsed:.0f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated workload ids, e.g. W1,W3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed steps per repeat (default: per workload)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds of timed steps per workload, both sides (default 30)")
    parser.add_argument("--threads", type=int,
                        help="threads of both torch and NumPy's BLAS (default: BLAS's count)")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="pause before each timed block, seconds (default 0.3)")
    parser.add_argument("--json", type=Path, help="write the raw numbers to this file")
    parser.add_argument("--target", choices=("host", "native"), default="host",
                        help="netdsl's CPU target: host (NumPy calls) or native (generated C)")
    args = parser.parse_args()
    if args.repeats < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--repeats and --steps must be positive")
    chosen = WORKLOADS
    if args.only:
        wanted = {w.strip().upper() for w in args.only.split(",") if w.strip()}
        unknown = wanted - {w.id for w in WORKLOADS}
        if unknown:
            parser.error(f"unknown workload {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(w.id for w in WORKLOADS)}")
        chosen = [w for w in WORKLOADS if w.id in wanted]

    malloc = fix_malloc()
    threads = args.threads or blas_pool()[1] or os.cpu_count() or 1
    torch.set_num_threads(threads)
    limiter = limit_blas(threads)  # noqa: F841 (kept for the run)
    env = header(threads, args.repeats, malloc)
    env["target"] = args.target
    start = time.perf_counter()
    results = []
    for workload in chosen:
        began, load = time.perf_counter(), warn_if_busy(f"before {workload.id}")
        results.append(run_workload(workload, args.repeats, args.steps, args.budget,
                                    args.settle, args.target))
        results[-1]["load_average"] = {"before": load, "after": load_average()}
        print(f"{workload.id}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    elapsed = time.perf_counter() - start
    env["load_average_end"] = warn_if_busy("at the end")
    print_report(env, results, elapsed)
    kept = keep_results("train_speed", {"env": env, "elapsed_s": elapsed, "workloads": results},
                        also=args.json)
    print(f"Raw numbers: {kept}")


if __name__ == "__main__":
    main()
