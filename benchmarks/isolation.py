"""What keeps one framework's timings from disturbing the other's on a shared CPU.

OpenBLAS (NumPy's) and OpenMP (PyTorch's) worker threads spin for a while after each
call before they sleep; a side timed straight after the other shares the cores with
those spinning threads and ran up to twice as slowly on a 2-core machine. `settle`
pauses before a timed block, then makes one untimed call.

Both sides also share glibc's malloc, whose mmap threshold follows the sizes freed so
far: after one side's large frees the other side's buffers of a few MiB may come from
fresh mmaps, page-faulting on every call (PyTorch's 1x1 convolution measured twice as
slow that way). `fix_malloc` fixes the threshold at glibc's largest (32 MiB), so
neither side's history changes the other's allocations.

A busy machine is the other trap: PyTorch's threads lose far more than NumPy's when
another process holds a core, so a loaded run flatters netdsl. `load_average` is
recorded before and after every workload, `warn_if_busy` says so on stderr when it
passes QUIET, and `keep_results` files every run's raw numbers under
benchmarks/results/ so a figure can always be traced to its repeats and its load.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

from netdsl.runtime.host import steady_allocations

# the 1-minute load average above which a run is not a quiet-machine figure
QUIET = 0.5
RESULTS = Path(__file__).resolve().parent / "results"


def fix_malloc() -> str:
    """Fix glibc's mmap and trim thresholds (else they adapt to the allocations so far),
    as `netc run` does for itself."""
    return "malloc mmap threshold 32 MiB" if steady_allocations() else "malloc as is"


def blas_pool() -> tuple[str, int | None]:
    """NumPy's BLAS library and its thread count, where threadpoolctl can tell."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS", None
    for pool in threadpool_info():
        if pool["user_api"] == "blas":
            return pool["internal_api"], pool["num_threads"]
    return "BLAS", None


def limit_blas(threads: int):
    """Run NumPy's BLAS on `threads` threads from now on (a no-op without threadpoolctl);
    returns the limiter, which must stay referenced."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def settle(call, seconds: float) -> None:
    """Let the other side's worker threads go to sleep, then warm this side up once."""
    time.sleep(seconds)
    call()


def load_average() -> float:
    """The 1-minute load average (0.0 where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def warn_if_busy(when: str) -> float:
    """The load average now; a warning on stderr when it is above QUIET."""
    load = load_average()
    if load > QUIET:
        print(f"warning: load average {load:.2f} {when} (above {QUIET}): another process is "
              "using the cores, and the ratios will flatter netdsl", file=sys.stderr)
    return load


def keep_results(script: str, data: dict, also: Path | None = None,
                 keep: bool = True) -> Path | None:
    """Write a run's raw numbers as JSON under benchmarks/results/ (unless `keep` is
    false: a smoke run is not a figure) and to `also`; the path kept. Each file is
    written to a temporary name and renamed, so a killed run leaves no half file."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    text = json.dumps(data, indent=1)
    paths = [Path(also)] if also else []
    if keep:
        RESULTS.mkdir(exist_ok=True)
        paths.insert(0, RESULTS / f"{stamp}-{script}.json")
    for path in paths:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
    return paths[0] if keep else None
