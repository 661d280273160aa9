"""The GPU path end to end on the CPU: every kernel netdsl launches, run from its CUDA
source compiled for the host.

A stand-in for CuPy (NumPy under the module name "cupy") sends the executors down
their GPU path: the cuda target's generated elementwise kernels, the convolution,
max-pooling, batchnorm and cross-entropy kernels, the one-kernel optimiser update, and
the training loop that reads the device every few steps. Each kernel CuPy would
compile with NVRTC is compiled with g++ instead (tests/cpu_cuda.py) and launched on
the host. The results must equal the NumPy executor's. What this cannot check is the
GPU itself: CuPy's own functions, the speed, and the parallel execution of the
kernels (their threads write disjoint elements, or add atomically).
"""
import importlib.util
import os

import numpy as np
import pytest

from cpu_cuda import launch_on_host, stand_in_cupy
from netdsl.driver import check_text
from netdsl.lower import lower
from netdsl.lower.fuse import FusedChain
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.optim import make_optimizer
from test_runtime import KNOTTY
from test_train_torch import VARIANTS, random_batch, spec_lowered


@pytest.fixture
def launched():
    """The sources launched, by kernel name: what shows the GPU path ran."""
    return {}


@pytest.fixture
def device(monkeypatch, launched):
    """The CuPy stand-in, with every kernel launch run on the host."""
    launch_on_host(monkeypatch, launched)
    return stand_in_cupy()


# each case's step launches at least these kernels (every one launched runs on the host)
CASES = {
    "mlp": {"relu_forward", "relu_backward_1_y", "ce_rows", "ce_gradient", "update"},
    "lenet5": {"im2col", "col2im", "maxpool", "maxpool_backward"},
    "resnet20": {"bn_statistics", "bn_normalise", "bn_sums", "bn_input_grad",
                 "add_relu_forward", "add_relu_backward_11_y_merged"},
    "googlenet": {"maxpool", "maxpool_backward", "im2col"},
    "vae": {"scale_exp_mul_add_forward"},
    "knotty": {"im2col", "bn_statistics", "maxpool", "update"},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_training_step_equals_the_host(device, launched, name):
    if name == "knotty":
        graph, size = check_text(KNOTTY).graph, 3
    else:
        graph, size = spec_lowered(name, VARIANTS[name].edits).graph, VARIANTS[name].batch
    noise = [n for n, op in graph.nodes(data="op")
             if op is not None and op.name in ("normal", "gaussian_noise", "dropout")]
    host_spec, cuda_spec = lower(graph, outputs=noise), lower(graph, "cuda", outputs=noise)
    plan = host_spec.plan
    batch = random_batch(plan, max(size, 2), np.random.default_rng(0))
    params = initial_params(host_spec.built, "torch", seed=0)
    host = Executor(host_spec, params, seed=0, dtype="float64")
    emulated = Executor(cuda_spec, params, seed=0, xp=device, dtype="float64")
    # SGD: Adam would magnify the last bits of a gradient near zero into a whole step
    optimizers = [make_optimizer("sgd", {"lr": 0.01, "momentum": 0.9}, ex.flat_params, ex.xp)
                  for ex in (host, emulated)]
    for _ in range(2):
        losses = []
        for ex, optimizer in zip((host, emulated), optimizers):
            out = ex.forward(batch, training=True, keep=noise)
            losses.append({k: float(out[v]) for k, v in plan.losses.items()})
            ex.backward()
            optimizer.step(ex.flat_grads.copy(), 0.01)
        if noise:   # different generators: compare only that both ran
            continue
        for key, value in losses[0].items():
            assert losses[1][key] == pytest.approx(value, rel=1e-10), key
        np.testing.assert_allclose(emulated.flat_grads, host.flat_grads, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(emulated.flat_params, host.flat_params, rtol=1e-9,
                                   atol=1e-12)
    assert CASES[name] <= set(launched), f"not launched: {CASES[name] - set(launched)}"


def test_training_on_the_gpu_path_gives_the_host_losses(device):
    """Trainer off the host: generated kernels, the update kernel and deferred reads,
    float32."""
    from test_cupy_compat import _trainer

    host, train, val = _trainer("lenet5", np, epochs=1, steps=12, batch=16)
    host.fit(train, val)
    emulated, train, val = _trainer("lenet5", device, epochs=1, steps=12, batch=16)
    emulated.fit(train, val)
    assert any(isinstance(s.op, FusedChain) for s in emulated.plan.steps)
    for ours, theirs in zip(emulated.position.losses, host.position.losses, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    assert emulated.evaluate(val)["accuracy"] == pytest.approx(host.evaluate(val)["accuracy"])


# ---- tests/test_gpu.py, which skips without a GPU, on the emulated GPU path: its every op
# and spec against NumPy, so the suite itself is checked before a GPU runs it


def _gpu_suite_emulated():
    """tests/test_gpu.py loaded a second time, under its own name, as
    NETDSL_GPU_TEST_XP=emulated loads it: the file picks its array module at import."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_gpu.py")
    spec = importlib.util.spec_from_file_location("test_gpu_on_the_emulated_path", path)
    module = importlib.util.module_from_spec(spec)
    before = os.environ.get("NETDSL_GPU_TEST_XP")
    os.environ["NETDSL_GPU_TEST_XP"] = "emulated"
    try:
        spec.loader.exec_module(module)
    finally:
        if before is None:
            del os.environ["NETDSL_GPU_TEST_XP"]
        else:
            os.environ["NETDSL_GPU_TEST_XP"] = before
    assert module.EMULATED and module.NO_GPU is None
    return module


_SUITE = _gpu_suite_emulated()
# its tests collected here, each run in this process with its kernels on the host (the
# suite's autouse fixture; the `device` fixture above sets its own launcher after it)
kernels_on_host = _SUITE.kernels_on_host
_SUITE_TESTS = {name: test for name, test in vars(_SUITE).items()
                if name.startswith("test_") and callable(test)}
assert not _SUITE_TESTS.keys() & globals().keys(), "a test of this file hides one of the suite's"
globals().update(_SUITE_TESTS)
