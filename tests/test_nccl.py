"""Data-parallel training on GPUs: runtime.nccl's NcclCommunicator.

Without a GPU (CI): its calls against stand-ins for CuPy's streams and events and its
NCCL bindings (tests/nccl_fakes.py), checking what is queued on which stream in which
order; and two MPI workers training on the trainer's device path (NumPy behind CuPy's
namespace), their sums going through NcclCommunicator to the stand-in NCCL, against one
process on NumPy. With CuPy and a GPU: NCCL's sums for real, and two workers on two
GPUs (where there are two) against one process on the CPU.
"""
import os
import sys
import types

import numpy as np
import pytest

from distributed_cases import CASES
from nccl_fakes import FakeNccl, fake_nccl
from netdsl.runtime.distributed import DistributedError, SingleProcess
from netdsl.runtime.nccl import NcclCommunicator, use_local_gpu
from test_distributed import HERE, RTOL, mpirun, needs_mpi, one_process


class Host(SingleProcess):
    """One process's communicator, noting what is asked of it."""

    def __init__(self):
        self.calls = []

    def sum(self, array):
        self.calls.append(("sum", array.dtype.name))
        return array

    def gather(self, value):
        self.calls.append(("gather", value))
        return [value]

    def broadcast(self, value):
        self.calls.append(("broadcast", value))
        return value

    def any(self, flag):
        self.calls.append(("any", flag))
        return flag


def test_rank_0_s_unique_id_bootstraps_nccl_through_the_host():
    host = Host()
    comm = fake_nccl(host)
    assert host.calls == [("broadcast", ("unique", 42))]
    assert comm.nccl.made == [(1, ("unique", 42), 0)]
    assert (comm.rank, comm.size, comm.name) == (0, 1, "NCCL")


def test_a_sum_runs_on_its_own_stream_after_what_wrote_the_array():
    comm = fake_nccl(Host())
    log = comm.cupy.log
    grads = np.arange(6, dtype=np.float64)
    pending = comm.start_sum(grads[2:5])
    written, summed = log[0][1], log[-1][1]
    assert log == [("record", written, "compute"), ("wait", "stream1", written),
                   ("allreduce", "stream1", 3, FakeNccl.NCCL_FLOAT64),
                   ("record", summed, "stream1")]
    # waiting queues the wait on the compute stream: the host goes on at once
    pending.wait()
    assert log[-1] == ("wait", "compute", summed)
    pending.wait()
    assert len(log) == 5, "a second wait adds nothing"


def test_the_host_sums_numbers_and_agrees_on_objects():
    host = Host()
    comm = fake_nccl(host)
    host.calls.clear()
    comm.sum_host(np.zeros(3))
    comm.gather("mine")
    comm.any(True)
    assert host.calls == [("sum", "float64"), ("gather", "mine"), ("any", True)]
    assert comm.cupy.log == [], "nothing went to the device"


@pytest.mark.parametrize("array", [np.zeros(4, np.float16), np.zeros(8)[::2]],
                         ids=["float16", "strided"])
def test_what_nccl_cannot_sum_in_place_is_refused_before_anything_is_queued(array):
    comm = fake_nccl(Host())
    with pytest.raises(ValueError, match="contiguous float32, float64 or int64"):
        comm.start_sum(array)
    assert comm.cupy.log == []


def test_each_worker_takes_the_gpu_of_its_rank_on_its_host(monkeypatch):
    used = []
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 2),
        Device=lambda n: types.SimpleNamespace(use=lambda: used.append(n))))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    worker = types.SimpleNamespace(size=4, local_rank=1, local_size=2)
    use_local_gpu(worker)
    assert used == [1]
    use_local_gpu(types.SimpleNamespace(size=1, local_rank=0, local_size=1))
    assert used == [1], "one process keeps the device it has"
    with pytest.raises(DistributedError, match="3 workers share this machine's 2 GPUs"):
        use_local_gpu(types.SimpleNamespace(size=6, local_rank=2, local_size=3))
    assert used == [1]
    monkeypatch.setitem(sys.modules, "cupy", None)  # no CuPy: --device gpu says so later
    use_local_gpu(worker)


DEVICE_CASES = ("mlp_no_dropout", "mlp_uneven", "resnet20_sync_bn", "lstm_tbptt")


def workers_on(on: str, tmp_path, names=DEVICE_CASES) -> dict:
    """The cases trained by two workers under one mpirun `--on` a device."""
    result = mpirun(sys.executable, os.path.join(HERE, "distributed_worker.py"), "--on", on,
                    str(tmp_path), *names, cwd=HERE)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = {}
    for name in names:
        ran[name] = []
        for rank in range(2):
            with np.load(tmp_path / f"{name}-rank{rank}.npz") as saved:
                ran[name].append(dict(saved))
    return ran


def assert_as_one_process(ran: dict, rtol: float) -> None:
    for name, workers in ran.items():
        assert CASES[name].reference == "plain"
        assert workers[0]["params"].tobytes() == workers[1]["params"].tobytes(), name
        reference = one_process(name)[0]
        for mine in workers:
            assert mine["buckets"] >= 1
            for key in reference:
                np.testing.assert_allclose(mine[key], reference[key], rtol=rtol, atol=1e-13,
                                           err_msg=f"{name}: {key}")


@needs_mpi
def test_two_workers_on_the_device_path_train_as_one_process(tmp_path):
    """Deferred reads, device sums of gradient buckets, losses and synchronised
    batchnorm's statistics, all through NcclCommunicator (float64)."""
    assert_as_one_process(workers_on("fake-gpu", tmp_path), RTOL)


def _gpus() -> int:
    try:
        import cupy  # optional: the GPU tests below run only where it is installed

        return cupy.cuda.runtime.getDeviceCount() if cupy.cuda.is_available() else 0
    except Exception:  # noqa: BLE001  no CuPy, or no usable CUDA
        return 0


GPUS = _gpus()
needs_gpu = pytest.mark.skipif(GPUS == 0, reason="needs CuPy and a GPU "
                               "(pip install -e '.[gpu,test]')")


@needs_gpu
def test_nccl_sums_on_the_gpu():
    import cupy  # present where this runs (needs_gpu)

    comm = NcclCommunicator(SingleProcess(), cupy)
    for dtype in (np.float32, np.float64, np.int64):
        array = cupy.arange(10, dtype=dtype)
        expected = array.copy()
        pending = comm.start_sum(array[3:7])
        pending.wait()
        assert cupy.array_equal(array, expected)
    grads = cupy.ones(1 << 20, dtype=np.float32)
    comm.sum(grads)
    cupy.cuda.get_current_stream().synchronize()
    assert float(grads.sum()) == 1 << 20


@needs_mpi
@pytest.mark.skipif(GPUS < 2, reason="two workers need two GPUs: NCCL refuses two on one")
@needs_gpu
def test_two_workers_on_two_gpus_train_as_one_process(tmp_path):
    # cuBLAS sums in another order than OpenBLAS: a little further apart than on the CPU
    assert_as_one_process(workers_on("gpu", tmp_path, ("mlp_no_dropout", "resnet20_sync_bn")),
                          1e-9)
