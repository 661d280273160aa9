"""Training speed of netdsl on a GPU (CuPy) next to PyTorch CUDA eager and torch.compile.

    python benchmarks/gpu_speed.py [--only W1,W3] [--repeats 3] [--steps N] [--json FILE]
                                   [--device gpu|cpu] [--batch-scale F] [--no-compile]
                                   [--compile-limit S] [--executor fused|plain] [--tf32]
                                   [--cudnn-benchmark] [--no-profile] [--warmup N]

The six reference workloads of shared/workloads/README.md at their GPU batch sizes
(W1 4096, W2 1024, W3 256, W4 256, W5 256, W6 128), float32, one fixed batch per
workload from seed 0 (W1: the scikit-learn digits scaled to [0, 1], repeated to fill the
batch; the others synthetic). netdsl runs the specs in benchmarks/specs/ on CuPy,
lowered for the cuda target (elementwise runs as generated CUDA kernels, inside the
recurrences of W4 and W5 at every time step), as training on a GPU runs them. PyTorch
runs the twins that
train_speed.py (W1-W3, W6) and sequence_speed.py (W4, W5: nn.LSTM / nn.RNN and a Linear
read-out) define, on the same device, eagerly and, unless --no-compile, through
torch.compile(model) (the optimiser stays eager). Initialisation, losses and optimisers
are those of the CPU benchmarks: He-normal weights, softmax cross-entropy and SGD with
momentum 0.9 at lr 0.01 for W1-W3 and W6; the default initialisation and Adam at lr 1e-3
for W4 and W5. One training step:

    netdsl: forward (training), backward, optimiser step
    torch:  zero_grad, forward, loss, backward, optimiser step

Neither side reads its loss back inside a step, so the host may run ahead of the GPU,
as a training loop that logs every so often does. TF32 is off on both sides unless
--tf32 (PyTorch's cuDNN convolutions use it by default, CuPy's GEMMs do not); cuDNN's
autotuner stays off, PyTorch's default, unless --cudnn-benchmark.

Timing. Each side is warmed up first (--warmup steps, 5 by default; CuPy compiles its
kernels and torch.compile its graphs in the first one, whose time is reported as the
compile time). Then, per repeat, each side runs one untimed step and a block of N timed
steps, the sides one after the other in an order that rotates between repeats, so slow
drifts of the machine hit all of them. Inside a block a CUDA event is recorded on the
side's own stream before the first step and after each step (cupy.cuda.Event for netdsl,
torch.cuda.Event for PyTorch; both run on the legacy default stream), with no
synchronisation until the block ends; a step's time is the elapsed time between its two
events, so once the queue is in steady state it is the larger of the host's time to
issue the step and the GPU's time to run it. The wall time of the whole block (between
two device synchronisations) is recorded too. Each repeat gives each side the median of
its step times and a ratio netdsl samples/s over torch samples/s (above 1: netdsl is
faster); the table shows the medians over the repeats and the ratio's median and range.
N is --steps, or what fits --budget seconds of timed steps per workload (between 7 and
20 steps per repeat). With --device cpu the same harness runs NumPy against PyTorch on
the CPU and times each step with perf_counter (a step there ends when its work is done).

Kernel launches. After every workload is timed, a few steps of each side (3, after the
warm-up) run under torch.profiler with ProfilerActivity.CUDA (and CPU). The profiler's CUPTI
tracing records every kernel the process runs, CuPy's included; its trace is exported
and its events counted by category: "kernel" (launches), "gpu_memcpy" and "gpu_memset"
(copies and fills, counted apart), each divided by the steps profiled. Profiling comes
last so that CUPTI cannot slow any timed step.

Peak memory. Each side is built afresh and trains two steps (the second is the steady
state: momentum or Adam buffers exist, every activation and gradient is live at its
peak) while its allocator is watched; the peak is counted above what was allocated
before the build (the input batch, already on the device, is not counted):

    netdsl: CuPy's default memory pool; cupy.cuda.set_allocator is pointed at a function
            that calls the pool's malloc and records pool.used_bytes() after each
            allocation, so the maximum of the bytes in use (rounded up to the pool's
            512-byte units) is seen at every allocation, which is where peaks occur.
    torch:  torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats().

Both count parameters, gradients, optimiser state, activations, saved values,
temporaries and the random generator's state allocated by the framework's allocator;
neither counts library workspaces allocated outside it or before the build (cuBLAS's,
made during the timing), nor the CUDA context. No peak is given for torch.compile (its
model was built and compiled during the timing).

Correctness check: the loss of the first and of the last timed step of each side; with
one fixed batch both must go down. The JSON also holds each side's loss at its initial
parameters (the first warm-up step), which a smoke run at tiny batches compares with
instead: a few SGD steps with momentum on a batch of 2 are noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the CPU benchmarks beside this file, when imported
    sys.path.insert(0, str(HERE))

import sequence_speed  # noqa: E402  the W4/W5 workloads, their batches and twins' shapes
import train_speed  # noqa: E402  the W1-W3/W6 workloads, their batches and torch twins
from isolation import blas_pool, limit_blas  # noqa: E402
from netdsl.driver import check_file  # noqa: E402
from netdsl.errors import SpecError  # noqa: E402
from netdsl.lower import Lowered, lower  # noqa: E402
from netdsl.runtime.execute import Executor  # noqa: E402
from netdsl.runtime.init import initial_params  # noqa: E402
from netdsl.runtime.optim import make_optimizer  # noqa: E402

SPECS = HERE / "specs"
SEED = 0
GPU_BATCH = {"W1": 4096, "W2": 1024, "W3": 256, "W4": 256, "W5": 256, "W6": 128}
WARMUP = 5
MIN_STEPS, MAX_STEPS = 7, 20
PROFILE_STEPS = 3
MEMORY_STEPS = 2
MIB = 2 ** 20
SIDES = ("netdsl", "torch", "compiled")


# ---- workloads


@dataclass(frozen=True)
class Job:
    """One workload as this benchmark runs it."""

    id: str
    title: str
    spec: str
    batch: int
    optimizer: str          # "sgd" or "adam"
    settings: dict          # the optimiser's settings, lr included
    init: str               # netdsl's initialisation scheme
    source: Any             # train_speed.Workload or sequence_speed.Workload

    @property
    def lr(self) -> float:
        return self.settings["lr"]

    @property
    def recurrent(self) -> bool:
        return isinstance(self.source, sequence_speed.Workload)


def jobs(scale: float = 1.0) -> list[Job]:
    """W1..W6 at their GPU batch sizes times `scale` (at least 2, for batchnorm)."""
    found = []
    sgd = {"lr": train_speed.LR, "momentum": train_speed.MOMENTUM}
    for w in train_speed.WORKLOADS:
        found.append(Job(w.id, w.title, w.spec, _scaled(GPU_BATCH[w.id], scale), "sgd", sgd,
                         "he", w))
    for w in sequence_speed.WORKLOADS:
        found.append(Job(w.id, w.title, w.spec, _scaled(GPU_BATCH[w.id], scale), "adam",
                         {"lr": sequence_speed.LR}, "auto", w))
    return sorted(found, key=lambda j: j.id)


def _scaled(batch: int, scale: float) -> int:
    return max(2, int(round(batch * scale)))


def make_batch(job: Job) -> tuple[dict[str, np.ndarray], str]:
    """The fixed batch {x, y} (float32 inputs, int64 labels), and where it comes from."""
    if job.recurrent:
        batch = sequence_speed.make_batch(dataclasses.replace(job.source, batch=job.batch))
        return {"x": batch["x"], "y": batch["y"].astype(np.int64)}, "synthetic"
    x, y, source = train_speed.make_batch(dataclasses.replace(job.source, batch=job.batch))
    if len(x) < job.batch:  # the digits (1,797 of them) repeated to fill a GPU batch
        rows = np.arange(job.batch) % len(x)
        x, y, source = x[rows], y[rows], f"{source} (repeated to fill the batch)"
    return {"x": np.ascontiguousarray(x), "y": y.astype(np.int64)}, source


class RecurrentTwin(nn.Module):
    """sequence_speed's PyTorch side as one module (so that torch.compile can take it):
    nn.LSTM or nn.RNN, then a Linear read-out of the last step or of every step."""

    def __init__(self, w):
        super().__init__()
        self.rnn = w.torch_cell(w.inputs, w.hidden, batch_first=True)
        self.head = nn.Linear(w.hidden, w.classes)
        self.many_to_one = w.many_to_one

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1] if self.many_to_one else out)


def torch_model(job: Job) -> nn.Module:
    """The twin, with the CPU benchmarks' seeded initialisation (on the CPU)."""
    if job.recurrent:
        torch.manual_seed(SEED)
        return RecurrentTwin(job.source)
    return train_speed.new_torch_model(job.source)


