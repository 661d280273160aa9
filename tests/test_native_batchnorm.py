"""Batchnorm on the native CPU target: per-channel programs (ops.channels) made from the
op's formulas (ops.norm.batch_norm_programs), compiled to C.

- the C source equals its golden file (tests/golden_native/channels_batchnorm.c), and
  with the lean passes (lower.native.LEAN_PASSES, NETDSL_BN_PASSES) its own
  (channels_batchnorm_lean.c); each test of the compiled programs runs both;
- compiled, and evaluated by NumPy, the programs compute what ops.numeric's NumPy
  batchnorm does, forward (batch and running statistics) and backward, in float32 and
  float64, over one slab or over channel slabs on the host's threads;
- split over 1, 2 and 3 threads (5 channels: unequal slabs), the slabs handed to the C
  pool give the bits the Python threads give (NETDSL_C_SLABS=0), and equal PyTorch;
- they equal PyTorch's batch_norm in float64: output, running statistics, gradients;
- a native executor runs them (test_fused compares whole networks with the host's);
- an elementwise chain after a batchnorm runs inside its programs (lower.fuse.absorb):
  the C source of `batchnorm -> add -> relu` equals its golden file, and forward and
  backward, running statistics included, equal PyTorch's in float64 in training and in
  eval mode, compiled, evaluated by NumPy, and with the op's NumPy code and the chain
  apart; a value asked for keeps its batchnorm apart.
"""
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_golden
from netdsl.lower import native as native_lower
from netdsl.lower.native import c_module
from netdsl.ops.base import Ctx
from netdsl.ops.channels import run_channels
from netdsl.ops.norm import BATCH_NORM, normalise, normalise_backward
from netdsl.ops.numeric import batch_norm, batch_norm_backward
from netdsl.runtime import host, native  # noqa: F401  host lends the threads slabs run on
from netdsl.runtime.native import toolchain as native_build

GOLDEN = os.path.join(ROOT, "tests", "golden_native", "channels_batchnorm.c")
GOLDEN_ADD_RELU = os.path.join(ROOT, "tests", "golden_native", "channels_batchnorm_add_relu.c")
# the lean passes' sources (float32 blocks summed in float, a shared term stashed)
LEAN = {GOLDEN: GOLDEN.replace(".c", "_lean.c"),
        GOLDEN_ADD_RELU: GOLDEN_ADD_RELU.replace(".c", "_lean.c"),
        "relu": os.path.join(ROOT, "tests", "golden_native", "channels_batchnorm_relu_lean.c")}
TOLERANCE = {"float32": 2e-5, "float64": 1e-12}


@pytest.fixture(params=[True, False], ids=["lean", "old"])
def passes(request, monkeypatch):
    """The programs' C with the lean passes (the default) and without."""
    monkeypatch.setattr(native_lower, "LEAN_PASSES", request.param)
    return request.param


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path))
    native_build.build.cache_clear()
    yield
    native_build.build.cache_clear()


def test_batchnorm_source_matches_golden(update_golden, passes):
    assert_golden(LEAN[GOLDEN] if passes else GOLDEN, c_module(list(BATCH_NORM), "float32"),
                  update_golden)


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
@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (7, 4), (2, 3, 5, 1, 3), (3, 2, 17, 19)])
def test_the_compiled_programs_compute_what_numpy_does(shape, dtype, training, cache, passes):
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


