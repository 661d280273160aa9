"""A trainer as one of several data-parallel workers: what it shares with the others.

Every worker holds the whole network and the whole dataset. Each global batch (the
examples one process would train on, in the same order) is cut into one contiguous part
per worker; a worker computes its part's gradients, the gradients are summed over the
workers, each scaled by its share of the batch, and every worker applies the same
update, so the parameters stay identical without being sent. Besides the gradients the
workers sum each update's losses (so that each sees the same NaN and reports the global
batch's loss), the training accuracy's counts at the end of an epoch, and the
validation sums; they average batchnorm's running statistics before evaluating and
checkpointing, gather their random states into the checkpoint, and agree when to
checkpoint (rank 0's clock decides). Dropout masks and noise come from a stream per
worker, from the one seed (runtime.distributed.rank_seed).

`Replicas` of one process does none of it: every method returns what it was given.
"""
from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass

import numpy as np

from netdsl.runtime.buckets import BUCKET_BYTES, GradientBuckets
from netdsl.runtime.distributed import (Communicator, DistributedError, SingleProcess,
                                        rank_seed)
from netdsl.runtime.host import to_host
from netdsl.runtime.sync_bn import SynchronisedBatchNorm

__all__ = ["DataParallel", "Replicas"]


@dataclass(frozen=True)
class DataParallel:
    """How a trainer takes part in data-parallel training: its workers' communicator,
    whether gradients are summed while backward runs (`overlap`), in buckets of about
    `bucket_bytes`."""

    comm: Communicator
    overlap: bool = True
    bucket_bytes: int = BUCKET_BYTES


