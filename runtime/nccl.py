"""Sums on GPUs: NCCL through CuPy, one GPU per worker, MPI bootstrapping it.

Each worker drives the GPU of its rank on its host (`use_local_gpu`, before anything is
allocated). Rank 0 makes NCCL's unique id and MPI broadcasts it; every sum of a device
array then runs on the devices, never through the host. A sum runs on a stream of its
own: it starts once the compute stream has queued what wrote the array (an event), and
`wait()` makes the compute stream wait for it (another event), so neither the host nor
the compute stream blocks while backward goes on. Every NCCL call goes to that one
stream in the order the training loop makes them, the same on every worker, as NCCL
requires. Objects and flags go through MPI on the host.
"""
from __future__ import annotations

import numpy as np

from netdsl.runtime.distributed import (Communicator, DistributedError, MpiCommunicator,
                                        Pending)

__all__ = ["NcclCommunicator", "use_local_gpu"]


def use_local_gpu(comm: Communicator) -> None:
    """Make the GPU of this worker's rank on its host the current device (nothing when
    CuPy is absent: `--device gpu` then reports that itself).

    Raises
    ------
    DistributedError
        When this host runs more workers than it has GPUs: NCCL refuses two on one.
    """
    if comm.size == 1:
        return
    try:
        import cupy  # an optional dependency, for --device gpu alone
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001  no CuPy or no CUDA: runtime.device says which
        return
    if not count:
        return
    if comm.local_size > count:
        raise DistributedError(
            f"{comm.local_size} workers share this machine's {count} GPU"
            f"{'s' * (count > 1)}: NCCL needs a GPU per worker",
            f"start at most {count} worker{'s' * (count > 1)} per machine with --device gpu")
    cupy.cuda.Device(comm.local_rank).use()


class _DevicePending(Pending):
    """A sum queued on the communicator's stream; waiting queues the wait on the compute
    stream, it does not block the host."""

    def __init__(self, cupy, done, array):
        self.cupy, self.done, self.array = cupy, done, array

    def wait(self) -> None:
        if self.done is not None:
            self.cupy.cuda.get_current_stream().wait_event(self.done)
            self.done = self.array = None   # the array is kept alive until now


class NcclCommunicator(Communicator):
    """NCCL for device arrays, over the workers of an MPI communicator `host`."""

    name = "NCCL"

    def __init__(self, host: MpiCommunicator, cupy, nccl=None):
        if nccl is None:
            from cupy.cuda import nccl  # CuPy's NCCL bindings, for GPU workers alone
        self.host, self.cupy, self.nccl = host, cupy, nccl
        self.rank, self.size = host.rank, host.size
        self.local_rank, self.local_size = host.local_rank, host.local_size
        self.types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                      np.dtype(np.float64): nccl.NCCL_FLOAT64,
                      np.dtype(np.int64): nccl.NCCL_INT64}
        unique = host.broadcast(nccl.get_unique_id() if host.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(host.size, unique, host.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def start_sum(self, array) -> Pending:
        kind, pointer = self._type(array), self.address(array)
        cuda = self.cupy.cuda
        written = cuda.Event(disable_timing=True)
        written.record(cuda.get_current_stream())
        self.stream.wait_event(written)
        self.comm.allReduce(pointer, pointer, array.size, kind,
                            self.nccl.NCCL_SUM, self.stream.ptr)
        done = cuda.Event(disable_timing=True)
        done.record(self.stream)
        return _DevicePending(self.cupy, done, array)

    def _type(self, array) -> int:
        kind = self.types.get(np.dtype(array.dtype))
        if kind is None or not array.flags.c_contiguous:
            raise ValueError(f"NCCL sums contiguous float32, float64 or int64 arrays here, "
                             f"not a {'' if array.flags.c_contiguous else 'strided '}"
                             f"{array.dtype} array")
        return kind

    @staticmethod
    def address(array) -> int:
        """Where a CuPy array's data lies on the device (tests on the CPU, with NumPy
        arrays standing in, give theirs)."""
        return array.data.ptr

    def sum_host(self, array: np.ndarray) -> np.ndarray:
        return self.host.sum(array)

    def gather(self, value) -> list:
        return self.host.gather(value)

    def broadcast(self, value):
        return self.host.broadcast(value)

    def any(self, flag: bool) -> bool:
        return self.host.any(flag)

    def abort(self, code: int = 1) -> None:
        self.host.abort(code)

    def starting(self, kind: tuple) -> None:
        self.host.starting(kind)

    def first_step_done(self) -> None:
        self.host.first_step_done()