def lowered_of(job: Job, choice: str) -> tuple[Lowered, str]:
    """The workload's spec lowered as training on a GPU lowers it (the cuda target: its
    elementwise runs as generated kernels), or with --executor plain for the host target
    (no generated kernels); and how the report names it."""
    target = "host" if choice == "plain" else "cuda"
    return lower(check_file(str(SPECS / job.spec)), target), f"Executor ({target} target)"


# ---- the device: array module, synchronisation, clocks


class HostEvent:
    """A timestamp with the interface of a CUDA event, for the CPU."""

    def record(self) -> None:
        self.t = time.perf_counter()


class Device:
    """Where both sides run: numpy and torch on the CPU, or cupy and torch on CUDA."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "gpu":
            from netdsl.runtime.device import array_module

            # cupy, or a SpecError saying what is missing
            self.cupy = self.xp = array_module("gpu")
            if not torch.cuda.is_available():
                raise SystemExit("--device gpu: torch sees no CUDA device")
            self.torch = torch.device("cuda")
        else:
            self.xp, self.cupy, self.torch = np, None, torch.device("cpu")

    @property
    def gpu(self) -> bool:
        return self.kind == "gpu"

    def sync(self) -> None:
        if self.gpu:
            self.cupy.cuda.Device().synchronize()
            torch.cuda.synchronize()

    def event(self, clock: str):
        if not self.gpu:
            return HostEvent()
        if clock == "cupy":
            return self.cupy.cuda.Event()  # timing enabled by default
        return torch.cuda.Event(enable_timing=True)

    def elapsed(self, clock: str, start, end) -> float:
        """Seconds between two recorded events (after a synchronisation)."""
        if not self.gpu:
            return end.t - start.t
        if clock == "cupy":
            return self.cupy.cuda.get_elapsed_time(start, end) / 1e3
        return start.elapsed_time(end) / 1e3


# ---- the sides


class NetdslSide:
    clock = "cupy"

    def __init__(self, job: Job, lowered: Lowered, params: dict, batch: dict, device: Device):
        xp = self.xp = device.xp
        self.executor = Executor(lowered, params, seed=SEED, xp=xp)
        self.optimizer = make_optimizer(job.optimizer, dict(job.settings),
                                        self.executor.flat_params)
        self.backward = lowered.backward()
        [self.loss_node] = lowered.plan.losses.values()
        self.lr = job.lr
        self.batch = batch  # already device arrays of the executor's dtypes

    def step(self, keep: bool = False):
        out = self.executor.forward(self.batch, True)
        self.executor.backward(self.backward)
        self.optimizer.step(self.executor.flat_grads, self.lr)
        # a copy, in case a later step reuses the loss's buffer; no host synchronisation
        return self.xp.array(out[self.loss_node], copy=True) if keep else None

    @staticmethod
    def value(handle) -> float:
        return float(handle)


class TorchSide:
    clock = "torch"

    def __init__(self, job: Job, model: nn.Module, batch: dict):
        self.model = model.train()
        params = list(model.parameters())
        if job.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, **job.settings)
        else:
            self.optimizer = torch.optim.Adam(params, **job.settings)
        self.x, self.y = batch["x"], batch["y"]

    def step(self, keep: bool = False):
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(self.x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        return loss.detach() if keep else None

    @staticmethod
    def value(handle) -> float:
        return handle.item()


def netdsl_side(job: Job, lowered: Lowered, params: dict, host_batch: dict,
                device: Device) -> NetdslSide:
    batch = {k: device.xp.asarray(v) for k, v in host_batch.items()}
    return NetdslSide(job, lowered, params, batch, device)


def torch_batch(host_batch: dict, device: Device) -> dict:
    return {k: torch.from_numpy(v).to(device.torch) for k, v in host_batch.items()}


def torch_side(job: Job, device: Device, batch: dict, compiled: bool = False) -> TorchSide:
    model = torch_model(job).to(device.torch)
    return TorchSide(job, torch.compile(model) if compiled else model, batch)


# ---- measuring


def warm_up(side, steps: int, device: Device) -> tuple[list[float], float]:
    """Wall seconds of each of `steps` steps, synchronised one by one, and the loss of
    the first (at the initial parameters)."""
    seconds, initial = [], None
    for i in range(steps):
        start = time.perf_counter()
        handle = side.step(keep=i == 0)
        device.sync()
        seconds.append(time.perf_counter() - start)
        if i == 0:
            initial = side.value(handle)
    return seconds, initial


class CompileTimeout(Exception):
    pass


class Limit:
    """What time_limit hands out: whether the limit expired (a compiler may catch the
    CompileTimeout and raise its own error instead)."""

    expired = False


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CompileTimeout in the main thread after `seconds` (no limit where SIGALRM
    is missing). The exception arrives between two Python bytecodes, so a compiler busy
    in native code stops when it next returns to Python."""
    limit = Limit()
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield limit
        return

    def expire(signum, frame):
        limit.expired = True
        raise CompileTimeout(f"took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield limit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed_block(side, n: int, device: Device) -> dict:
    """One untimed step, then `n` steps with an event after each: per-step seconds, the
    block's wall seconds, and the losses of its first and last steps."""
    side.step()
    device.sync()
    events = [device.event(side.clock) for _ in range(n + 1)]
    start = time.perf_counter()
    events[0].record()
    first = last = None
    for i in range(n):
        handle = side.step(keep=i in (0, n - 1))
        events[i + 1].record()
        if i == 0:
            first = handle
        if i == n - 1:
            last = handle
    device.sync()
    wall = time.perf_counter() - start
    seconds = [device.elapsed(side.clock, a, b) for a, b in zip(events, events[1:])]
    return {"seconds": seconds, "wall_s": wall, "first_loss": side.value(first),
            "last_loss": side.value(last)}


def launch_counts(trace_events: list, steps: int) -> dict:
    """Kernels, copies and fills per step among the complete ("X") events of a Kineto
    chrome trace: categories "kernel", "gpu_memcpy" and "gpu_memset"."""
    counts = Counter(str(e.get("cat", "")).lower() for e in trace_events if e.get("ph") == "X")
    return {"kernels": counts["kernel"] / steps, "memcpy": counts["gpu_memcpy"] / steps,
            "memset": counts["gpu_memset"] / steps}


def count_launches(side, device: Device, steps: int = PROFILE_STEPS) -> dict:
    """Kernel launches, copies and fills per training step, seen by CUPTI."""
    from torch.profiler import ProfilerActivity, profile

    side.step()
    device.sync()
    with train_speed.quiet_stderr(), \
            profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            side.step()
        device.sync()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    return launch_counts(events, steps)


def track_pool_peak(pool, set_allocator, run: Callable[[], Any],
                    previous=None) -> tuple[Any, int]:
    """Run `run()` with CuPy's allocator pointed at `pool.malloc` through a function that
    records pool.used_bytes() after every allocation; return run's result and the peak
    bytes in use above those in use before. Afterwards the allocator is `previous`
    (cupy.cuda.get_allocator() before the call), or the pool's malloc, CuPy's default."""
    base = pool.used_bytes()
    peak = [base]

    def malloc(size):
        memory = pool.malloc(size)
        used = pool.used_bytes()
        if used > peak[0]:
            peak[0] = used
        return memory

    set_allocator(malloc)
    try:
        result = run()
    finally:
        set_allocator(previous if previous is not None else pool.malloc)
    return result, peak[0] - base


def netdsl_peak(make: Callable[[], NetdslSide], device: Device) -> tuple[NetdslSide, int]:
    cupy = device.cupy
    gc.collect()
    device.sync()

    def run():
        side = make()
        for _ in range(MEMORY_STEPS):
            side.step()
        device.sync()
        return side

    return track_pool_peak(cupy.get_default_memory_pool(), cupy.cuda.set_allocator, run,
                           cupy.cuda.get_allocator())


def torch_peak(make: Callable[[], TorchSide], device: Device) -> tuple[TorchSide, int]:
    gc.collect()
    device.sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    side = make()
    for _ in range(MEMORY_STEPS):
        side.step()
    device.sync()
    return side, torch.cuda.max_memory_allocated() - base


def choose_steps(warmups: dict, repeats: int, budget: float) -> int:
    per_round = sum(statistics.median(s[-3:]) for s in warmups.values())
    return max(MIN_STEPS, min(MAX_STEPS, int(budget / (repeats * max(per_round, 1e-9)))))


def run_workload(job: Job, device: Device, args) -> tuple[dict, dict]:
    """Time the sides of one workload; returns the result and what pass two needs."""
    host, source = make_batch(job)
    lowered, executor_name = lowered_of(job, args.executor)
    plan = lowered.plan
    params = initial_params(lowered.built, job.init, seed=SEED)
    tbatch = torch_batch(host, device)
    sides = {"netdsl": netdsl_side(job, lowered, params, host, device),
             "torch": torch_side(job, device, tbatch)}
    counts = {"netdsl": sum(p.size for p in plan.params.values()),
              "torch": sum(p.numel() for p in sides["torch"].model.parameters())}
    if not job.recurrent and counts["netdsl"] != counts["torch"]:
        raise RuntimeError(f"{job.id}: netdsl has {counts['netdsl']} parameters, "
                           f"the torch twin {counts['torch']}")
    result = {"id": job.id, "title": job.title, "batch": job.batch, "data": source,
              "optimizer": job.optimizer, "executor": executor_name,
              "parameters": counts, "repeats": args.repeats}

    warmups, initial = {}, {}
    for name, side in sides.items():
        warmups[name], initial[name] = warm_up(side, args.warmup, device)
    if args.compile:
        limit = Limit()
        try:
            with time_limit(args.compile_limit) as limit:
                side = torch_side(job, device, tbatch, compiled=True)
                warmups["compiled"], initial["compiled"] = warm_up(side, args.warmup, device)
            sides["compiled"] = side
            result["compile_s"] = warmups["compiled"][0]
        except Exception as exc:  # noqa: BLE001  any compiler failure is a result here
            message = str(exc).strip().splitlines()
            result["compile_error"] = f"{type(exc).__name__}: {message[0] if message else ''}"
            if limit.expired:
                result["compile_error"] = (f"stopped after --compile-limit "
                                           f"{args.compile_limit:g} s ({result['compile_error']})")
            print(f"{job.id}: torch.compile failed: {result['compile_error']}", file=sys.stderr)
            gc.collect()
    steps = args.steps or choose_steps(warmups, args.repeats, args.budget)
    result["warmup"], result["steps"] = args.warmup, steps

    runs = {name: [] for name in sides}
    names = list(sides)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(timed_block(sides[name], steps, device))

    for name, blocks in runs.items():
        medians = [statistics.median(b["seconds"]) for b in blocks]
        median = statistics.median(medians)
        result[name] = {
            "executor": executor_name if name == "netdsl" else
            ("torch.compile" if name == "compiled" else "eager"),
            "step_seconds": [b["seconds"] for b in blocks],
            "block_wall_s": [b["wall_s"] for b in blocks],
            "wall_per_step_s": statistics.median(b["wall_s"] / steps for b in blocks),
            "warmup_seconds": warmups[name],
            "repeat_medians_s": medians, "median_s": median,
            "samples_per_s": job.batch / median,
            "initial_loss": initial[name],
            "first_loss": blocks[0]["first_loss"], "last_loss": blocks[-1]["last_loss"],
            "losses": [[b["first_loss"], b["last_loss"]] for b in blocks],
            "kernels_per_step": None, "memcpy_per_step": None, "memset_per_step": None,
            "peak_bytes": None,
        }
    for other in ("torch", "compiled"):
        if other in runs:
            ratios = [t / n for n, t in zip(result["netdsl"]["repeat_medians_s"],
                                            result[other]["repeat_medians_s"])]
            result["ratio" if other == "torch" else "ratio_compiled"] = {
                "per_repeat": ratios, "median": statistics.median(ratios),
                "min": min(ratios), "max": max(ratios)}
    later = {"job": job, "lowered": lowered, "params": params, "host": host,
             "compiled": sides.get("compiled")}
    del sides
    gc.collect()
    return result, later


def profile_workload(result: dict, later: dict, device: Device) -> None:
    """Pass two, on the GPU: peak memory and launches per step of fresh sides."""
    job = later["job"]

    def launches(name, side):
        counts = count_launches(side, device)
        for key in ("kernels", "memcpy", "memset"):
            result[name][f"{key}_per_step"] = counts[key]

    side, peak = netdsl_peak(lambda: netdsl_side(job, later["lowered"], later["params"],
                                                 later["host"], device), device)
    result["netdsl"]["peak_bytes"] = peak
    launches("netdsl", side)
    del side
    tbatch = torch_batch(later["host"], device)
    side, peak = torch_peak(lambda: torch_side(job, device, tbatch), device)
    result["torch"]["peak_bytes"] = peak
    launches("torch", side)
    del side
    if later["compiled"] is not None:
        launches("compiled", later["compiled"])
    later.clear()
    gc.collect()


# ---- reporting


def versions(device: Device) -> dict:
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "device": device.kind, "python": platform.python_version(),
           "numpy": np.__version__, "torch": torch.__version__, "host": platform.node(),
           "cpu_cores": os.cpu_count()}
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                       capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if device.gpu:
        cupy = device.cupy
        runtime = cupy.cuda.runtime
        env.update({"device_name": torch.cuda.get_device_name(), "cupy": cupy.__version__,
                    "cuda_runtime_cupy": runtime.runtimeGetVersion(),
                    "cuda_driver": runtime.driverGetVersion(),
                    "cuda_torch": torch.version.cuda,
                    "cudnn_torch": torch.backends.cudnn.version()})
    else:
        env.update({"device_name": train_speed.cpu_model(), "blas": blas_pool()[0],
                    "torch_threads": torch.get_num_threads()})
    return env


