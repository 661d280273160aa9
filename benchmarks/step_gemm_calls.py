"""Every GEMM of a recurrent workload's training step outside its loop's C calls (the
dense layers' through ops.linear, the loop's weight gradients after its backward call):
who multiplied it, and how long it took, in fresh processes, the configurations in turn.

    python benchmarks/step_gemm_calls.py [--only W4] [--threads 2] [--rounds 4]
        [--steps 40] [--configs choices-removed,choices,numpy] [--tree old=PATH] [--keep]

Each round starts one process per configuration, the order rotated every round:

- `choices-removed`: a cache folder of the run's own (NETDSL_CACHE) whose
  dense_choices.json is removed before the process starts: every dense GEMM that reaches
  the choice is timed afresh;
- `choices`: the same folder with the user's dense_choices.json copied in;
- `numpy`: NETDSL_DENSE_PICK=0 (NumPy's GEMM wherever the choice would decide);
- `wake`: NETDSL_BLAS_WAKE=1;
- `--tree NAME=PATH`: the code of another worktree (PYTHONPATH), its cache the user's.

A process builds the workload's native trainer as sequence_speed.py does (Adam, native
update), takes three steps, then --steps timed steps, and reports per call site (the
op, the role: forward x W^T, dW = gy^T x, dx = gy W; or the loop's weight gradient),
M x K x N, each operand's layout (n: rows contiguous, t: a transpose's view), BLAS's
thread count at the call, the path (`pool`: split over the C pool, each part a
one-thread BLAS GEMM, runtime.native.split_gemm; `own<k>`: the own GEMM in k parts;
`numpy(choice)`: NumPy's, chosen; `numpy`: NumPy's, the choice not asked), and the
medians of its wall and process CPU time (µs); and the step's median. Prints per
configuration and call site the median over the processes, and the load average at
the start and end; with --keep the raw numbers go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from isolation import keep_results, load_average

HERE = Path(__file__).resolve().parent
CONFIGS = {"choices-removed": {}, "choices": {}, "numpy": {"NETDSL_DENSE_PICK": "0"},
           "wake": {"NETDSL_BLAS_WAKE": "1"}}


def child(only: str, threads: int, steps: int) -> None:
    """One process: prints its calls' record as JSON."""
    from isolation import fix_malloc, limit_blas

    fix_malloc()
    limiter = limit_blas(threads)  # noqa: F841  kept for the run
    import numpy as np

    import sequence_speed
    from netdsl.ops import linear, parallel
    from netdsl.runtime.host import _blas_controllers
    from netdsl.runtime.native import loops, split_gemm
    from netdsl.runtime.optim import make_optimizer
    try:
        from netdsl.runtime.native import dense
    except ImportError:
        dense = None

    [w] = [w for w in sequence_speed.WORKLOADS if w.id == only]
    ours = sequence_speed.Ours(w, sequence_speed.make_batch(w), "native")
    ours.optimizer = make_optimizer("adam", {"lr": sequence_speed.LR}, ours.ex.flat_params,
                                    native=True)
    site = ["?"]       # the op running now
    path = ["numpy"]   # who multiplied the call under way
    walls, cpus = collections.defaultdict(list), collections.defaultdict(list)

    def layout(a) -> str:
        return "n" if a.strides[1] == a.itemsize else "t"

    def recorded(role, call):
        def timed(a, b, *rest, **kw):
            path[0] = "numpy"
            threads_now = max(c.num_threads for c in _blas_controllers())
            wall, cpu = time.perf_counter(), time.process_time()
            result = call(a, b, *rest, **kw)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            key = (f"{site[0]} {role(a, b)} {a.shape[0]}x{a.shape[1]}x{b.shape[1]} "
                   f"{layout(a)}{layout(b)} blas{threads_now} {path[0]}")
            walls[key].append(wall * 1e6)
            cpus[key].append(cpu * 1e6)
            return result
        return timed

    def dense_role(a, b) -> str:
        return {"n": "forward" if layout(b) == "t" else "dx", "t": "dW"}[layout(a)]

    # the dense op's GEMMs: ops.linear.dense_gemm, or ops.parallel.matmul in code older
    # than the choice (which called it directly)
    owner = linear if hasattr(linear, "dense_gemm") else parallel
    name = "dense_gemm" if owner is linear else "matmul"
    inner = getattr(owner, name)
    timed = recorded(dense_role, lambda a, b, out=None: inner(np, a, b, out=out))
    setattr(owner, name, lambda xp, a, b, out=None: timed(a, b, out=out))
    split = split_gemm.split_matmul

    def split_seen(a, b, out=None):
        result = split(a, b, out)
        if result is not NotImplemented:
            path[0] = "pool"
        return result
    split_gemm.split_matmul = split_seen

    def loop_weight_grad(a, b, out=None):
        site[0] = "loop"
        result = split_seen(a, b, out)
        return a @ b if result is NotImplemented else result
    # the loop's weight gradients (its product() takes NumPy's @ where this declines)
    loops.split_matmul = recorded(lambda a, b: "dW", loop_weight_grad)
    if dense is not None and hasattr(dense, "product"):
        product, own = dense.product, dense.matmul

        def product_seen(a, b, out):
            path[0] = "numpy(choice)"
            return product(a, b, out)

        def own_seen(a, b, out, parts):
            path[0] = f"own{parts}"
            return own(a, b, out, parts)
        dense.product, dense.matmul = product_seen, own_seen
    for step in ours.plan.steps:
        if step.op.name == "dense":
            for name in ("forward", "backward"):
                def entered(*args, _call=getattr(step.op, name), _site=step.node, **kw):
                    site[0] = _site
                    return _call(*args, **kw)
                setattr(step.op, name, entered)
    ours.ex._calls.clear()   # the executor's bound forwards, made again
    for _ in range(3):
        ours.step()
    walls.clear()
    cpus.clear()
    step_walls, step_cpus = [], []
    for _ in range(steps):
        site[0] = "loop"
        wall, cpu = time.perf_counter(), time.process_time()
        ours.step()
        step_walls.append((time.perf_counter() - wall) * 1e3)
        step_cpus.append((time.process_time() - cpu) * 1e3)
    record = {"step_ms": statistics.median(step_walls),
              "step_cpu_ms": statistics.median(step_cpus),
              "calls": {k: {"wall_us": statistics.median(v),
                            "cpu_us": statistics.median(cpus[k]),
                            "per_step": len(v) / steps} for k, v in sorted(walls.items())}}
    try:
        from netdsl.runtime.native import dense_choice
        record["choice_seconds"] = dense_choice.timing_seconds[0]
    except ImportError:
        pass
    print(json.dumps(record))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--configs", default="choices-removed,choices,numpy")
    parser.add_argument("--tree", action="append", default=[],
                        help="NAME=PATH: another worktree's code as a configuration")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.only, args.threads, args.steps)
        return 0
    own_tree = str(HERE.parent)
    configs = {}
    for name in args.configs.split(","):
        configs[name] = (dict(CONFIGS[name]), own_tree)
    for spec in args.tree:
        name, tree = spec.split("=", 1)
        configs[name] = ({}, str(Path(tree).resolve()))
    cache = Path(tempfile.mkdtemp(prefix="step_gemm_calls-"))
    user_choices = Path.home() / ".cache" / "netdsl" / "native" / "dense_choices.json"
    names = list(configs)
    runs = {name: [] for name in names}
    before = load_average()
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            env_extra, tree = configs[name]
            env = {k: v for k, v in os.environ.items()
                   if k not in ("NETDSL_DENSE_PICK", "NETDSL_BLAS_WAKE", "NETDSL_CACHE")}
            env.update(env_extra, PYTHONPATH=f"{tree}:{HERE}")
            if name.startswith("choices"):
                env["NETDSL_CACHE"] = str(cache)
                held = cache / "native" / "dense_choices.json"
                held.parent.mkdir(parents=True, exist_ok=True)
                held.unlink(missing_ok=True)
                if name == "choices" and user_choices.exists():
                    shutil.copyfile(user_choices, held)
            out = subprocess.run([sys.executable, str(HERE / "step_gemm_calls.py"), "--child",
                                  "--only", args.only, "--threads", str(args.threads),
                                  "--steps", str(args.steps)],
                                 env=env, cwd=tree, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            record = json.loads(out.stdout.strip().splitlines()[-1])
            record["load"] = load_average()
            runs[name].append(record)
            print(f"round {round_ + 1} {name}: step {record['step_ms']:.1f} ms "
                  f"(CPU {record['step_cpu_ms']:.1f}), load {record['load']:.2f}", flush=True)
    after = load_average()
    print(f"\n{args.only}, {args.threads} threads, {args.rounds} rounds of fresh processes, "
          f"medians over the processes of each one's median; load {before:.2f} -> {after:.2f}")
    for name in names:
        records = runs[name]
        print(f"\n{name}: step {statistics.median(r['step_ms'] for r in records):.2f} ms, "
              f"CPU {statistics.median(r['step_cpu_ms'] for r in records):.2f} ms")
        for key in sorted({k for r in records for k in r["calls"]}):
            seen = [r["calls"][key] for r in records if key in r["calls"]]
            print(f"  {key}: wall {statistics.median(c['wall_us'] for c in seen):.0f} us, "
                  f"CPU {statistics.median(c['cpu_us'] for c in seen):.0f} us, "
                  f"{seen[0]['per_step']:g} a step, in {len(seen)} of {len(records)} processes")
    shutil.rmtree(cache, ignore_errors=True)
    keep_results("step_gemm_calls", {"workload": args.only, "threads": args.threads,
                                     "rounds": args.rounds, "steps": args.steps,
                                     "load": {"before": before, "after": after},
                                     "trees": {n: t for n, (_, t) in configs.items()},
                                     "runs": runs}, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
