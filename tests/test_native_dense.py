"""A dense layer that takes the elementwise chain after it (lower/conv_chain.py), and its
kernels (lower/native_dense.py, runtime/native/dense.py).

- the C sources equal their golden files (tests/golden_native_dense/, update with
  --update-golden);
- the own GEMM, split in 1, 2 and 3 parts on the C pool, equals NumPy's product for
  every operand layout a dense layer uses, in float32 and float64, on batches and
  widths that are not multiples of the kernel's tiles;
- through the seams (ops.linear's dense_then, dense_chain_gradient and dense_products),
  with relu or tanh, either GEMM chosen (NumPy's BLAS, the own one) equals float64
  PyTorch (`relu(linear(...))` and autograd) and the NumPy path, in float32 and
  float64; the chain's gradient is written over gy only where the caller owns it, and
  outside a native pass the NumPy code runs;
- with `GEMM_CHAINS` on (NETDSL_NATIVE_DENSE=1; off by default, and then not), the
  native lowering joins a relu to the dense layer before it (an MLP), not on the host;
  the joined network trains as the host's does, float32 and float64, either GEMM;
- the switches are read from the environment once, and a value other than 0 or 1 (or
  the NETDSL_DENSE_GEMM that is gone) stops the import with a message.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, assert_golden, run_netc
from netdsl.lower import conv_chain, lower
from netdsl.lower.codegen import Chain
from netdsl.lower.conv_chain import ConvChain, Epilogue
from netdsl.lower.native_dense import gemm_module, passes_module
from netdsl.ops import linear
from netdsl.ops.activation import Relu, Tanh
from netdsl.runtime.native import conv as native_conv
from netdsl.runtime.native import dense, dense_choice
from netdsl.runtime.native import toolchain

pytestmark = pytest.mark.skipif(toolchain.compiler() is None, reason="no C compiler")

GOLDEN = os.path.join(ROOT, "tests", "golden_native_dense")


@pytest.fixture(autouse=True)
def joined(monkeypatch):
    """The join on (off by default), as NETDSL_NATIVE_DENSE=1."""
    monkeypatch.setattr(conv_chain, "GEMM_CHAINS", True)


def choose_gemm(monkeypatch, name: str) -> None:
    """Every dense GEMM multiplied by `name` ("numpy" or "own"), as if timed so."""
    monkeypatch.setattr(dense_choice, "choose", lambda key, candidates: name)
    monkeypatch.setattr(dense, "_picked", {})

RELU = Epilogue(Chain((Relu(),), ((0,),), 1))
TANH = Epilogue(Chain((Tanh(),), ((0,),), 1))
CHAINS = {"relu": (RELU, torch.relu), "tanh": (TANH, torch.tanh)}

# (batch, inputs, units): batches not multiples of 8 (or 6), widths not of 32 (or 16)
CASES = [(13, 7, 33), (5, 100, 10), (1, 3, 1), (37, 65, 70), (128, 64, 256)]
GEMMS = dense_choice.CANDIDATES


def _ids(case):
    return "b{}k{}n{}".format(*case)


def _close(got, want, dtype):
    scale = float(np.abs(want).max()) + 1
    tol = 1e-12 if dtype == "float64" else 3e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _problem(case, dtype, seed=0):
    b, k, n = case
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype)
                 for shape in ((b, k), (n, k), (n,), (b, n)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sources_match_golden(dtype, update_golden):
    sources = {"passes_relu": passes_module(dtype, RELU.programs),
               "passes_tanh": passes_module(dtype, TANH.programs),
               "gemm": gemm_module(dtype)}
    for name, source in sources.items():
        assert_golden(os.path.join(GOLDEN, f"{name}_{dtype}.c"), source, update_golden)


@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_the_gemms_equal_numpys_products(case, dtype, parts):
    x, w, bias, gy = _problem(case, dtype)
    _close(dense.matmul(x, w.T, None, parts), x @ w.T, dtype)       # forward
    _close(dense.matmul(gy.T, x, None, parts), gy.T @ x, dtype)     # weight's gradient
    _close(dense.matmul(gy, w, None, parts), gy @ w, dtype)         # input's gradient


def _torch(case, torch_chain, x, w, bias, gy):
    """PyTorch's chain(linear(x)), dx, dweight and dbias in float64."""
    tx, tw, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (x, w, bias))
    y = F.linear(tx, tw, tb)
    if torch_chain is not None:
        y = torch_chain(y)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    return [t.detach().numpy() for t in (y, tx.grad, tw.grad, tb.grad)]


def _backward(y, gy, x, w, chain, owned: bool, grad_out: dict):
    g, dbias = linear.dense_chain_gradient(np, y, gy, chain, owned, grad_out.get("bias"))
    dx, dweight = linear.dense_products(np, g, x, w, True, grad_out.get("weight"))
    return dx, dweight, dbias