def _ms(side: dict | None) -> str:
    return f"{side['median_s'] * 1e3:.2f}" if side else "–"


def _rate(side: dict | None) -> str:
    return f"{side['samples_per_s']:,.0f}" if side else "–"


def _ratio(ratio: dict | None) -> str:
    if not ratio:
        return "–"
    return f"{ratio['median']:.2f} [{ratio['min']:.2f}–{ratio['max']:.2f}]"


def _count(side: dict | None, key: str) -> str:
    if not side or side.get(key) is None:
        return "n/a"
    return f"{side[key]:.0f}" if side[key] == int(side[key]) else f"{side[key]:.1f}"


def _mib(side: dict | None) -> str:
    if not side or side.get("peak_bytes") is None:
        return "n/a"
    return f"{side['peak_bytes'] / MIB:.1f}"


def print_report(env: dict, results: list[dict], elapsed: float) -> None:
    where = "CuPy vs PyTorch CUDA" if env["device"] == "gpu" else "NumPy vs PyTorch (CPU)"
    print(f"# Training step, netdsl ({where}), float32, {env['date']}")
    print()
    details = [env["device_name"], f"Python {env['python']}", f"NumPy {env['numpy']}",
               f"torch {env['torch']}"]
    if env["device"] == "gpu":
        details += [f"CuPy {env['cupy']}", f"CUDA runtime {env['cuda_runtime_cupy']} (CuPy), "
                    f"{env['cuda_torch']} (torch), driver {env['cuda_driver']}",
                    "TF32 " + ("on" if env.get("tf32") else "off")]
    print("; ".join(details) + f"; {env['repeats']} interleaved repeats, medians of per-repeat "
          "medians; ratio = netdsl samples/s / torch samples/s (above 1: netdsl faster)")
    print()
    print("| workload | batch | netdsl ms | torch ms | compiled ms | netdsl samples/s "
          "| torch samples/s | ratio vs eager [min–max] | ratio vs compiled "
          "| kernels/step netdsl / torch / compiled | memcpy+memset/step netdsl / torch "
          "| peak MiB netdsl / torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ours, eager, comp = r["netdsl"], r["torch"], r.get("compiled")
        copies = []
        for side in (ours, eager):
            if side.get("memcpy_per_step") is None:
                copies.append("n/a")
            else:
                copies.append(f"{side['memcpy_per_step'] + side['memset_per_step']:.0f}")
        print(f"| {r['id']} {r['title']} | {r['batch']} | {_ms(ours)} | {_ms(eager)} "
              f"| {_ms(comp)} | {_rate(ours)} | {_rate(eager)} | {_ratio(r.get('ratio'))} "
              f"| {_ratio(r.get('ratio_compiled'))} "
              f"| {_count(ours, 'kernels_per_step')} / {_count(eager, 'kernels_per_step')} / "
              f"{_count(comp, 'kernels_per_step')} | {copies[0]} / {copies[1]} "
              f"| {_mib(ours)} / {_mib(eager)} |")
    print()
    print("| workload | executor | data | timed steps | netdsl loss first → last "
          "| torch loss first → last | compiled loss first → last / compile |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        cells = []
        for name in SIDES:
            side = r.get(name)
            if side is None:
                cells.append(r.get("compile_error", "–") if name == "compiled" else "–")
                continue
            first, last = side["first_loss"], side["last_loss"]
            cell = f"{first:.4f} → {last:.4f}" + ("" if last < first else " (not falling)")
            if name == "compiled":
                cell += f"; compiled in {r['compile_s']:.1f} s"
            cells.append(cell)
        print(f"| {r['id']} | {r['executor']} | {r['data']} | {r['repeats']} x {r['steps']} "
              f"| {cells[0]} | {cells[1]} | {cells[2]} |")
    print()
    print(f"Total time {elapsed:.0f} s.")


# ---- main


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated workload ids, e.g. W1,W3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int,
                        help="timed steps per repeat (default: what --budget allows, 7 to 20)")
    parser.add_argument("--warmup", type=int, default=WARMUP,
                        help=f"untimed steps per side first (default {WARMUP})")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed steps per workload, all sides (default 20)")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--batch-scale", type=float, default=1.0,
                        help="multiply the GPU batch sizes (0.01 for a smoke run)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave torch.compile out")
    parser.add_argument("--compile-limit", type=float, default=300.0,
                        help="seconds torch.compile may take per workload (default 300)")
    parser.add_argument("--executor", choices=("fused", "plain"), default="fused",
                        help="netdsl with generated kernels for its elementwise chains "
                             "(fused, as training on a GPU runs) or without (plain)")
    parser.add_argument("--tf32", action="store_true",
                        help="let both sides use TF32 for float32 GEMMs and convolutions")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN pick PyTorch's convolution algorithms by timing them")
    parser.add_argument("--threads", type=int,
                        help="CPU threads of torch and NumPy's BLAS with --device cpu "
                             "(default: BLAS's count)")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip pass two (kernel launches and peak memory)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--repeats, --warmup and --steps must be positive")
    if not args.batch_scale > 0:
        parser.error("--batch-scale must be positive")
    args.chosen = jobs(args.batch_scale)
    if args.only:
        wanted = {w.strip().upper() for w in args.only.split(",") if w.strip()}
        unknown = wanted - {j.id for j in args.chosen}
        if unknown:
            parser.error(f"unknown workload {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(j.id for j in args.chosen)}")
        args.chosen = [j for j in args.chosen if j.id in wanted]
    return args


