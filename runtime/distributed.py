"""Processes that train one network together: who they are and how they sum.

Data-parallel training runs one process per worker, started by the engines clusters
already use: `mpirun` (or Slurm's `srun --mpi=pmix`) with MPI through mpi4py on CPUs,
NCCL through CuPy on GPUs with MPI bootstrapping it. A `Communicator` is what the
training loop needs of them:

- `sum(array)`: an allreduce, in place, of an array of the run's array module (the
  gradient vector, losses, batchnorm's statistics); `start_sum` starts one and returns a
  `Pending` to wait on, so that backward goes on while it runs;
- host-level agreement: `gather` and `broadcast` Python objects, `any` of a flag;
- `abort`, for a worker that cannot go on while the others wait for it.

`SingleProcess` is the one-process case, where every call returns at once. The MPI
communicator waits with a deadline (`timeout`): when another worker has died or hangs,
the others stop with a `WorkerLost` naming it instead of waiting for ever. Until this
worker's first training step has ended (`first_step_done`), and in any step or pass of a
kind it has not run before (`starting`: an epoch's last, partial batch, the first
evaluation), a wait's deadline is at least FIRST_STEP_ALLOWANCE: the ranks' startups and
first uses (imports, compiling and timing kernels for a new batch size) differ by
seconds, which a short timeout would take for a hang. The NCCL one
(`runtime.nccl`) sums device arrays on the device and leaves the rest to MPI.

`connect()` tells from the launcher's environment whether this process is one of
several; mpi4py is imported only then.
"""
from __future__ import annotations

import os
import pickle
import socket
import sys
import time

import numpy as np

from netdsl.errors import SpecError

__all__ = ["Communicator", "SingleProcess", "MpiCommunicator", "Pending", "DistributedError",
           "WorkerLost", "connect", "launched_size", "launched_rank", "rank_seed",
           "DEFAULT_TIMEOUT", "FIRST_STEP_ALLOWANCE", "MPI_HELP"]

# seconds a worker waits for the others at a collective before it gives up on them
DEFAULT_TIMEOUT = 300.0
# the least it waits before its first step has ended, and in the first step or pass of
# each kind (a new batch size, the first evaluation), whatever the timeout: a first step
# ends seconds apart on the ranks (two busy cores: 3 s), and a first-use compilation
# on a slow or loaded machine takes tens of seconds
FIRST_STEP_ALLOWANCE = 120.0

MPI_HELP = "pip install 'netdsl[mpi]' (mpi4py and Open MPI's mpirun)"

# what launchers set: Open MPI's mpirun, MPICH's (Hydra) and Intel MPI, Slurm's srun
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