def _seams(x, w, bias, gy, chain, owned: bool, grad_out: dict):
    y = linear.dense_then(np, x, w, bias, chain)
    g = gy.copy()
    return (y, *_backward(y, g, x, w, chain, owned, grad_out), g)


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("chain", ["relu", "tanh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_joined_layer_equals_pytorch_and_numpy(case, dtype, chain, gemm, monkeypatch):
    epilogue, torch_chain = CHAINS[chain]
    x, w, bias, gy = _problem(case, dtype)
    want = _torch(case, torch_chain, x, w, bias, gy)
    numpy = _seams(x, w, bias, gy, epilogue, False, {})   # outside a native pass
    choose_gemm(monkeypatch, gemm)
    for threads in (1, 2, 3):
        monkeypatch.setattr(dense, "host_threads", lambda threads=threads: threads)
        with native_conv.in_use():
            got = _seams(x, w, bias, gy, epilogue, False, {})
        for g, n, t in zip(got, numpy, want):
            _close(g, t, dtype)
            _close(g, n, dtype)


@pytest.mark.parametrize("owned", [True, False])
def test_the_chain_gradient_goes_over_gy_only_where_owned(owned):
    x, w, bias, gy = _problem((9, 5, 11), "float32")
    with native_conv.in_use():
        y = linear.dense_then(np, x, w, bias, RELU)
        g = gy.copy()
        weight_out, bias_out = np.empty_like(w), np.empty_like(bias)
        dx, dweight, dbias = _backward(y, g, x, w, RELU, owned,
                                       {"weight": weight_out, "bias": bias_out})
    masked = np.where(y > 0, gy, 0)
    np.testing.assert_array_equal(g, masked if owned else gy)
    assert dweight is weight_out and dbias is bias_out
    _close(dbias, masked.sum(axis=0), "float32")
    _close(dx, masked @ w, "float32")


def test_outside_a_native_pass_the_numpy_code_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the compiled kernels ran outside a native pass")

    monkeypatch.setattr(dense, "library", refuse)
    x, w, bias, gy = _problem((4, 3, 5), "float64")
    y = linear.dense_then(np, x, w, bias, RELU)
    np.testing.assert_allclose(y, np.maximum(x @ w.T + bias, 0))


def _strided_arrays():
    a = np.arange(60, dtype=np.float32).reshape(6, 10)
    frozen = a.copy()
    frozen.flags.writeable = False
    return {"c-contiguous": a, "a transpose's view": a.T, "columns sliced": a[:, 3:],
            "their transpose": a[:, 3:].T, "rows stepped": a[::2], "read-only": frozen,
            "empty": np.zeros((0, 4), np.float32), "empty transposed": np.zeros((0, 4)).T,
            "one column sliced": np.zeros((5, 1), np.float64)[1:].T}


@pytest.mark.parametrize("name", list(_strided_arrays()))
def test_the_seam_takes_each_arrays_address_as_ctypes_does(name):
    array = _strided_arrays()[name]
    assert dense._address(array) == array.ctypes.data
    assert dense._address(None) is None


def test_the_passes_take_one_native_float_dtype_contiguous_at_most_2d():
    a = np.zeros((4, 5), np.float32)
    assert dense._covered(a, np.zeros(5, np.float32), None)
    assert dense._covered(np.zeros((4, 5)), None, np.zeros(5))
    assert not dense._covered(a, np.zeros(5))                       # two dtypes
    assert not dense._covered(a.astype(">f4"))                      # not native order
    assert not dense._covered(a.astype(np.float16))
    assert not dense._covered(a.T)                                  # not C-contiguous
    assert not dense._covered(np.zeros((2, 2, 2), np.float32))
    assert not dense._covered(a, [0.0] * 5)                         # not an array


def test_a_joined_chain_finds_its_library_by_its_identity(monkeypatch):
    lib = dense._passes("float32", RELU.programs)
    assert lib is dense.library("float32", RELU.programs)
    assert dense._passes("float64", RELU.programs) is not lib
    monkeypatch.setattr(dense, "library", lambda *args: pytest.fail("looked up again"))
    assert dense._passes("float32", RELU.programs) is lib


SPEC = """
network mlp
input  x : [7]
target y : class(3)

logits = x -> dense(33) -> relu -> dense(19) -> tanh -> dense(3)
loss cross_entropy(logits, y)
train sgd(lr=0.1), batch=13
"""


def _graph():
    from netdsl.driver import check_text
    return check_text(SPEC).graph


def _joined(lowered):
    return {s.node: s.op.nodes for s in lowered.plan.steps
            if isinstance(s.op, ConvChain) and s.op.head.chain_in == "gemm"}


def test_the_native_lowering_joins_a_chain_to_its_dense_layer(monkeypatch):
    joined = _joined(lower(_graph(), "native"))
    assert sorted(len(nodes) for nodes in joined.values()) == [2, 2]
    assert {lower(_graph(), "native").plan.step_of(n).op.name for n in joined} \
        == {"dense_relu", "dense_tanh"}
    assert not _joined(lower(_graph()))   # the host target keeps its in-place chains
    monkeypatch.setattr(conv_chain, "GEMM_CHAINS", False)
    assert not _joined(lower(_graph(), "native"))


def _train(lowered, params, batch, dtype, steps=3, lr=0.1):
    from netdsl.runtime.execute import Executor

    ex = Executor(lowered, params, dtype=dtype)
    losses = []
    for _ in range(steps):
        out = ex.forward(batch, training=True)
        losses.append(float(out[next(iter(lowered.plan.losses.values()))]))
        ex.backward()
        ex.flat_params -= lr * ex.flat_grads
    return losses, ex.flat_params.copy(), ex.flat_grads.copy()


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_joined_mlp_trains_as_the_host(dtype, gemm, monkeypatch):
    """Three SGD steps of the MLP above (and W1's spec) on the native target with the
    chains joined equal the host's, either GEMM chosen, the own one in 2 parts."""
    from netdsl.runtime.init import initial_params
    from test_train_torch import random_batch

    from netdsl.driver import check_file
    w1 = check_file(os.path.join(ROOT, "benchmarks", "specs", "w1_mlp.net")).graph
    choose_gemm(monkeypatch, gemm)
    monkeypatch.setattr(dense, "host_threads", lambda: 2)
    for graph in (_graph(), w1):
        host_lowered, native_lowered = lower(graph), lower(graph, "native")
        assert _joined(native_lowered)
        params = initial_params(host_lowered.built, "torch", seed=0)
        batch = random_batch(host_lowered.plan, 13, np.random.default_rng(0))
        want = _train(host_lowered, params, batch, dtype)
        got = _train(native_lowered, params, batch, dtype)
        tol = 1e-10 if dtype == "float64" else 2e-5
        assert got[0] == pytest.approx(want[0], rel=tol)
        for g, w in zip(got[1:], want[1:]):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * float(np.abs(w).max()))


def _switches(**variables):
    """(exit status, stdout, stderr) of a process that imports the dense layers' switches
    with `variables` set in its environment (and the others unset)."""
    import subprocess
    import sys

    code = ("from netdsl.lower import conv_chain; from netdsl.runtime.native import dense; "
            "print(conv_chain.GEMM_CHAINS, dense.PICK)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NETDSL_NATIVE_DENSE", "NETDSL_DENSE_PICK", "NETDSL_DENSE_GEMM")}
    env.update(PYTHONPATH=str(ROOT), **variables)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)
    return done.returncode, done.stdout.split(), done.stderr


