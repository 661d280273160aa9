"""A dense layer's GEMMs chosen per shape by timing (runtime.native.dense's PICK) against
NumPy's BLAS for every one (NETDSL_DENSE_PICK=0), W1's training step in one process.

    python benchmarks/dense_pick_ab.py [--threads 1] [--pairs 200] [--wake] [--keep]

One trainer of the native target takes its steps with "pick" and "numpy" in turn, the
order rotated every round, so that the machine's load falls on both alike and both
multiply the same arrays (two trainers' arrays lie at other addresses, and OpenBLAS's
one-thread SGEMM took up to three times as long at some operand offsets than at
others). The choices are timed afresh in this process (a choices file
of its own), so that they fit this process's BLAS, and printed. With --wake a second
phase follows after one GEMM on two threads: OpenBLAS 0.3.31's one-thread SGEMM ran
about three times faster after that in a process that began on one thread (docs/cpu.md),
so the choices are timed again and the pairs run again. Prints per phase the medians
of wall and process CPU time a step, in how many rounds "pick" was the shorter (by
each), and the load average before and after. The runtime's own wake
(runtime.native.blas.WAKE) is off here, so that the first phase is the process as it
began; with --keep the raw numbers go to
benchmarks/results/.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import train_speed
from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.runtime.native import blas, dense, dense_choice
from netdsl.runtime.native.choice_file import ChoiceFile


def _trainer(workload):
    return train_speed.warmed_trainer(workload, steps=0)   # warmed below, each side


def _step(trainer, pick: bool) -> tuple[float, float]:
    dense.PICK = pick
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def _own_choices(folder: Path, phase: str) -> None:
    """Choices timed afresh, kept in a file of this phase's."""
    dense_choice.CHOICES = ChoiceFile(f"{phase}-{dense_choice.CHOICES_FILE}",
                                      dense_choice.CHOICES.valid, folder)
    dense._picked.clear()


def phase(workload, pairs: int) -> dict:
    trainer = _trainer(workload)
    sides = {"pick": (trainer, True), "numpy": (trainer, False)}
    for side in sides.values():   # warm-up: kernels compiled, choices timed
        for _ in range(5):
            _step(*side)
    before = load_average()
    names = list(sides)
    times = {name: {"wall": [], "cpu": []} for name in sides}
    won = {"wall": 0, "cpu": 0}
    for i in range(pairs):
        took = {}
        for name in names[i % 2:] + names[:i % 2]:
            took[name] = _step(*sides[name])
            times[name]["wall"].append(took[name][0])
            times[name]["cpu"].append(took[name][1])
        won["wall"] += took["pick"][0] < took["numpy"][0]
        won["cpu"] += took["pick"][1] < took["numpy"][1]
    return {"load": [before, load_average()],
            "choices": dict(dense_choice.choices()),
            "medians_ms": {name: {k: statistics.median(v) * 1e3 for k, v in t.items()}
                           for name, t in times.items()},
            "pick_won": won, "raw_s": times}


def _wake_blas(threads: int):
    """One SGEMM on two threads, then BLAS back on `threads`."""
    limit_blas(2)
    a = np.ones((128, 256), np.float32)
    a @ np.ones((256, 256), np.float32)
    return limit_blas(threads)


def _report(name: str, result: dict, pairs: int) -> None:
    m, won = result["medians_ms"], result["pick_won"]
    print(f"{name}: pick {m['pick']['wall']:.3f} ms (cpu {m['pick']['cpu']:.3f}), numpy "
          f"{m['numpy']['wall']:.3f} ms (cpu {m['numpy']['cpu']:.3f}); pick shorter in "
          f"{won['wall']} of {pairs} (cpu: {won['cpu']}); load {result['load'][0]:.2f} -> "
          f"{result['load'][1]:.2f}")
    for key, choice in sorted(result["choices"].items()):
        print(f"    {key}: {choice}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wake", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    [w1] = [w for w in train_speed.WORKLOADS if w.id == "W1"]
    print(f"W1, {args.threads} threads, {malloc}, {args.pairs} rounds")
    kept = {"threads": args.threads, "rounds": args.pairs, "phases": {}}
    previous = dense.PICK
    blas.WAKE = False
    with tempfile.TemporaryDirectory() as folder:
        try:
            _own_choices(Path(folder), "first")
            kept["phases"]["first"] = phase(w1, args.pairs)
            _report("as the process began", kept["phases"]["first"], args.pairs)
            if args.wake:
                limiter = _wake_blas(args.threads)  # noqa: F841
                _own_choices(Path(folder), "woken")
                kept["phases"]["woken"] = phase(w1, args.pairs)
                _report("after one two-thread GEMM", kept["phases"]["woken"], args.pairs)
        finally:
            dense.PICK = previous
    keep_results("dense_pick_ab", kept, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
