"""W2's (LeNet-5's) dense GEMMs: each call of a training step on the native target, its
path and time, then each call's operands replayed alone with every candidate in turn.

    python benchmarks/w2_dense_gemms.py [--only W2] [--threads 2] [--steps 40]
        [--rounds 30] [--keep]

Part one: one warmed trainer (choices timed afresh in a file of the run's own) takes
--steps steps with ops.linear's dense_gemm wrapped; per call site (role: forward x W^T,
dW = gy^T x, dx = gy W; M x K x N; each operand's layout, n: rows contiguous, t: a
transpose's view; the pass's threads and BLAS's at the call; the path: the choice's
`numpy` or `own<k>`, k parts) the medians of the calling thread's CPU time and the wall
clock (µs). Part two: each call's operands replayed alone, the candidates alternating
in rotated order, --rounds rounds of 20 calls each: NumPy's GEMM with BLAS on one
thread (as within the step's pass) and on two, PyTorch's mm on one thread, the own GEMM
in one part and in two on the C pool, one-thread BLAS parts on the C pool (split_gemm's);
the thread's CPU time (for the pool's paths the caller's share) and the wall clock.
Then once more after one SGEMM on two threads (OpenBLAS's one-thread pace, docs/cpu.md
"W1's GEMMs on one thread"). Part three: one call at a time, BLAS on one thread, with
the caches warm and cold (a 4 MiB sweep before it), and through the seam (ops.linear's
dense_gemm within a pass) against np.matmul. Prints the load average at the start and end; with --keep
the raw numbers go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import train_speed
from isolation import fix_malloc, keep_results, limit_blas, load_average
from netdsl.ops import linear
from netdsl.runtime import host
from netdsl.runtime.native import conv as native_conv
from netdsl.runtime.native import dense, dense_choice, split_gemm
from netdsl.runtime.native.choice_file import ChoiceFile

CALLS = 20   # calls a candidate makes in a row, per round


def _layout(a) -> str:
    return "n" if a.strides[1] == a.itemsize else "t"


def _role(a, b) -> str:
    return {"n": "forward" if _layout(b) == "t" else "dx", "t": "dW"}[_layout(a)]


def _held(a):
    """A copy of `a` in the same layout (a transpose's view stays one)."""
    return a.copy() if _layout(a) == "n" else np.ascontiguousarray(a.T).T


def record_step(trainer, steps: int) -> tuple[dict, dict]:
    """({site: {thread_us, wall_us, per_step}}, {site: (a, b)}) of the step's dense GEMMs."""
    provided = linear.dense_gemm.provided["numpy"]
    own = dense.matmul
    path = ["numpy"]
    threads, walls, operands = collections.defaultdict(list), collections.defaultdict(list), {}

    def own_seen(a, b, out, parts):
        path[0] = f"own{parts}"
        return own(a, b, out, parts)

    def gemm(xp, a, b, out=None):
        path[0] = "numpy"
        counts = f"t{host.host_threads()} b{host.blas_threads()}"
        thread, wall = time.thread_time(), time.perf_counter()
        result = provided(xp, a, b, out=out)
        thread, wall = time.thread_time() - thread, time.perf_counter() - wall
        site = (f"{_role(a, b)} {a.shape[0]}x{a.shape[1]}x{b.shape[1]} "
                f"{_layout(a)}{_layout(b)} {counts} {path[0]}")
        threads[site].append(thread * 1e6)
        walls[site].append(wall * 1e6)
        operands.setdefault(site, (_held(a), _held(b)))
        return result

    linear.dense_gemm.provided["numpy"], dense.matmul = gemm, own_seen
    try:
        for _ in range(steps):
            trainer.step()
    finally:
        linear.dense_gemm.provided["numpy"], dense.matmul = provided, own
    sites = {site: {"thread_us": statistics.median(threads[site]),
                    "wall_us": statistics.median(walls[site]),
                    "per_step": len(threads[site]) / steps} for site in threads}
    return sites, operands


def _torch_mm(a, b, out):
    """PyTorch's mm on the same memory (its own BLAS; torch set to one thread)."""
    ta, tb, tout = (torch.from_numpy(x) for x in (a, b, out))
    return lambda: torch.mm(ta, tb, out=tout)


def _candidates(a, b):
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    return {"numpy b1": (1, lambda: np.matmul(a, b, out=out)),
            "torch mm 1": (1, _torch_mm(a, b, out)),
            "numpy b2": (2, lambda: np.matmul(a, b, out=out)),
            "own 1": (1, lambda: dense.matmul(a, b, out, 1)),
            "own 2 (pool)": (1, lambda: dense.matmul(a, b, out, 2)),
            "blas parts 2 (pool)": (1, lambda: _blas_parts(a, b, out, 2))}


def _blas_parts(a, b, out, parts: int):
    """a @ b in `parts` parts on the C pool, each a one-thread BLAS GEMM (split_gemm's)."""
    previous, split_gemm._parts = split_gemm._parts, parts
    try:
        done = split_gemm.split_matmul(a, b, out)
    finally:
        split_gemm._parts = previous
    return np.matmul(a, b, out=out) if done is NotImplemented else done


def replay(operands: dict, rounds: int) -> dict:
    """{site: {candidate: {thread_us, wall_us, won}}}: medians of a call over the rounds."""
    found = {}
    for site, (a, b) in operands.items():
        candidates = _candidates(a, b)
        names = list(candidates)
        thread_t = {name: [] for name in names}
        wall_t = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                blas, call = candidates[name]
                with threadpool_limits(blas, user_api="blas"):
                    call()
                    thread, wall = time.thread_time(), time.perf_counter()
                    for _ in range(CALLS):
                        call()
                    thread_t[name].append((time.thread_time() - thread) / CALLS * 1e6)
                    wall_t[name].append((time.perf_counter() - wall) / CALLS * 1e6)
        found[site] = {name: {"thread_us": statistics.median(thread_t[name]),
                              "wall_us": statistics.median(wall_t[name])} for name in names}
    return found


def cold_and_seam(operands: dict, rounds: int) -> dict:
    """{site: {...}}: one call's thread CPU time (µs, medians) with BLAS on one thread,
    with the caches warm (the call made just before) and cold (a 4 MiB sweep just
    before), and through the seam (ops.linear's dense_gemm within a pass, the choice
    made) against np.matmul; in how many rounds cold was the longer."""
    sweep = np.ones(1 << 20, np.float32)
    found = {}
    with threadpool_limits(2, user_api="blas"), host.one_blas_thread(np):
        for site, (a, b) in operands.items():
            out = np.empty((a.shape[0], b.shape[1]), a.dtype)
            linear.dense_gemm(np, a, b, out=out)   # its choice made
            ways = {"warm": lambda: np.matmul(a, b, out=out),
                    "cold": lambda: np.add(sweep, 1.0, out=sweep),
                    "seam": lambda: linear.dense_gemm(np, a, b, out=out),
                    "matmul": lambda: np.matmul(a, b, out=out)}
            took = {name: [] for name in ways}
            for r in range(rounds * 5):
                for name in (list(ways) if r % 2 else list(ways)[::-1]):
                    ways[name]()   # before the timed call: the same call, or the sweep
                    call = ways["seam"] if name == "seam" else ways["matmul"]
                    thread = time.thread_time()
                    call()
                    took[name].append((time.thread_time() - thread) * 1e6)
            found[site] = {name: statistics.median(v) for name, v in took.items()}
            found[site]["cold_longer"] = sum(c > w for c, w in zip(took["cold"], took["warm"]))
            found[site]["rounds"] = rounds * 5
    return found


def _print_replay(title: str, found: dict) -> None:
    print(f"\n{title}: µs a call, thread CPU / wall (medians)")
    for site, by in found.items():
        cells = ", ".join(f"{name} {v['thread_us']:.0f}/{v['wall_us']:.0f}"
                          for name, v in by.items())
        print(f"  {site}: {cells}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    malloc = fix_malloc()
    limiter = limit_blas(args.threads)  # noqa: F841 (kept for the run)
    torch.set_num_threads(1)   # its mm a one-thread candidate
    [workload] = [w for w in train_speed.WORKLOADS if w.id == args.only]
    dense_choice.CHOICES = ChoiceFile(dense_choice.CHOICES_FILE, dense_choice.CHOICES.valid,
                                      Path(tempfile.mkdtemp()))
    before = load_average()
    print(f"{workload.id}, {args.threads} threads, {malloc}; load {before:.2f}")
    trainer = train_speed.warmed_trainer(workload)
    sites, operands = record_step(trainer, args.steps)
    print(f"in the step ({args.steps} steps): µs a call, thread CPU / wall (medians)")
    for site, v in sorted(sites.items()):
        print(f"  {site}: {v['thread_us']:.0f} / {v['wall_us']:.0f} ({v['per_step']:g} a step)")
    print("  sum a step: " + " / ".join(
        f"{sum(v[k] * v['per_step'] for v in sites.values()):.0f}"
        for k in ("thread_us", "wall_us")))
    with native_conv.in_use():
        first = replay(operands, args.rounds)
        _print_replay("alone, as the process is", first)
        with threadpool_limits(2, user_api="blas"):   # OpenBLAS's faster one-thread pace
            np.ones((128, 256), np.float32) @ np.ones((256, 256), np.float32)
        woken = replay(operands, args.rounds)
        _print_replay("alone, after one SGEMM on two threads", woken)
        cold = cold_and_seam(operands, args.rounds)
    print("\none call, BLAS on one thread: µs of thread CPU (medians): warm, cold (after a "
          "4 MiB sweep; rounds it was the longer), through the seam against np.matmul")
    for site, v in cold.items():
        print(f"  {site}: warm {v['warm']:.0f}, cold {v['cold']:.0f} ({v['cold_longer']} of "
              f"{v['rounds']}); seam {v['seam']:.1f}, np.matmul {v['matmul']:.1f}")
    after = load_average()
    print(f"load {before:.2f} -> {after:.2f}")
    keep_results("w2_dense_gemms", {"threads": args.threads, "load": [before, after],
                                    "step": sites, "alone": first, "woken": woken,
                                    "cold_and_seam": cold,
                                    "choices": dict(dense_choice.choices())}, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