def test_the_switches_read_the_environment():
    assert _switches()[:2] == (0, ["False", "True"])   # the defaults
    assert _switches(NETDSL_NATIVE_DENSE="1", NETDSL_DENSE_PICK="0")[:2] \
        == (0, ["True", "False"])


@pytest.mark.parametrize("variables, says", [
    ({"NETDSL_NATIVE_DENSE": "yes"}, "NETDSL_NATIVE_DENSE='yes': expected 1 (on) or 0"),
    ({"NETDSL_DENSE_PICK": "of"}, "NETDSL_DENSE_PICK='of': expected 1 (on) or 0"),
    ({"NETDSL_DENSE_GEMM": "own"}, "NETDSL_DENSE_GEMM is gone"),
    ({"NETDSL_DENSE_GEMM": "blas-parts"}, "NETDSL_DENSE_GEMM is gone")])
def test_an_unknown_switch_value_stops_the_import(variables, says):
    status, _, stderr = _switches(**variables)
    assert status != 0 and says in stderr


def test_netc_names_an_unknown_switch_value_in_one_line(monkeypatch):
    """A switch read as netc runs (the dense layers' on the native target): exit code 1,
    the variable and the fix, no traceback."""
    monkeypatch.setenv("NETDSL_DENSE_PICK", "yes")
    done = run_netc("run", "specs/mlp.net", "--native", "--steps", "1")
    assert done.returncode == 1
    assert "NETDSL_DENSE_PICK='yes': expected 1 (on) or 0" in done.stderr
    assert "hint: set NETDSL_DENSE_PICK to 1 or 0, or unset it" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_joined_layer_holds_no_more_than_the_layer_and_chain_apart(monkeypatch):
    """W1's training step, traced (after a first step made the kernels and the gradient
    vector): with the chains joined its peak is no higher than apart, since backward lets
    the chain's output go before dx is made. Nothing is lodged in the gradient vector on
    either side: apart, the fused relu writes where told and its output may live there."""
    import tracemalloc

    from netdsl.driver import check_file
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params
    from test_train_torch import random_batch

    graph = check_file(os.path.join(ROOT, "benchmarks", "specs", "w1_mlp.net")).graph
    peaks = {}
    for joined in (True, False):
        monkeypatch.setattr(conv_chain, "GEMM_CHAINS", joined)
        lowered = lower(graph, "native")
        params = initial_params(lowered.built, "he", seed=0)
        batch = random_batch(lowered.plan, 128, np.random.default_rng(0))
        ex = Executor(lowered, params)
        ex.forward(batch, training=True)
        ex.backward()
        tracemalloc.start()
        try:
            ex.forward(batch, training=True)
            ex.backward()
            peaks[joined] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[True] <= peaks[False] + 4096
