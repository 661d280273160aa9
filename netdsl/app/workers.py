"""`netc run` as one of several data-parallel workers (started by mpirun, srun or
`--workers`).

Every worker runs the whole command: it reads the spec and the data, prepares the
trainer and trains on its part of each batch (runtime.replicas). Rank 0 alone prints and
writes checkpoints. How errors end a run of several workers:

- preparing (the spec, the flags, the data, the device) ends on every worker together:
  `prepared` compares what each read (a spec file or flags that differ between workers
  are refused) and whether each succeeded, and rank 0 reports the first problem;
- an error of the training loop (a NaN, bad data) is the same on every worker, which
  sees the same data and spec: rank 0 reports it, the others exit 1 quietly;
- a worker that finds another gone (`WorkerLost`), or meets an unexpected error, says so
  and aborts the run: the others may be waiting for it.
"""
from __future__ import annotations

import contextlib
import hashlib
import sys
import traceback
import zlib

from netdsl.driver import CheckFailed
from netdsl.errors import SpecError, SpecErrors, render
from netdsl.runtime.distributed import (DEFAULT_TIMEOUT, Communicator, DistributedError,
                                        WorkerLost, connect, launched_rank)
from netdsl.runtime.nccl import use_local_gpu

__all__ = ["join", "take_local_gpu", "prepared", "training", "data_digest"]


def join(args) -> Communicator:
    """The workers of this run (one process unless a launcher started several). When
    MPI cannot start, rank 0 alone says why; the others exit 1."""
    try:
        return connect(getattr(args, "timeout", None) or DEFAULT_TIMEOUT)
    except DistributedError:
        if launched_rank() != 0:
            raise SystemExit(1) from None
        raise


def take_local_gpu(comm: Communicator) -> None:
    """Drive the GPU of this worker's rank on its machine (runtime.nccl.use_local_gpu);
    when there are too few, rank 0 alone says so and the others exit 1."""
    try:
        use_local_gpu(comm)
    except DistributedError:
        if comm.rank != 0:
            raise SystemExit(1) from None
        raise


def data_digest(data) -> int:
    """A checksum of a dataset's arrays, to tell that every worker read the same."""
    digest = 0
    for name in sorted(data.arrays):
        array = data.arrays[name]
        digest = zlib.crc32(f"{name}{array.shape}{array.dtype}".encode(), digest)
        digest = zlib.crc32(array.tobytes(), digest)
    return digest


def prepared(comm: Communicator, args, prepare):
    """`prepare()` (which returns (result, a digest of the data it read)) on every
    worker; its result once every worker has succeeded with the same spec file, flags
    and data. Otherwise rank 0 raises the first problem and the others exit 1.

    Raises
    ------
    SpecError, SpecErrors, CheckFailed
        On rank 0: its own error, or the first other worker's, or the difference.
    """
    try:
        result, data = prepare()
        failure = None
    except (SpecError, SpecErrors, CheckFailed) as exc:
        if comm.size == 1:
            raise
        result, data, failure = None, None, exc
    if comm.size == 1:
        return result
    mine = (_file_digest(args.spec), list(getattr(args, "argv", [])), data,
            None if failure is None else _first_line(failure))
    every = comm.gather(mine)
    problem = _problem(args, every)
    if problem is None and failure is None and all(o[3] is None for o in every):
        return result
    if comm.rank != 0:
        raise SystemExit(1)
    if problem is None and failure is not None:
        raise failure
    raise problem or _failed(every)


@contextlib.contextmanager
def training(comm: Communicator, folder: str):
    """Run the training loop of a worker, ending it as the module's docstring says."""
    if comm.size == 1:
        yield
        return
    try:
        yield
    except WorkerLost as exc:
        hint = (f"the last checkpoint, {folder}/checkpoint.npz, is intact: run the same "
                "command with --resume to continue")
        sys.stderr.write(render(SpecError(exc.message, None, hint)) + "\n")
        comm.abort(1)
    except (SpecError, SpecErrors):
        if comm.rank != 0:
            raise SystemExit(1) from None
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # noqa: BLE001  the others would wait for this worker for ever
        sys.stderr.write(f"worker rank {comm.rank}: " + traceback.format_exc())
        comm.abort(1)


def _problem(args, every: list) -> SpecError | None:
    """A difference between what the workers read, as an error, or None."""
    spec, flags, data, _ = every[0]
    for rank, (their_spec, their_flags, their_data, failed) in enumerate(every):
        if their_spec != spec:
            return DistributedError(
                f"worker rank {rank} read a different {args.spec} than rank 0 (sha256 "
                f"{_short(their_spec)} against {_short(spec)})",
                "give every worker the same spec file (copy it to every host)")
        if their_flags != flags:
            return DistributedError(f"worker rank {rank} was started with other flags than "
                                    f"rank 0: {' '.join(their_flags)}",
                                    "start every worker with the same command")
        if failed is None and data is not None and spec is not None and \
                every[0][3] is None and their_data != data:
            return DistributedError(f"worker rank {rank} read different data than rank 0",
                                    "give every worker the same data file")
    return None


def _failed(every: list) -> SpecError:
    rank, text = next((r, o[3]) for r, o in enumerate(every) if o[3] is not None)
    return DistributedError(f"worker rank {rank} could not start: {text}")


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def _short(digest: str | None) -> str:
    return "(unreadable)" if digest is None else digest[:12]


def _first_line(error) -> str:
    """An error as one line, to tell rank 0 what went wrong elsewhere."""
    if isinstance(error, CheckFailed):
        errors = error.errors
    elif isinstance(error, SpecErrors):
        errors = error.errors
    else:
        errors = [error]
    return render(errors[0]).split("\n")[0].removeprefix("error: ")
