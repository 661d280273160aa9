"""Batchnorm on the native CPU target: per-channel programs (ops.channels) made from the
op's formulas (ops.norm.batch_norm_programs), compiled to C.

- the C source equals its golden file (tests/golden_native/channels_batchnorm.c);
- compiled, and evaluated by NumPy, the programs compute what ops.numeric's NumPy
  batchnorm does, forward (batch and running statistics) and backward, in float32 and
  float64, over one slab or over channel slabs on the host's threads;
- they equal PyTorch's batch_norm in float64: output, running statistics, gradients;
- a native executor runs them (test_fused compares whole networks with the host's).
"""
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_golden
from netdsl.lower.native import c_module
from netdsl.ops.base import Ctx
from netdsl.ops.channels import run_channels
from netdsl.ops.norm import BATCH_NORM, normalise, normalise_backward
from netdsl.ops.numeric import batch_norm, batch_norm_backward
from netdsl.runtime import host, native  # noqa: F401  host lends the threads slabs run on
from netdsl.runtime.native import toolchain as native_build

GOLDEN = os.path.join(ROOT, "tests", "golden_native", "channels_batchnorm.c")
TOLERANCE = {"float32": 2e-5, "float64": 1e-12}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path))
    native_build.build.cache_clear()
    yield
    native_build.build.cache_clear()


def test_batchnorm_source_matches_golden(update_golden):
    assert_golden(GOLDEN, c_module(list(BATCH_NORM), "float32"), update_golden)


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)   # a mean far from zero
    weight = rng.uniform(0.5, 1.5, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    return x, weight, bias, gy


def _numpy_and_ours(shape, dtype, training, compiled):
    """(NumPy's (y, mean, inv_std, dx, dweight, dbias, running stats), the programs'):
    compiled, or (`compiled` False) evaluated by NumPy through ops.channels."""
    x, weight, bias, gy = _inputs(shape, dtype)
    buffers = {"running_mean": np.full(shape[1], 0.5, dtype),
               "running_var": np.full(shape[1], 2.0, dtype)}
    theirs_buffers, ours_buffers = dict(buffers), dict(buffers)
    y, xhat, inv_std = batch_norm.generic(np, x, weight, bias, 1e-5, 0.1, theirs_buffers,
                                          training)
    dx, dweight, dbias = batch_norm_backward.generic(np, gy, xhat, inv_std, weight, training)
    # the mean the kernel keeps: the batch's, or the running one it normalised with
    mean = (x - xhat / inv_std).reshape(x.shape[0], x.shape[1], -1).mean(axis=(0, 2))
    theirs = (y, mean, inv_std.reshape(-1), dx, dweight, dbias,
              theirs_buffers["running_mean"], theirs_buffers["running_var"])
    ctx = Ctx(np, training=training, buffers=ours_buffers, dtype=dtype)
    ctx.compiled = True
    provider = run_channels.provided.pop("numpy", None)
    try:
        if compiled:
            run_channels.provided["numpy"] = provider
            native.prepare(list(BATCH_NORM), dtype)
        y, kept = normalise(ctx, x, weight, bias, 1e-5, 0.1)
        assert kept["normalised"] is x   # x is kept, xhat made again in backward
        dx, dweight, dbias = normalise_backward(ctx, gy, kept, weight, training)
    finally:
        run_channels.provided["numpy"] = provider
    ours = (y, kept["mean"], kept["inv_std"], dx, dweight, dbias,
            ours_buffers["running_mean"], ours_buffers["running_var"])
    return theirs, ours


@pytest.mark.parametrize("training", [True, False], ids=["batch", "running"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (7, 4), (2, 3, 5, 1, 3)])
def test_the_compiled_programs_compute_what_numpy_does(shape, dtype, training, cache):
    theirs, ours = _numpy_and_ours(shape, dtype, training, compiled=True)
    for name, a, b in zip(("y", "mean", "inv_std", "dx", "dweight", "dbias", "running_mean",
                           "running_var"), ours, theirs):
        assert a.dtype == np.dtype(dtype) and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype],
                                   err_msg=name)