class Replicas:
    """The data-parallel side of a trainer whose executor is `executor` and whose
    optimisers each update one phase's parameters (`phases`)."""

    def __init__(self, parallel: DataParallel | None, executor, phases, settings):
        self.comm = parallel.comm if parallel else SingleProcess()
        self.rank, self.size = self.comm.rank, self.comm.size
        if settings.batch < self.size:
            raise DistributedError(f"a batch of {settings.batch} cannot be shared by "
                                   f"{self.size} workers: each needs an example at least",
                                   f"train with --batch {self.size} or more, or fewer workers")
        self.executor, self.xp = executor, executor.xp
        self.overlap = bool(parallel and parallel.overlap)
        self.buckets = [GradientBuckets(self.comm, executor, phase.params, self.overlap,
                                        parallel.bucket_bytes)
                        for phase in phases] if self.size > 1 else []
        self.sync_bn = settings.sync_bn and self.size > 1
        self.batchnorm = SynchronisedBatchNorm(self.comm, self.xp) if self.sync_bn else None
        self.weight = 1.0

    @property
    def waited(self) -> float:
        """Seconds spent waiting for gradient sums after backward."""
        return sum(b.seconds for b in self.buckets)

    # ---- a step

    def shards(self, train, batch: int, shuffler):
        """(this worker's part, the global batch's size) per global batch of an epoch."""
        return train.shards(batch, shuffler, self.rank, self.size)

    def begin_batch(self, size: int, total: int) -> None:
        """A step on `size` of a global batch's `total` examples starts."""
        self.weight = size / total
        for buckets in self.buckets:
            buckets.weight = self.weight
        self.starting("train", total)

    def starting(self, *kind) -> None:
        """A step or pass of `kind` starts (runtime.distributed's `starting`: the first
        of each kind, which compiles and times kernels for its sizes, has the waits'
        first-use allowance until `stepped`)."""
        if self.size > 1:
            self.comm.starting(kind)

    def training(self):
        """The context of the training loop: batchnorm synchronised when asked."""
        return self.batchnorm if self.batchnorm else contextlib.nullcontext()

    def paused(self):
        """The context of a diagnosis, which replays this worker's step alone."""
        return self.batchnorm.paused() if self.batchnorm else contextlib.nullcontext()

    def hook(self, phase: int):
        """What `Executor.backward` tells of the gradients it has written (None: nothing)."""
        return self.buckets[phase] if self.overlap else None

    def stepped(self) -> None:
        """A training step (or an evaluation) of this worker has ended
        (runtime.distributed's `first_step_done`: the waits' first-use allowance ends
        with the first, and with the first of each kind)."""
        if self.size > 1:
            self.comm.first_step_done()

    def finish(self, phase: int) -> None:
        """The phase's gradients summed over the workers, once this returns."""
        if self.buckets:
            self.buckets[phase].finish()

    def mean(self, values: dict) -> dict:
        """Loss values (0-d arrays) of this worker's examples -> those of the global batch:
        the sum over workers of each one's share times its value (0-d arrays too)."""
        if self.size == 1:
            return values
        xp = self.xp
        stacked = xp.stack([xp.asarray(v, dtype=np.float64).reshape(()) for v in
                            values.values()]) * self.weight
        self.comm.sum(stacked)
        return {name: stacked[i] for i, name in enumerate(values)}

    # ---- epochs, evaluation, checkpoints

    def total(self, numbers: dict) -> dict:
        """Host numbers (sums, counts) summed over the workers."""
        if self.size == 1:
            return numbers
        summed = self.comm.sum_host(np.array([float(v) for v in numbers.values()]))
        return {name: summed[i].item() for i, name in enumerate(numbers)}

    def part(self, data):
        """The part of an evaluation set this worker evaluates."""
        return data if self.size == 1 else data.part(self.rank, self.size)

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every worker (a decision by its clock)."""
        if self.size == 1:
            return flag
        return self.comm.any(flag and self.rank == 0)

    def average(self, arrays: dict, host: bool) -> dict:
        """Arrays (running statistics) averaged over the workers: host arrays when
        `host`, else arrays of the run's module. Per-worker batchnorm makes each
        worker's statistics its own; synchronised, they are the same everywhere."""
        if self.size == 1 or self.sync_bn or not arrays:
            return arrays
        xp = np if host else self.xp
        names = sorted(arrays)
        flat = xp.concatenate([xp.asarray(arrays[n], dtype=np.float64).ravel() for n in names])
        (self.comm.sum_host if host else self.comm.sum)(flat)
        flat /= self.size
        averaged, start = {}, 0
        for name in names:
            a = arrays[name]
            averaged[name] = flat[start:start + a.size].reshape(a.shape).astype(a.dtype)
            start += a.size
        return averaged

    def average_buffers(self) -> None:
        """Make the executor's running statistics the workers' average, in place."""
        ex = self.executor
        flat = {(node, key): value for node, entries in ex.buffers.items()
                for key, value in entries.items()}
        for (node, key), value in self.average(flat, host=False).items():
            ex.buffers[node][key] = value

    def check_same(self, params) -> None:
        """Raise when the workers' parameters are no longer bit for bit the same (an MPI
        whose sums round differently on different workers)."""
        if self.size == 1:
            return
        digests = self.comm.gather(zlib.crc32(to_host(self.xp, params).tobytes()))
        apart = [r for r, d in enumerate(digests) if d != digests[0]]
        if apart:
            raise DistributedError(f"the parameters of worker rank {apart[0]} differ from rank "
                                   "0's: the workers' sums disagree",
                                   "use an MPI whose allreduce gives every rank the same result")

    def gather_rngs(self, state: dict) -> list | None:
        """Every worker's random state, by rank (None for one process)."""
        return None if self.size == 1 else self.comm.gather(state)

    def resumed_rng(self, meta: dict, seed: int) -> dict:
        """The random state this worker resumes from: its own when the checkpoint was
        written by as many workers, rank 0's on rank 0, else a stream of its own."""
        saved = meta.get("workers")
        if saved and len(saved["rng"]) == self.size:
            return saved["rng"][self.rank]
        if self.rank == 0:
            return meta["rng"]
        return {"seed": rank_seed(seed, self.rank), "count": meta["position"]["iteration"]}

    def load(self, read, *args):
        """`read(*args)` on rank 0, its result (or its exception) on every worker."""
        if self.size == 1:
            return read(*args)
        outcome = None
        if self.rank == 0:
            try:
                outcome = (True, read(*args))
            except Exception as exc:  # noqa: BLE001  raised on every worker below
                outcome = (False, exc)
        ok, value = self.comm.broadcast(outcome)
        if not ok:
            raise value
        return value

    def first_found(self, found: tuple | None) -> tuple | None:
        """(rank, *found) of the first worker whose `found` is not None, else None."""
        if self.size == 1:
            return None if found is None else (0, *found)
        for rank, value in enumerate(self.comm.gather(found)):
            if value is not None:
                return (rank, *value)
        return None
