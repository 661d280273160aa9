"""W1's training step in fresh processes, one per block, the configurations in turn: what
a switch read once per process changes (runtime.native.blas's WAKE, NETDSL_BLAS_WAKE;
runtime.native.dense's PICK, NETDSL_DENSE_PICK).

    python benchmarks/dense_process_ab.py [--threads 1] [--rounds 8] [--steps 200] [--keep]

Each round starts one process per configuration (the order rotated every round):
"default" (the choice on, the wake off), "wake" (NETDSL_BLAS_WAKE=1) and "numpy"
(NETDSL_DENSE_PICK=0: NumPy's BLAS for every GEMM: the path before either).
Each process builds W1's native trainer, times its dense GEMMs' choices afresh (a
choices file of its own), takes 10 steps, then times --steps steps and reports their
medians of wall and process CPU time. Prints per configuration the median of the
processes' medians, in how many rounds "default" was the shorter than each other, and
the load average before and after; with --keep the raw numbers go to
benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from isolation import keep_results, load_average

CONFIGURATIONS = {"default": {}, "wake": {"NETDSL_BLAS_WAKE": "1"},
                  "numpy": {"NETDSL_DENSE_PICK": "0"}}


def child(threads: int, steps: int) -> None:
    """One process's block: prints {"wall": ms, "cpu": ms}, the medians of its steps."""
    import tempfile

    from isolation import fix_malloc, limit_blas
    import train_speed
    from netdsl.runtime.native import dense_choice
    from netdsl.runtime.native.choice_file import ChoiceFile

    fix_malloc()
    limiter = limit_blas(threads)  # noqa: F841 (kept for the run)
    dense_choice.CHOICES = ChoiceFile(dense_choice.CHOICES_FILE, dense_choice.CHOICES.valid,
                                      Path(tempfile.mkdtemp()))
    [w1] = [w for w in train_speed.WORKLOADS if w.id == "W1"]
    trainer = train_speed.warmed_trainer(w1, steps=10)
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(json.dumps({"wall": statistics.median(walls) * 1e3,
                      "cpu": statistics.median(cpus) * 1e3,
                      "choices": dict(dense_choice.choices())}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.threads, args.steps)
        return 0
    names = list(CONFIGURATIONS)
    results = {name: [] for name in names}
    before = load_average()
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("NETDSL_BLAS_WAKE", "NETDSL_DENSE_PICK")}
            env.update(CONFIGURATIONS[name])
            done = subprocess.run([sys.executable, __file__, "--child", "--threads",
                                   str(args.threads), "--steps", str(args.steps)],
                                  env=env, capture_output=True, text=True, check=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    after = load_average()
    print(f"W1, {args.threads} threads, {args.rounds} rounds of fresh processes, "
          f"{args.steps} steps each; load {before:.2f} -> {after:.2f}")
    for name in names:
        walls = [r["wall"] for r in results[name]]
        cpus = [r["cpu"] for r in results[name]]
        won = "" if name == "default" else (
            f"; default shorter in {sum(d['cpu'] < o['cpu'] for d, o in zip(results['default'], results[name]))}"
            f" of {args.rounds} by CPU, "
            f"{sum(d['wall'] < o['wall'] for d, o in zip(results['default'], results[name]))} by wall")
        print(f"{name:8s} wall {statistics.median(walls):.3f} ms, cpu "
              f"{statistics.median(cpus):.3f} ms (process medians: cpu "
              f"{min(cpus):.3f}-{max(cpus):.3f}){won}")
    keep_results("dense_process_ab", {"threads": args.threads, "rounds": args.rounds,
                                      "steps": args.steps, "load": [before, after],
                                      "results": results}, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
