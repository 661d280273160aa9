"""Training speed of the recurrent workloads W4 (LSTM) and W5 (Elman) against PyTorch.

One training step = forward, backward through time and an Adam update, on a fixed
synthetic batch (seed 0). netdsl and PyTorch (nn.LSTM / nn.RNN with a Linear read-out)
run in the same process on the same number of threads, interleaved, each timed block
after a pause (isolation.settle). The ratio is netdsl's samples/s over PyTorch's, per
repeat; the median and range over repeats are reported. Also: the time to compile an
LSTM spec (check and plan), which does not depend on the sequence length.

    python benchmarks/sequence_speed.py [--repeats 5] [--steps 10] [--json FILE]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isolation import (blas_pool, fix_malloc, keep_results, limit_blas, load_average, settle,
                       warn_if_busy)
from netdsl.driver import check_file, check_text
from netdsl.lower import lower
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.optim import make_optimizer

SPECS = Path(__file__).resolve().parent / "specs"
LR = 1e-3


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    spec: str
    batch: int
    steps: int           # sequence length
    inputs: int
    hidden: int
    classes: int
    many_to_one: bool
    torch_cell: type


WORKLOADS = [
    Workload("W4", "LSTM 128, many-to-one", "w4_lstm.net", 32, 50, 32, 128, 10, True, nn.LSTM),
    Workload("W5", "Elman 64, many-to-many", "w5_elman.net", 32, 100, 16, 64, 16, False, nn.RNN),
]


def make_batch(w: Workload) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((w.batch, w.steps, w.inputs), dtype=np.float32)
    y = rng.integers(0, w.classes, w.batch if w.many_to_one else (w.batch, w.steps))
    return {"x": x, "y": y}


def lowered_spec(w: Workload, target: str = "host"):
    return lower(check_file(str(SPECS / w.spec)), target)


class Ours:
    def __init__(self, w: Workload, batch: dict, target: str = "host", lowered=None):
        lowered = lowered or lowered_spec(w, target)
        self.plan = lowered.plan
        self.ex = Executor(lowered, initial_params(lowered.built, "auto", 0))
        self.ex.lodge_values = True  # as runtime.train's Trainer runs it
        self.optimizer = make_optimizer("adam", {"lr": LR}, self.ex.flat_params)
        self.backward, self.batch = lowered.backward(), batch

    def step(self) -> float:
        out = self.ex.forward(self.batch, True)
        self.ex.backward(self.backward)
        self.optimizer.step(self.ex.flat_grads, LR)
        return float(out["loss"])


class Theirs:
    def __init__(self, w: Workload, batch: dict):
        torch.manual_seed(0)
        self.rnn = w.torch_cell(w.inputs, w.hidden, batch_first=True)
        self.head = nn.Linear(w.hidden, w.classes)
        params = list(self.rnn.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.Adam(params, lr=LR)
        self.x, self.y = torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"])
        self.w = w

    def step(self) -> float:
        self.optimizer.zero_grad()
        out, _ = self.rnn(self.x)
        logits = self.head(out[:, -1] if self.w.many_to_one else out)
        loss = nn.functional.cross_entropy(logits.reshape(-1, self.w.classes), self.y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        return loss.item()


def seconds_per_step(trainer, steps: int) -> float:
    settle(trainer.step, 0.5)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes_ours(w: Workload, batch: dict, target: str = "host") -> int:
    """Peak bytes traced while building the executor and training 2 steps; the spec is
    checked and lowered before (a compile step, as train_speed.py counts it)."""
    lowered = lowered_spec(w, target)
    tracemalloc.start()
    try:
        trainer = Ours(w, batch, target, lowered)
        for _ in range(2):
            trainer.step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_bytes_theirs(w: Workload, batch: dict) -> int:
    from torch.profiler import ProfilerActivity, profile

    from train_speed import allocator_peak, quiet_stderr

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer = Theirs(w, batch)
        for _ in range(2):
            trainer.step()
    return allocator_peak(prof)


def compile_seconds() -> float:
    """Check and lower an LSTM spec: the plan holds one step, so the time is the same for
    a sequence of 1,000 steps as for one of 10."""
    text = (SPECS / "w4_lstm.net").read_text()
    start = time.perf_counter()
    lowered = lower(check_text(text))
    Executor(lowered, initial_params(lowered.built, "auto", 0))
    return time.perf_counter() - start


def run(w: Workload, repeats: int, steps: int, target: str = "host") -> dict:
    batch = make_batch(w)
    ours, theirs = Ours(w, batch, target), Theirs(w, batch)
    ratios, ours_ms, theirs_ms = [], [], []
    for _ in range(repeats):
        a = seconds_per_step(ours, steps)
        b = seconds_per_step(theirs, steps)
        ours_ms.append(a * 1e3)
        theirs_ms.append(b * 1e3)
        ratios.append(b / a)
    return {"id": w.id, "title": w.title, "batch": w.batch, "steps": w.steps,
            "netdsl_ms": statistics.median(ours_ms), "torch_ms": statistics.median(theirs_ms),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "per_repeat": {"ratio": ratios, "netdsl_ms": ours_ms, "torch_ms": theirs_ms},
            "netdsl_samples_s": w.batch / statistics.median(ours_ms) * 1e3,
            "torch_samples_s": w.batch / statistics.median(theirs_ms) * 1e3,
            "netdsl_peak_mib": peak_bytes_ours(w, batch, target) / 2**20,
            "torch_peak_mib": peak_bytes_theirs(w, batch) / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="W4 or W5")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--target", choices=("host", "native"), default="host",
                        help="netdsl's CPU target: host (NumPy calls) or native (generated C)")
    args = parser.parse_args(argv)
    malloc = fix_malloc()
    torch.set_num_threads(args.threads)
    limiter = limit_blas(args.threads)  # noqa: F841  kept alive for the whole run
    library, threads = blas_pool()
    print(f"{args.threads} threads (torch), {library} {threads} threads (numpy); {malloc}; "
          f"{args.repeats} interleaved repeats of {args.steps} steps")
    results = []
    for w in WORKLOADS:
        if args.only and w.id != args.only:
            continue
        load = warn_if_busy(f"before {w.id}")
        r = run(w, args.repeats, args.steps, args.target)
        r["load_average"] = {"before": load, "after": load_average()}
        results.append(r)
        print(f"{r['id']} {r['title']}: netdsl {r['netdsl_ms']:.1f} ms, torch {r['torch_ms']:.1f} ms"
              f" per step; ratio {r['ratio']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]; "
              f"peak {r['netdsl_peak_mib']:.1f} vs {r['torch_peak_mib']:.1f} MiB; "
              f"load {load:.2f} before, {r['load_average']['after']:.2f} after")
    seconds = compile_seconds()
    print(f"compile an LSTM spec (any sequence length, T=1000 included): {seconds * 1e3:.0f} ms")
    kept = keep_results("sequence_speed", {"target": args.target, "results": results,
                                           "compile_s": seconds},
                        also=args.json)
    print(f"raw numbers: {kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