class DistributedError(SpecError):
    """A data-parallel run that cannot start or go on; one line and a hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, None, hint)


class WorkerLost(DistributedError):
    """Another worker died or stopped answering: this one stops too."""


def launched_size() -> int:
    """How many processes the launcher started this one among (1 without a launcher)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank by the launcher's environment (0 without a launcher): known
    before MPI starts, so that only rank 0 reports an MPI that cannot start."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def rank_seed(seed: int, rank: int) -> int:
    """The random seed of a worker's dropout masks and noise: the run's seed on rank 0 (so
    one worker draws what a single process draws), a stream of its own on the others."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class Pending:
    """A sum under way; `wait()` returns once its result is in the array."""

    def wait(self) -> None:
        pass

    def test(self) -> bool:
        """Whether it has finished (and, for MPI, a nudge to make progress)."""
        return True


DONE = Pending()


class Communicator:
    """The processes of a run: `rank` of `size`, `local_rank` of `local_size` on this
    host."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    name = "one process"

    def sum(self, array):
        """Sum `array` (contiguous, of the run's array module) over the processes, in
        place; returns it."""
        self.start_sum(array).wait()
        return array

    def start_sum(self, array) -> Pending:
        """Start summing `array` in place; it must not be written until `wait()`."""
        raise NotImplementedError

    def sum_host(self, array: np.ndarray) -> np.ndarray:
        """`sum` of a NumPy array (counts, metrics), whatever the device."""
        return self.sum(array)

    def gather(self, value) -> list:
        """Every process's `value` (any picklable object), by rank, on every process."""
        raise NotImplementedError

    def broadcast(self, value):
        """Rank 0's `value` on every process."""
        raise NotImplementedError

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any process."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """Stop every process at once (a worker that cannot go on while others wait)."""
        raise NotImplementedError

    def starting(self, kind: tuple) -> None:
        """A step or pass of `kind` starts on this worker: a training step on a global
        batch of a size, an evaluation of a data set. Every worker names the same kinds
        (global sizes), so that where one compiles and times kernels for a kind it has
        not run, the others, waiting for it, allow for that too."""

    def first_step_done(self) -> None:
        """The step or pass started last has ended on this worker, and with it (its sums
        being every worker's) on every worker. After the first training step, and after
        the first of each kind, a wait for the others is a plain step's."""


class SingleProcess(Communicator):
    """One process: every sum is the value itself."""

    def sum(self, array):
        return array

    def start_sum(self, array) -> Pending:
        return DONE

    def gather(self, value) -> list:
        return [value]

    def broadcast(self, value):
        return value

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def abort(self, code: int = 1) -> None:
        sys.exit(code)


class _MpiPending(Pending):
    def __init__(self, comm: "MpiCommunicator", request, array, what: str):
        self.comm, self.request, self.array, self.what = comm, request, array, what

    def wait(self) -> None:
        if self.request is not None:
            self.comm.wait(self.request, self.what)
            self.request = self.array = None

    def test(self) -> bool:
        if self.request is None or self.request.Test():
            self.request = self.array = None
            return True
        return False


class MpiCommunicator(Communicator):
    """MPI's COMM_WORLD through mpi4py: sums of host arrays, objects, flags.

    Every wait polls its request against a deadline of `timeout` seconds (at least
    FIRST_STEP_ALLOWANCE before the first `first_step_done`, and in the first step or
    pass of each kind), so a worker whose peer has died (or
    hangs) raises `WorkerLost` naming it rather than waiting for ever; the launcher
    usually stops the job first when a process dies.
    """

    name = "MPI"

    def __init__(self, comm, mpi, timeout: float = DEFAULT_TIMEOUT):
        self.comm, self.mpi, self.timeout = comm, mpi, timeout
        self.ran: set[tuple] = set()   # the kinds of step or pass that ended here
        self.running = None            # the kind of step or pass under way, if told
        self.first_use = True          # whether it is its kind's first (before any: yes)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        # where each rank runs, to tell which one died when a wait runs out
        self.peers = comm.allgather((socket.gethostname(), os.getpid()))

    def start_sum(self, array) -> Pending:
        request = self.comm.Iallreduce(self.mpi.IN_PLACE, array, op=self.mpi.SUM)
        return _MpiPending(self, request, array, "a sum")

    def gather(self, value) -> list:
        """Every rank's `value`, pickled and sent by non-blocking collectives, so that the
        deadline holds in every wait (a peer that stops between two blocking calls would
        hang this one)."""
        data = np.frombuffer(pickle.dumps(value), dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        self.wait(self.comm.Iallgather(np.array([data.size], dtype=np.int64), sizes), "a gather")
        received = np.empty(int(sizes.sum()), dtype=np.uint8)
        self.wait(self.comm.Iallgatherv(data, [received, sizes]), "a gather")
        ends = np.cumsum(sizes)
        return [pickle.loads(received[end - size:end].tobytes())
                for size, end in zip(sizes, ends)]

    def broadcast(self, value):
        """Rank 0's `value` on every rank, with the deadline in every wait (see gather)."""
        data = np.frombuffer(pickle.dumps(value), dtype=np.uint8)
        size = np.array([data.size], dtype=np.int64)
        self.wait(self.comm.Ibcast(size, root=0), "a broadcast")
        buffer = data.copy() if self.rank == 0 else np.empty(int(size[0]), dtype=np.uint8)
        self.wait(self.comm.Ibcast(buffer, root=0), "a broadcast")
        return value if self.rank == 0 else pickle.loads(buffer.tobytes())

    def any(self, flag: bool) -> bool:
        votes = np.array([1 if flag else 0], dtype=np.int32)
        self.wait(self.comm.Iallreduce(self.mpi.IN_PLACE, votes, op=self.mpi.MAX), "a vote")
        return bool(votes[0])

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def starting(self, kind: tuple) -> None:
        self.running, self.first_use = kind, kind not in self.ran

    def first_step_done(self) -> None:
        if self.running is not None:
            self.ran.add(self.running)
        self.running, self.first_use = None, False

    def patience(self) -> float:
        """Seconds a wait lasts at most: the timeout, and before the first step has
        ended or in the first step or pass of a kind at least FIRST_STEP_ALLOWANCE."""
        return max(self.timeout, FIRST_STEP_ALLOWANCE) if self.first_use else self.timeout

    def wait(self, request, what: str) -> None:
        """Wait for `request`: spin briefly (a sum of a step's gradients takes
        microseconds to milliseconds), then poll more slowly, up to the deadline."""
        if request.Test():
            return
        start, patience = time.monotonic(), self.patience()
        spin_until, deadline = start + 0.002, start + patience
        pause = 0.0
        while not request.Test():
            now = time.monotonic()
            if now > deadline:
                raise self.lost(what, patience)
            if now > spin_until:
                pause = min(max(pause * 2, 5e-5), 2e-3)
            time.sleep(pause)

    def lost(self, what: str, waited: float | None = None) -> WorkerLost:
        """The error of a wait that ran out after `waited` seconds (the timeout): which
        worker on this host has died or hangs."""
        waited = self.timeout if waited is None else waited
        here = socket.gethostname()
        dead, stuck, remote = [], [], []
        for rank, (host, pid) in enumerate(self.peers):
            if rank == self.rank:
                continue
            if host != here:
                remote.append(rank)
            elif _alive(pid):
                stuck.append(rank)
            else:
                dead.append(rank)
        hint = "the last checkpoint is intact; rerun with --resume to continue"
        if dead:
            names = ", ".join(f"{r} (pid {self.peers[r][1]})" for r in dead)
            return WorkerLost(f"worker rank {names} has died: rank {self.rank} stops after "
                              f"waiting {waited:g} s for {what}", hint)
        others = stuck + remote
        where = ", ".join(str(r) for r in others)
        return WorkerLost(f"no answer from worker rank {where} for {waited:g} s while "
                          f"rank {self.rank} waited for {what}", hint)


def _alive(pid: int) -> bool:
    """Whether a process on this host is still running (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def connect(timeout: float = DEFAULT_TIMEOUT) -> Communicator:
    """The processes of this run: `SingleProcess` unless a launcher (mpirun, srun)
    started several, then MPI's COMM_WORLD.

    Raises
    ------
    DistributedError
        When several were started but mpi4py is missing or MPI cannot start, or MPI
        sees a different number of processes than the launcher started.
    """
    size = launched_size()
    if size <= 1:
        return SingleProcess()
    try:
        from mpi4py import MPI  # an optional dependency (the mpi extra), for several workers
    except ModuleNotFoundError as exc:
        if exc.name != "mpi4py":
            raise
        raise DistributedError(f"this run was started as {size} processes, but mpi4py is "
                               "not installed", MPI_HELP) from None
    except (ImportError, RuntimeError) as exc:
        raise DistributedError(f"this run was started as {size} processes, but mpi4py "
                               f"could not load an MPI library ({exc})", MPI_HELP) from None
    world = MPI.COMM_WORLD
    if world.Get_size() != size:
        raise DistributedError(
            f"the launcher started {size} processes, but MPI sees {world.Get_size()}: they "
            "cannot train together", "under Slurm, run srun --mpi=pmix; with mpirun, use "
            "the mpirun of the MPI that mpi4py was built for")
    return MpiCommunicator(world, MPI, timeout)
