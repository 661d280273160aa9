"""CuPy's streams and events and its NCCL bindings, stood in for on the CPU, so that
runtime.nccl's NcclCommunicator runs without a GPU (tests/test_nccl.py).

`FakeCupy` keeps a log of what is queued on which stream, in order: ("record", event,
stream), ("wait", stream, event), ("allreduce", stream, count, type). `FakeNccl`'s
communicator sums the NumPy array at the address it is given through the host's
communicator: an MPI allreduce between workers, nothing in one process. The arrays are
NumPy's, so `HostArrays` reads their address from NumPy.
"""
from __future__ import annotations

import ctypes
import itertools

import numpy as np

from netdsl.runtime.nccl import NcclCommunicator

_C_TYPES = {0: ctypes.c_float, 1: ctypes.c_double, 2: ctypes.c_int64}


class FakeStream:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log
        self.ptr = id(self)

    def wait_event(self, event) -> None:
        self.log.append(("wait", self.name, event.number))


class FakeEvent:
    numbers = itertools.count()

    def __init__(self, log: list, disable_timing: bool = False):
        self.log, self.number = log, next(self.numbers)

    def record(self, stream: FakeStream) -> None:
        self.log.append(("record", self.number, stream.name))


class FakeCuda:
    def __init__(self, log: list):
        self.log = log
        self.compute = FakeStream("compute", log)
        self.made = 0

    def Stream(self, non_blocking: bool = False) -> FakeStream:  # noqa: N802  CuPy's name
        self.made += 1
        return FakeStream(f"stream{self.made}", self.log)

    def Event(self, disable_timing: bool = False) -> FakeEvent:  # noqa: N802  CuPy's name
        return FakeEvent(self.log, disable_timing)

    def get_current_stream(self) -> FakeStream:
        return self.compute


class FakeCupy:
    def __init__(self):
        self.log: list = []
        self.cuda = FakeCuda(self.log)


class FakeNccl:
    """cupy.cuda.nccl's constants, unique id and communicator, summing through `host`
    (an MpiCommunicator, or one process's Communicator)."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT64 = 0, 1, 2
    NCCL_SUM = 7

    def __init__(self, host, log: list):
        self.host, self.log = host, log
        self.made: list[tuple] = []

    def get_unique_id(self) -> tuple:
        return ("unique", 42)

    def NcclCommunicator(self, size: int, unique, rank: int):  # noqa: N802  CuPy's name
        self.made.append((size, unique, rank))
        return _FakeComm(self)


class _FakeComm:
    def __init__(self, nccl: FakeNccl):
        self.nccl = nccl

    def allReduce(self, send: int, receive: int, count: int, kind: int, op: int,  # noqa: N802
                  stream: int) -> None:
        assert send == receive and op == FakeNccl.NCCL_SUM, "in place sums only"
        self.nccl.log.append(("allreduce", _stream_name(stream), count, kind))
        array = np.ctypeslib.as_array((_C_TYPES[kind] * count).from_address(send))
        self.nccl.host.sum(array)


_STREAMS: dict[int, str] = {}


def _stream_name(pointer: int) -> str:
    return _STREAMS.get(pointer, "?")


class HostArrays(NcclCommunicator):
    """NcclCommunicator over NumPy arrays: their address is NumPy's."""

    def __init__(self, host, cupy: FakeCupy, nccl: FakeNccl):
        super().__init__(host, cupy, nccl)
        _STREAMS[self.stream.ptr] = self.stream.name

    @staticmethod
    def address(array) -> int:
        return array.ctypes.data


def fake_nccl(host) -> HostArrays:
    """An NcclCommunicator over `host` whose CUDA and NCCL are the fakes above."""
    cupy = FakeCupy()
    return HostArrays(host, cupy, FakeNccl(host, cupy.log))