def set_precision(tf32: bool) -> None:
    """TF32 for float32 matmuls and convolutions on both sides, or on neither."""
    os.environ["CUPY_TF32"] = "1" if tf32 else "0"  # read by CuPy at its first GEMM
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def main(argv=None) -> int:
    args = parse(argv)
    if args.device == "gpu":
        set_precision(args.tf32)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    limiter = None
    if args.device == "cpu":
        threads = args.threads or blas_pool()[1] or os.cpu_count() or 1
        torch.set_num_threads(threads)
        limiter = limit_blas(threads)  # noqa: F841  kept for the run
    try:
        device = Device(args.device)
    except SpecError as exc:  # no CuPy, or no device it can reach
        print(f"gpu_speed: {exc}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 2
    env = versions(device)
    env.update({"repeats": args.repeats, "batch_scale": args.batch_scale, "tf32": args.tf32,
                "cudnn_benchmark": args.cudnn_benchmark,
                "compile": args.compile, "executor_choice": args.executor})
    start = time.perf_counter()
    results, later = [], []
    for job in args.chosen:
        began = time.perf_counter()
        result, rest = run_workload(job, device, args)
        results.append(result)
        later.append(rest)
        print(f"{job.id}: timed in {time.perf_counter() - began:.0f} s ({result['executor']})",
              file=sys.stderr)
    if device.gpu and args.profile:
        for result, rest in zip(results, later):
            began = time.perf_counter()
            profile_workload(result, rest, device)
            print(f"{result['id']}: launches and memory in {time.perf_counter() - began:.0f} s",
                  file=sys.stderr)
    del later
    elapsed = time.perf_counter() - start
    print_report(env, results, elapsed)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "elapsed_s": elapsed, "workloads": results},
                                        indent=1, default=_jsonable))
    return 0


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    sys.exit(main())