@pytest.mark.parametrize("c_slabs", [True, False], ids=["pool", "python"])
def test_large_inputs_run_in_channel_slabs_on_the_host_threads(cache, monkeypatch, c_slabs,
                                                                passes):
    """Above native.CHANNEL_SPLIT_BYTES, slabs of channels run on the host's threads,
    handed to the C pool (C_SLABS) or to Python threads."""
    from netdsl.ops import parallel
    from netdsl.runtime.native import slabs
    calls, pooled = [], []
    real = native.run_slabs

    def counting(plan, total, size):
        calls.append((total, size))
        return real(plan, total, size)

    monkeypatch.setattr(native, "run_slabs", counting)
    monkeypatch.setattr(host, "host_threads", lambda: 2)
    monkeypatch.setattr(slabs, "C_SLABS", c_slabs)
    real_pool = slabs._on_pool
    monkeypatch.setattr(slabs, "_on_pool",
                        lambda plan, parts: pooled.append(len(parts)) or real_pool(plan, parts))
    monkeypatch.setattr(native, "CHANNEL_SPLIT_BYTES", 1 << 20)   # the arrays stay small
    theirs, ours = _numpy_and_ours((16, 24, 32, 32), "float32", True, compiled=True)
    assert calls and all(total == 24 and size > parallel.MIN_SPLIT_BYTES
                         for total, size in calls)
    assert pooled == ([4] * len(calls) if c_slabs else [])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def _compiled(x, weight, bias, gy, training):
    """The compiled programs' y, dx, dweight, dbias, running mean and variance."""
    channels, dtype = x.shape[1], str(x.dtype)
    native.prepare(list(BATCH_NORM), dtype)
    buffers = {"running_mean": np.full(channels, 0.5, dtype),
               "running_var": np.full(channels, 2.0, dtype)}
    ctx = Ctx(np, training=training, buffers=buffers, dtype=dtype)
    ctx.compiled = True
    y, kept = normalise(ctx, x, weight, bias, 1e-5, 0.1)
    dx, dweight, dbias = normalise_backward(ctx, gy, kept, weight, training)
    return y, dx, dweight, dbias, buffers["running_mean"], buffers["running_var"]


def _torch_batchnorm(x, weight, bias, gy, training):
    """PyTorch's in float64, in _compiled's order."""
    channels = x.shape[1]
    tx, tw, tb = (torch.tensor(a, requires_grad=True, dtype=torch.float64)
                  for a in (x, weight, bias))
    mean = torch.full((channels,), 0.5, dtype=torch.float64)
    var = torch.full((channels,), 2.0, dtype=torch.float64)
    ty = torch.nn.functional.batch_norm(tx, mean, var, tw, tb, training, 0.1, 1e-5)
    ty.backward(torch.tensor(gy, dtype=torch.float64))
    return [t.detach().numpy() for t in (ty, tx.grad, tw.grad, tb.grad, mean, var)]