@pytest.mark.parametrize("training", [True, False], ids=["batch", "running"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_evaluates_the_same_programs(dtype, training):
    """ctx.compiled with nothing compiled: run_channels evaluates the formulas with NumPy."""
    theirs, ours = _numpy_and_ours((4, 3, 5, 5), dtype, training, compiled=False)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_large_inputs_run_in_channel_slabs_on_the_host_threads(cache, monkeypatch):
    """Above native.SPLIT_BYTES, slabs of channels run on the host's threads."""
    from netdsl.ops import parallel  # the seam whose calls the test counts
    calls = []
    real = parallel.slab_map.provided["numpy"]

    def counting(xp, fn, total, size=parallel.MIN_SPLIT_BYTES):
        calls.append((total, size))
        return real(xp, fn, total, size)

    monkeypatch.setitem(parallel.slab_map.provided, "numpy", counting)
    monkeypatch.setattr(native, "SPLIT_BYTES", 1 << 20)   # the arrays stay small
    theirs, ours = _numpy_and_ours((16, 24, 32, 32), "float32", True, compiled=True)
    assert calls and all(total == 24 and size > parallel.MIN_SPLIT_BYTES
                         for total, size in calls)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("training", [True, False], ids=["batch", "running"])
def test_the_compiled_batchnorm_equals_pytorch_in_float64(training, cache):
    x, weight, bias, gy = _inputs((6, 4, 5, 3), "float64", seed=2)
    native.prepare(list(BATCH_NORM), "float64")
    buffers = {"running_mean": np.full(4, 0.5), "running_var": np.full(4, 2.0)}
    ctx = Ctx(np, training=training, buffers=buffers, dtype="float64")
    ctx.compiled = True
    y, kept = normalise(ctx, x, weight, bias, 1e-5, 0.1)
    dx, dweight, dbias = normalise_backward(ctx, gy, kept, weight, training)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    mean, var = torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 2.0,
                                                                        dtype=torch.float64)
    ty = torch.nn.functional.batch_norm(tx, mean, var, tw, tb, training, 0.1, 1e-5)
    ty.backward(torch.tensor(gy))
    for ours, theirs in ((y, ty), (dx, tx.grad), (dweight, tw.grad), (dbias, tb.grad),
                         (buffers["running_mean"], mean), (buffers["running_var"], var)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-13)


def test_a_native_executor_runs_the_compiled_batchnorm(cache):
    from netdsl.driver import check_text  # the end-to-end case only
    from netdsl.lower import lower
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params
    text = ("network bn\ninput x : [3, 4, 4]\ntarget y : class(2)\n"
            "z = x -> batchnorm -> relu -> global_avgpool -> dense(2)\n"
            "loss cross_entropy(z, y)\n")
    graph = check_text(text).graph
    native_lowered, host_lowered = lower(graph, "native"), lower(graph)
    node = next(s.node for s in native_lowered.plan.steps if s.op.name == "batchnorm")
    assert native_lowered.kernels[node] == list(BATCH_NORM)
    assert not host_lowered.kernels and not lower(graph, "cuda").kernels.get(node)
    params = initial_params(host_lowered.built, "torch", seed=0)
    executors = [Executor(low, params, dtype="float64") for low in (native_lowered,
                                                                    host_lowered)]
    assert executors[0].compiled_ops and not executors[1].compiled_ops
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((5, 3, 4, 4)), "y": rng.integers(0, 2, 5)}
    calls = []
    real = native._functions[(id(BATCH_NORM.train), "float64")][1]
    native._functions[(id(BATCH_NORM.train), "float64")] = (
        BATCH_NORM.train, lambda *a: (calls.append(1), real(*a)))
    try:
        for ex in executors:
            ex.forward(batch, True)
            ex.backward()
    finally:
        native._functions[(id(BATCH_NORM.train), "float64")] = (BATCH_NORM.train, real)
    assert calls   # the native executor's batchnorm ran the compiled function
    np.testing.assert_allclose(executors[0].flat_grads, executors[1].flat_grads, rtol=1e-10,
                               atol=1e-13)
