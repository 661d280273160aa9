"""Data-parallel training on the CPU: one process against two MPI workers on the same cores.

    python benchmarks/parallel_speed.py [--only W1,W3,W6] [--cores N] [--steps N]
                                        [--repeats R] [--json FILE] [--quick]

For each workload (W1 MLP, W3 ResNet-20, W6 two Inception modules; float32, the
workload's CPU batch as the global batch, its spec in benchmarks/specs/, synthetic data
from seed 0) three runs train the same steps with netdsl's Trainer:

    1 process   on all N cores (N BLAS and op threads)
    2 workers   under mpirun, N/2 threads each, gradients summed while backward runs
    2 workers   the same with --no-overlap: one allreduce after backward

so both sides use the same cores. Each run is a fresh process (or mpirun) that trains
--warmup untimed steps and then --steps timed ones; a step's time is the interval
between the trainer's reports of consecutive steps on rank 0 (forward, backward, the
sums, the optimiser's update, the loss read back). Samples/s is the global batch over
the median step. The repeats interleave the three runs, the order rotating.

The allreduce: without overlap, the trainer's wait for the sum of the whole gradient
vector after backward is the allreduce's whole time, T. With overlap, its wait after
backward for the buckets' sums still under way is what overlap did not hide, E. The
fraction hidden is 1 - E / T (per step, medians over steps and repeats). The saving in
step time, (step without overlap - step with) / T, says the same from the step's side;
on a machine whose cores all compute, the allreduce's own work competes with backward
for them, so this one can be smaller.

Benchmark on a quiet machine (`cat /proc/loadavg` below 0.3 before starting) and
record the load with the figures: another job on a core slows the two workers' sums
(each waits for the slower) far more than one process. --quick (2 steps, 1 repeat) only
checks that everything runs.

Run by the driver with --worker: one run's process (or each of mpirun's workers); rank
0 writes its timings as JSON to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from isolation import keep_results, warn_if_busy

SPECS = Path(__file__).resolve().parent / "specs"
SEED = 0


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    spec: str
    batch: int      # the CPU batch of the workload table: the global batch
    steps: int      # timed steps per run


WORKLOADS = [
    Workload("W1", "MLP 64-256-256-10", "w1_mlp.net", 128, 60),
    Workload("W3", "ResNet-20", "w3_resnet20.net", 32, 12),
    Workload("W6", "2 Inception modules", "w6_inception.net", 16, 6),
]
RUNS = (("1 process", 1, True), ("2 workers", 2, True), ("2 workers, no overlap", 2, False))


# ---- one run (--worker)


def worker(args) -> None:
    """Train `args.steps` timed steps of a workload as this run's process or one of its
    workers; rank 0 writes what it timed to args.out."""
    from netdsl.driver import check_file  # the worker's imports: the driver needs none
    from netdsl.lower import lower
    from netdsl.runtime.data import load_data
    from netdsl.runtime.distributed import connect
    from netdsl.runtime.replicas import DataParallel
    from netdsl.runtime.train import Reporter, Trainer
    from netdsl.settings import resolve_settings

    workload = next(w for w in WORKLOADS if w.id == args.worker)
    comm = connect()
    net = check_file(str(SPECS / workload.spec))
    steps = args.warmup + args.steps
    settings = resolve_settings(net.graph.graph["train"], {
        "batch": workload.batch, "steps": steps, "epochs": 1, "val": 0.0, "seed": SEED})
    data = load_data(net.graph, None, SEED, workload.batch * steps)

    class Clock(Reporter):
        """When each step ended, and the seconds waited for sums by then."""

        def __init__(self):
            self.marks: list[tuple[float, float]] = []

        def step(self, epoch, done, total, metrics):
            self.marks.append((time.perf_counter(), trainer.replicas.waited))

    clock = Clock()
    parallel = DataParallel(comm, overlap=args.overlap) if comm.size > 1 else None
    trainer = Trainer(lower(net), settings, reporter=clock, parallel=parallel)
    trainer.fit(data, None)
    timed = clock.marks[args.warmup - 1:]
    step_s = [b[0] - a[0] for a, b in zip(timed, timed[1:])]
    wait_s = [b[1] - a[1] for a, b in zip(timed, timed[1:])]
    if comm.rank == 0:
        with open(args.out, "w") as handle:
            json.dump({"step_s": step_s, "wait_s": wait_s, "workers": comm.size,
                       "params": int(trainer.executor.flat_params.size)}, handle)


# ---- the driver


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_once(workload: Workload, workers: int, overlap: bool, cores: int, args) -> dict:
    """One run in fresh processes: its timings (rank 0's)."""
    from netdsl.app.launch import THREAD_VARIABLES, find_mpirun, mpirun_command  # the driver's

    threads = str(max(1, cores // workers))
    env = {**os.environ, **{name: threads for name in THREAD_VARIABLES}}
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "timings.json")
        program = [sys.executable, __file__, "--worker", workload.id, "--out", out,
                   "--steps", str(args.steps or workload.steps), "--warmup", str(args.warmup)]
        if not overlap:
            program.append("--no-overlap")
        if workers > 1:
            mpirun = find_mpirun()
            if mpirun is None:
                sys.exit("error: no mpirun: pip install 'netdsl[mpi]'")
            program, env = mpirun_command(mpirun, workers, program, env)
        result = subprocess.run(program, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"error: {workload.id} on {workers} process(es) failed:\n"
                     f"{result.stdout}{result.stderr}")
        with open(out) as handle:
            return json.load(handle)


def measure(workload: Workload, cores: int, args) -> dict:
    """Every run of a workload, `repeats` times, interleaved."""
    found: dict[str, dict[str, list]] = {name: {"step_s": [], "wait_s": []} for name, *_ in RUNS}
    params = None
    for repeat in range(args.repeats):
        shift = repeat % len(RUNS)
        for name, workers, overlap in RUNS[shift:] + RUNS[:shift]:
            timings = run_once(workload, workers, overlap, cores, args)
            found[name]["step_s"] += timings["step_s"]
            found[name]["wait_s"] += timings["wait_s"]
            params = timings["params"]
            print(f"  {workload.id} {name}: median step "
                  f"{statistics.median(timings['step_s']) * 1e3:.2f} ms", file=sys.stderr)
    step = {name: statistics.median(f["step_s"]) for name, f in found.items()}
    wait = {name: statistics.median(f["wait_s"]) for name, f in found.items()}
    allreduce, exposed = wait["2 workers, no overlap"], wait["2 workers"]
    return {
        "workload": workload.id, "title": workload.title, "batch": workload.batch,
        "params": params, "gradient_bytes": 4 * params,
        "samples_per_s": {name: workload.batch / s for name, s in step.items()},
        "step_ms": {name: s * 1e3 for name, s in step.items()},
        "allreduce_ms": allreduce * 1e3, "exposed_ms": exposed * 1e3,
        "hidden": 1 - exposed / allreduce if allreduce > 0 else None,
        "step_saving": ((step["2 workers, no overlap"] - step["2 workers"]) / allreduce
                        if allreduce > 0 else None),
        "steps_timed": {name: len(f["step_s"]) for name, f in found.items()},
    }


def table(results: list[dict], cores: int) -> str:
    lines = [f"| workload | batch | gradient | 1 process x {cores} threads samples/s | "
             f"2 workers x {max(1, cores // 2)} samples/s (speed-up) | no overlap samples/s | "
             "allreduce ms | exposed ms | hidden |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = r["samples_per_s"]
        one, two, plain = rate["1 process"], rate["2 workers"], rate["2 workers, no overlap"]
        hidden = "–" if r["hidden"] is None else f"{100 * r['hidden']:.0f}%"
        lines.append(f"| {r['workload']} {r['title']} | {r['batch']} | "
                     f"{r['gradient_bytes'] / 2 ** 20:.2f} MiB | {one:,.0f} | "
                     f"{two:,.0f} ({two / one:.2f}x) | {plain:,.0f} | {r['allreduce_ms']:.2f} | "
                     f"{r['exposed_ms']:.2f} | {hidden} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="workloads, e.g. W1,W6 (default W1,W3,W6)")
    parser.add_argument("--cores", type=int, default=_cores(),
                        help="cores both sides use (default: all this process may use)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default per workload)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (3)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--quick", action="store_true",
                        help="2 steps, 1 warm-up, 1 repeat: only checks that it runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--no-overlap", dest="overlap", action="store_false",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.steps, args.warmup, args.repeats = 2, 1, 1
    if args.warmup < 1 or args.repeats < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--steps, --warmup and --repeats must be at least 1")
    wanted = args.only.split(",") if args.only else [w.id for w in WORKLOADS]
    unknown = sorted(set(wanted) - {w.id for w in WORKLOADS})
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}: choose from W1, W3, W6")
    load_before = warn_if_busy("before the run")
    results = [measure(w, args.cores, args) for w in WORKLOADS if w.id in wanted]
    load_after = warn_if_busy("after the run")
    print(f"{datetime.date.today()}, {platform.machine()}, {args.cores} cores, Python "
          f"{platform.python_version()}, load average {load_before:.2f} before the run, "
          f"{load_after:.2f} after")
    print(table(results, args.cores))
    kept = keep_results("parallel_speed", {"cores": args.cores, "load_before": load_before,
                                           "load_after": load_after, "results": results},
                        also=args.json, keep=not args.quick)
    if kept:
        print(f"raw numbers: {kept}")


if __name__ == "__main__":
    main()
