"""benchmarks/gpu_speed.py, checked on the CPU: its smoke run and the parts that only a GPU
run reaches (counting a profiler trace's launches, tracking CuPy's pool peak), on stand-ins.

The smoke run is the harness the GPU benchmark uses, with NumPy for CuPy and torch on
the CPU, every workload at 1% of its GPU batch, one repeat of three timed steps and no
torch.compile; kernel launches and GPU memory are then n/a.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_speed  # noqa: E402

WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """The JSON of `gpu_speed.py --device cpu` on tiny batches, all six workloads, run in
    this process: the thread counts it sets for torch and NumPy's BLAS are restored after."""
    import torch
    from threadpoolctl import threadpool_limits

    out = tmp_path_factory.mktemp("gpu_speed") / "smoke.json"
    argv = ["--device", "cpu", "--batch-scale", "0.01", "--repeats", "1", "--steps", "3",
            "--warmup", "2", "--no-compile", "--threads", "1", "--json", str(out)]
    printed, said, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    try:
        with threadpool_limits(limits=None), contextlib.redirect_stdout(printed), \
                contextlib.redirect_stderr(said):
            code = gpu_speed.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, printed.getvalue()[-3000:] + said.getvalue()[-3000:]
    assert "| W6 " in printed.getvalue()  # the table was printed
    return json.loads(out.read_text())


def test_smoke_run_has_every_workload(smoke):
    assert [w["id"] for w in smoke["workloads"]] == WORKLOADS
    assert smoke["env"]["device"] == "cpu" and smoke["env"]["torch"]
    for w in smoke["workloads"]:
        assert w["batch"] == max(2, round(gpu_speed.GPU_BATCH[w["id"]] * 0.01))
        assert w["steps"] == 3 and w["repeats"] == 1
        assert "compiled" not in w  # --no-compile


@pytest.mark.parametrize("side", ["netdsl", "torch"])
def test_smoke_run_times_and_losses(smoke, side):
    """Positive step times and rates, and losses that fell: below the loss at the initial
    parameters (at batch 2, a few steps of SGD with momentum may go up and down between
    two timed steps, so the first timed step is not the reference here)."""
    for w in smoke["workloads"]:
        s = w[side]
        assert s["median_s"] > 0 and all(t > 0 for t in s["step_seconds"][0]), w["id"]
        assert s["samples_per_s"] == pytest.approx(w["batch"] / s["median_s"])
        assert all(math.isfinite(v) for v in (s["initial_loss"], s["first_loss"],
                                               s["last_loss"])), (w["id"], s)
        assert s["last_loss"] < s["initial_loss"], (w["id"], side, s["initial_loss"],
                                                    s["last_loss"])
        # no GPU: no launch counts or device memory
        assert s["kernels_per_step"] is None and s["peak_bytes"] is None
    assert all(w["ratio"]["median"] > 0 for w in smoke["workloads"])


def test_smoke_run_lowers_every_workload_for_the_cuda_target(smoke):
    by_id = {w["id"]: w["executor"] for w in smoke["workloads"]}
    assert set(by_id.values()) == {"Executor (cuda target)"}


def test_gpu_batch_sizes_are_the_workloads():
    assert {j.id: j.batch for j in gpu_speed.jobs()} == {
        "W1": 4096, "W2": 1024, "W3": 256, "W4": 256, "W5": 256, "W6": 128}
    optimizers = {j.id: j.optimizer for j in gpu_speed.jobs()}
    assert optimizers == {"W1": "sgd", "W2": "sgd", "W3": "sgd", "W4": "adam", "W5": "adam",
                          "W6": "sgd"}


def test_a_gpu_batch_of_digits_repeats_them():
    w1 = next(j for j in gpu_speed.jobs() if j.id == "W1")
    batch, source = gpu_speed.make_batch(w1)
    assert batch["x"].shape == (4096, 64) and batch["y"].shape == (4096,)
    assert batch["x"].dtype.name == "float32" and batch["y"].dtype.name == "int64"
    if source.startswith("digits"):  # scikit-learn is there: 1,797 digits, repeated
        assert (batch["x"][:1797] == batch["x"][1797:2 * 1797]).all()


def test_launch_counts_read_a_kineto_trace():
    """Kernels, copies and fills per step from a chrome trace's complete events."""
    events = ([{"ph": "X", "cat": "kernel", "name": "k"}] * 12
              + [{"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD"}] * 3
              + [{"ph": "X", "cat": "gpu_memset", "name": "Memset"}] * 6
              + [{"ph": "X", "cat": "cpu_op", "name": "aten::mm"}] * 5
              + [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel"}] * 12
              + [{"ph": "s", "cat": "ac2g", "name": "flow"}] * 4 + [{"ph": "M"}])
    assert gpu_speed.launch_counts(events, 3) == {"kernels": 4, "memcpy": 1, "memset": 2}


def test_pool_peak_counts_above_the_start_and_restores_the_allocator():
    """track_pool_peak on a stand-in for CuPy's pool: the peak of the bytes in use, read
    after each allocation, above those in use before; the allocator from before (or the
    pool's malloc) is back afterwards."""

    class Pool:
        def __init__(self):
            self.used = 1000  # the input batch, already there

        def malloc(self, size):
            self.used += size
            return ("memory", size)

        def free(self, size):
            self.used -= size

        def used_bytes(self):
            return self.used

    pool, installed = Pool(), []

    def run():
        allocate = installed[-1]
        allocate(300)
        allocate(200)
        pool.free(500)
        allocate(100)
        return "trained"

    result, peak = gpu_speed.track_pool_peak(pool, installed.append, run)
    assert (result, peak) == ("trained", 500)
    assert installed[-1] == pool.malloc
    _, peak = gpu_speed.track_pool_peak(pool, installed.append, run, previous="before")
    assert peak == 500 and installed[-1] == "before"


def test_time_limit_interrupts_a_long_call():
    with pytest.raises(gpu_speed.CompileTimeout):
        with gpu_speed.time_limit(0.2):
            while True:
                pass


def test_report_prints_na_without_a_gpu(capsys):
    side = {"median_s": 0.002, "samples_per_s": 1000.0, "first_loss": 2.0, "last_loss": 1.0,
            "kernels_per_step": None, "memcpy_per_step": None, "memset_per_step": None,
            "peak_bytes": None}
    gpu_side = dict(side, kernels_per_step=41.0, memcpy_per_step=1.0, memset_per_step=2.0,
                    peak_bytes=3 * gpu_speed.MIB)
    result = {"id": "W1", "title": "MLP", "batch": 2, "data": "digits", "executor": "Executor",
              "repeats": 1, "steps": 3, "netdsl": gpu_side, "torch": side,
              "ratio": {"median": 1.0, "min": 1.0, "max": 1.0},
              "compile_error": "RuntimeError: no compiler"}
    env = {"device": "cpu", "date": "today", "device_name": "a CPU", "python": "3",
           "numpy": "2", "torch": "2", "repeats": 1}
    gpu_speed.print_report(env, [result], 1.0)
    out = capsys.readouterr().out
    assert "| 41 / n/a / n/a | 3 / n/a | 3.0 / n/a |" in out
    assert "RuntimeError: no compiler" in out