@pytest.mark.parametrize("training", [True, False], ids=["batch", "running"])
def test_the_compiled_batchnorm_equals_pytorch_in_float64(training, cache, passes):
    x, weight, bias, gy = _inputs((6, 4, 5, 3), "float64", seed=2)
    for ours, theirs in zip(_compiled(x, weight, bias, gy, training),
                            _torch_batchnorm(x, weight, bias, gy, training)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("training", [True, False], ids=["batch", "running"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_pool_splits_into_the_bits_the_python_threads_do(threads, training, dtype, cache,
                                                             monkeypatch):
    from netdsl.runtime.native import slabs
    pooled = []
    real_pool = slabs._on_pool
    monkeypatch.setattr(slabs, "_on_pool",
                        lambda plan, parts: pooled.append(len(parts)) or real_pool(plan, parts))
    monkeypatch.setattr(host, "host_threads", lambda: threads)
    monkeypatch.setattr(host, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(native, "CHANNEL_SPLIT_BYTES", 0)   # these small arrays split too
    x, weight, bias, gy = _inputs((7, 5, 4, 3), dtype, seed=3)
    monkeypatch.setattr(slabs, "C_SLABS", True)
    on_pool = _compiled(x, weight, bias, gy, training)
    assert pooled if threads > 1 else not pooled
    assert set(pooled) <= {min(2 * threads, 5)}
    monkeypatch.setattr(slabs, "C_SLABS", False)
    count = len(pooled)
    on_threads = _compiled(x, weight, bias, gy, training)
    assert len(pooled) == count
    for got, want in zip(on_pool, on_threads, strict=True):
        np.testing.assert_array_equal(got, want)
    tolerance = TOLERANCE[dtype]
    for got, want in zip(on_pool, _torch_batchnorm(x, weight, bias, gy, training)):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * 10)


def test_a_native_executor_runs_the_compiled_batchnorm(cache):
    from netdsl.driver import check_text  # the end-to-end case only
    from netdsl.lower import lower
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params
    # no chain after the batchnorm: it runs alone (with one, test_a_chain_after_...)
    text = ("network bn\ninput x : [3, 4, 4]\ntarget y : class(2)\n"
            "z = x -> batchnorm -> global_avgpool -> relu -> dense(2)\n"
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


# ---- a chain after a batchnorm, in its programs


def _add_relu(position: int = 0):
    """batchnorm's op and the fused step of `relu(bn(x) + skip)` (bn's output at the add's
    input `position`)."""
    from netdsl.lower.codegen import Chain
    from netdsl.lower.fuse import ChannelChain
    from netdsl.ops import OPS
    from netdsl.ops.base import bind

    head = bind(OPS["batchnorm"], [], {})
    chain = Chain((bind(OPS["add"], [], {}), bind(OPS["relu"], [], {})), ((0, 1), (-1,)), 2)
    return head, ChannelChain(head, chain, position, ("bn", "add", "relu"))


def _relu():
    from netdsl.lower.codegen import Chain
    from netdsl.lower.fuse import ChannelChain
    from netdsl.ops import OPS
    from netdsl.ops.base import bind

    head = bind(OPS["batchnorm"], [], {})
    chain = Chain((bind(OPS["relu"], [], {}),), ((0,),), 1)
    return head, ChannelChain(head, chain, 0, ("bn", "relu"))


def test_batchnorm_add_relu_source_matches_golden(update_golden, passes):
    _, fused = _add_relu()
    assert [p.name for p in fused.programs] == [
        "batchnorm_train_add_relu", "batchnorm_eval_add_relu", "batchnorm_backward_add_relu",
        "batchnorm_backward_fixed_add_relu"]
    assert_golden(LEAN[GOLDEN_ADD_RELU] if passes else GOLDEN_ADD_RELU,
                  c_module(list(fused.programs), "float32"), update_golden)


def test_batchnorm_relu_lean_source_matches_golden(update_golden, monkeypatch):
    """A relu's masked gradient, stashed in dx by the summing pass, read back by the
    writing pass (no array of its own to go to)."""
    monkeypatch.setattr(native_lower, "LEAN_PASSES", True)
    assert_golden(LEAN["relu"], c_module(list(_relu()[1].programs), "float32"), update_golden)


def test_one_pattern_is_one_set_of_programs():
    """Every fused step of one pattern shares its programs: one compiled function each."""
    assert _add_relu()[1].programs == _add_relu()[1].programs
    assert _add_relu()[1].programs != _add_relu(1)[1].programs != _relu()[1].programs


def _torch_fused(x, weight, bias, skip, gy, training, mean, var):
    """relu(batch_norm(x) + skip) (skip None: relu alone) in float64 PyTorch: y, and the
    gradients of x, skip, weight and bias."""
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    z = torch.nn.functional.batch_norm(tx, mean, var, tw, tb, training, 0.1, 1e-5)
    ts = None if skip is None else torch.tensor(skip, requires_grad=True)
    ty = torch.relu(z if ts is None else z + ts)
    ty.backward(torch.tensor(gy))
    return [ty.detach().numpy(), tx.grad.numpy(), None if ts is None else ts.grad.numpy(),
            tw.grad.numpy(), tb.grad.numpy()]


@pytest.mark.parametrize("way", ["compiled", "evaluated", "apart"])
@pytest.mark.parametrize("training", [True, False], ids=["batch", "running"])
@pytest.mark.parametrize("chain", ["add_relu", "add_relu_at_1", "relu"])
def test_a_chain_after_a_batchnorm_equals_pytorch_in_float64(chain, training, way, cache,
                                                             passes):
    """Forward, the gradients of both inputs and of the parameters, and the running
    statistics, over two steps (the second normalises with the first's statistics in
    eval mode). `apart`: the op's NumPy code, then the chain (a runtime providing
    batch_norm itself, as synchronised batchnorm does)."""
    head, fused = (_relu() if chain == "relu" else _add_relu(int(chain.endswith("1"))))
    if way == "compiled":
        native.prepare(list(fused.programs), "float64")
    rng = np.random.default_rng(5)
    shape = (4, 3, 5, 6)
    weight, bias = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    buffers = {"running_mean": np.full(3, 0.5), "running_var": np.full(3, 2.0)}
    mean, var = torch.full((3,), 0.5, dtype=torch.float64), torch.full((3,), 2.0,
                                                                        dtype=torch.float64)
    provider = run_channels.provided.get("numpy")
    for _ in range(2):
        x = rng.standard_normal(shape) * 2 + 1
        skip, gy = rng.standard_normal(shape), rng.standard_normal(shape)
        others = () if chain == "relu" else (skip,)
        ctx = Ctx(np, training=training, buffers=buffers, dtype="float64")
        ctx.compiled = way != "apart"
        if way == "evaluated":   # the formulas evaluated by NumPy through ops.channels
            run_channels.provided.pop("numpy", None)
        try:
            y = fused.forward(ctx, x, *others, weight=weight, bias=bias)
            ctx.needs_input_grad = (True,) * (1 + len(others))
            grads, params = fused.backward(ctx, gy)
        finally:
            run_channels.provided["numpy"] = provider
        assert ("chain_y" in ctx.saved) == (way != "apart")
        theirs = _torch_fused(x, weight, bias, None if chain == "relu" else skip, gy,
                              training, mean, var)
        ours = [y, grads[0], grads[1] if others else None, params["weight"], params["bias"]]
        for name, a, b in zip(("y", "dx", "dskip", "dweight", "dbias"), ours, theirs):
            if b is None:
                assert len(grads) == 1
                continue
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13, err_msg=name)
        np.testing.assert_allclose(buffers["running_mean"], mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(buffers["running_var"], var.numpy(), rtol=1e-12)


def test_a_chain_after_a_batchnorm_runs_in_its_call(cache):
    """A native lowering of ResNet-20 runs each batchnorm with the chain after it (relu, or
    add -> relu) as one step: no batchnorm and no chain of their own remain; its running
    statistics stay under the batchnorm's name. One compiled call each way."""
    from netdsl.driver import check_text
    from netdsl.lower import lower
    from netdsl.lower.fuse import ChannelChain, FusedChain
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params
    text = ("network bn\ninput x : [3, 4, 4]\ntarget y : class(2)\n"
            "a = x -> conv(3, 3, pad=1)\n"
            "z = (a -> conv(3, 3, pad=1) -> batchnorm) + a -> relu -> global_avgpool"
            " -> dense(2)\nloss cross_entropy(z, y)\n")
    graph = check_text(text).graph
    lowered = lower(graph, "native", verify=True)
    [step] = [s for s in lowered.plan.steps if isinstance(s.op, ChannelChain)]
    bn = step.op.nodes[0]
    assert step.buffers_of == bn and len(step.inputs) == 2
    assert not [s for s in lowered.plan.steps if isinstance(s.op, FusedChain)
                or s.op.name == "batchnorm"]
    assert lowered.kernels[step.node] == list(step.op.programs)
    host = lower(graph)
    params = initial_params(host.built, "torch", seed=0)
    ours, theirs = (Executor(low, params, dtype="float64") for low in (lowered, host))
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((5, 3, 4, 4)), "y": rng.integers(0, 2, 5)}
    calls = []
    key = (id(step.op.programs.train), "float64")
    real = native._functions[key]
    native._functions[key] = (real[0], lambda *a: (calls.append(1), real[1](*a)))
    try:
        for ex in (ours, theirs):
            ex.forward(batch, True)
            ex.backward()
    finally:
        native._functions[key] = real
    assert calls == [1]
    np.testing.assert_allclose(ours.flat_grads, theirs.flat_grads, rtol=1e-10, atol=1e-13)
    assert ours.state_dict()["buffers"].keys() == theirs.state_dict()["buffers"].keys()
    # the tensors a checkpoint, --init-from and the exporters name are the host's
    from netdsl.export.weights import network_tensors, tensor_sources
    assert tensor_sources(lowered.plan) == tensor_sources(host.plan)
    mine = network_tensors(lowered.plan, ours.params, ours.buffers)
    for name, value in network_tensors(host.plan, theirs.params, theirs.buffers).items():
        np.testing.assert_allclose(mine[name], value, rtol=1e-10, atol=1e-13)
    # a value asked for (the batchnorm's output) stays a value: the chain runs apart
    kept = lower(graph, "native", outputs=[bn])
    assert bn in {s.node for s in kept.plan.steps}
    assert not [s for s in kept.plan.steps if isinstance(s.op, ChannelChain)]


def test_diagnose_sees_a_fused_batchnorms_parameters_not_its_output(cache):
    """`netc run --diagnose` on the native target: a batchnorm run inside its chain's
    call makes no value of its own, so, like a fused chain's inner nodes, its output's
    numbers are not recorded; its parameters' gradient norm and update ratio are, and the
    chain's output's numbers are."""
    from test_diagnose import one_recorded_step
    text = ("network probe\ninput x : [2, 3, 3]\ntarget y : class(3)\n"
            "h = x -> conv(4, 3, pad=1) -> batchnorm -> relu -> global_avgpool -> dense(3)\n"
            "loss cross_entropy(h, y)\ntrain sgd(lr=0.5), batch=8, epochs=1\n")
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(8, 2, 3, 3)).astype(np.float32),
              "y": rng.integers(0, 3, size=8)}
    stats, _, _, target = one_recorded_step(text, True, arrays)
    assert target == "native"
    assert set(stats["batchnorm1"]) == {"param_grad_norm", "update_ratio"}
    assert {"mean", "std", "dead", "grad_norm"} <= set(stats["relu1"])


@pytest.mark.parametrize("training", [True, False], ids=["batch", "running"])
def test_a_longer_chain_with_two_other_inputs_runs_as_apart(training, cache):
    """tanh(bn(x) + a + b): a transcendental in the writing pass and two other inputs,
    whose gradients the backward writes; compiled, in float64, as the op's NumPy code
    and the chain run apart."""
    from netdsl.lower.codegen import Chain
    from netdsl.lower.fuse import ChannelChain
    from netdsl.ops import OPS
    from netdsl.ops.base import bind

    head = bind(OPS["batchnorm"], [], {})
    add, tanh = bind(OPS["add"], [], {}), bind(OPS["tanh"], [], {})
    chain = Chain((add, add, tanh), ((0, 1), (-1, 2), (-1,)), 3)
    fused = ChannelChain(head, chain, 0, ("bn", "add1", "add2", "tanh"))
    native.prepare(list(fused.programs), "float64")
    rng = np.random.default_rng(7)
    shape = (3, 2, 4, 5)
    x, a, b, gy = (rng.standard_normal(shape) for _ in range(4))
    weight, bias = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    results = []
    for compiled in (True, False):
        buffers = {"running_mean": np.full(2, 0.5), "running_var": np.full(2, 2.0)}
        ctx = Ctx(np, training=training, buffers=buffers, dtype="float64")
        ctx.compiled = compiled
        y = fused.forward(ctx, x, a, b, weight=weight, bias=bias)
        ctx.needs_input_grad = (True, True, True)
        grads, params = fused.backward(ctx, gy)
        results.append((y, *grads, params["weight"], params["bias"],
                        buffers["running_mean"], buffers["running_var"]))
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "slabs"])
@pytest.mark.parametrize("training", [True, False], ids=["batch", "running"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chain", ["add_relu", "relu"])
def test_a_chain_after_a_batchnorm_compiled_equals_evaluated(chain, dtype, training, split,
                                                            cache, passes, monkeypatch):
    """Compiled, with the lean passes and without, in one call or in channel slabs on the
    host's threads, the fused programs equal NumPy's evaluation of the same formulas in
    either dtype, over a channel of odd length longer than a summing block (tails)."""
    head, fused = _relu() if chain == "relu" else _add_relu()
    monkeypatch.setattr(native, "CHANNEL_SPLIT_BYTES", 0 if split else 1 << 40)
    rng = np.random.default_rng(7)
    shape = (3, 5, 17, 19)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    skip, gy = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 1.5, 5).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    others = () if chain == "relu" else (skip,)
    provider = run_channels.provided.get("numpy")
    results = []
    for compiled in (True, False):
        buffers = {"running_mean": np.full(5, 0.5, dtype), "running_var": np.full(5, 2.0, dtype)}
        ctx = Ctx(np, training=training, buffers=buffers, dtype=dtype)
        ctx.compiled = True
        if compiled:
            native.prepare(list(fused.programs), dtype)
        else:
            run_channels.provided.pop("numpy", None)
        try:
            y = fused.forward(ctx, x, *others, weight=weight, bias=bias)
            ctx.needs_input_grad = (True,) * (1 + len(others))
            grads, params = fused.backward(ctx, gy)
        finally:
            run_channels.provided["numpy"] = provider
        results.append([y, *grads, params["weight"], params["bias"],
                        buffers["running_mean"], buffers["running_var"]])
    names = ("y", "dx", *(("dskip",) if others else ()), "dweight", "dbias", "running_mean",
             "running_var")
    for name, a, b in zip(names, *results):
        assert a.dtype == np.dtype(dtype), name
        # float32: each block of 256 terms summed in float lanes, against double
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=TOLERANCE[dtype],
                                   atol=TOLERANCE[dtype] * scale, err_msg=name)
