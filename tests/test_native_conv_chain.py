"""A convolution that takes the elementwise chain after it (lower/conv_chain.py).

- the chained C sources equal their golden files (tests/golden_native_conv/, update
  with --update-golden);
- every compiled kernel (gemm, both direct kernels, Winograd) with relu (and tanh: any
  one-input chain whose gradient follows from its output) applied as it writes y, and
  the gradient pass that masks gy and sums the bias's gradient (whole, or each slab's
  images before its kernels read them), equal float64 PyTorch
  (`relu(conv2d(...))` and autograd) and the NumPy path, in float32 and float64, on
  odd sizes, padding, strides, batch 1 and 3, on one slab and on two threads' slabs;
- through the seam, the chain's gradient is written over gy only where the caller
  owns it, NumPy's choice gets the chain after it, and outside a native pass the NumPy
  code runs;
- the native lowering joins a relu to the convolution before it (LeNet-5, Inception),
  not where the convolution's output is read twice, nor with `ABSORB` off (or
  NETDSL_CONV_CHAINS=0, and pooling's NETDSL_NATIVE_POOLING=0); the joined step trains
  as the steps apart do, and the memory plan counts the chain's gradient where gy is
  not the pass's own.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, assert_golden
from netdsl.lower import conv_chain, lower
from netdsl.lower.codegen import Chain
from netdsl.lower.conv_chain import ConvChain, Epilogue
from netdsl.lower.native_conv import conv_module, direct_blocks, winograd_module
from netdsl.ops import convolve
from netdsl.ops.activation import Relu, Tanh
from netdsl.ops.windows import Geometry
from netdsl.runtime import host
from netdsl.runtime.native import conv as native_conv
from netdsl.runtime.native import toolchain

pytestmark = pytest.mark.skipif(toolchain.compiler() is None, reason="no C compiler")

GOLDEN = os.path.join(ROOT, "tests", "golden_native_conv")

RELU = Epilogue(Chain((Relu(),), ((0,),), 1))
TANH = Epilogue(Chain((Tanh(),), ((0,),), 1))
TORCH = {id(RELU): torch.relu, id(TANH): torch.tanh}

# (batch, channels in, out, spatial, kernel, stride, pad)
CASES = [
    (3, 1, 6, (11, 9), (5, 5), (1, 1), (2, 2)),     # LeNet's first layer, odd sizes
    (1, 5, 7, (9, 10), (3, 3), (1, 1), (1, 1)),     # batch 1, 3x3 (Winograd fits)
    (3, 4, 6, (9, 9), (3, 3), (2, 2), (1, 1)),      # stride 2
    (3, 6, 5, (7, 8), (1, 1), (1, 1), (0, 0)),      # 1x1
]


def _ids(case):
    b, c, o, spatial, k, s, p = case
    return f"b{b}c{c}o{o}-{'x'.join(map(str, spatial))}-k{k[0]}s{s[0]}p{p[0]}"


@pytest.fixture(scope="module", autouse=True)
def choices_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conv_chain_cache")
    old = os.environ.get("NETDSL_CACHE")
    os.environ["NETDSL_CACHE"] = str(folder)
    yield
    if old is None:
        del os.environ["NETDSL_CACHE"]
    else:
        os.environ["NETDSL_CACHE"] = old


def _problem(case, dtype, seed=0):
    b, c, o, spatial, k, s, p = case
    g = Geometry.of(spatial, k, s, (1, 1), [(pi, pi) for pi in p])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, c, *spatial)).astype(dtype)
    w = rng.standard_normal((o, c, *k)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    gy = rng.standard_normal((b, o, *g.out)).astype(dtype)
    return g, x, w, bias, gy


def _torch(case, chain, x, w, bias, gy):
    """PyTorch's chain(conv2d(x)), dx, dweight and dbias in float64."""
    _, _, _, _, _, s, p = case
    tx, tw, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (x, w, bias))
    y = TORCH[id(chain)](F.conv2d(tx, tw, tb, stride=s, padding=p))
    y.backward(torch.tensor(gy, dtype=torch.float64))
    return [t.detach().numpy() for t in (y, tx.grad, tw.grad, tb.grad)]


def _close(got, want, dtype):
    scale = float(np.abs(want).max()) + 1
    tol = 1e-12 if dtype == "float64" else 3e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _kinds(g, dtype):
    kinds = [("gemm", None)] + [("direct", k) for k in direct_blocks(dtype)]
    if native_conv._winograd_fits(g):
        kinds.append(("winograd", None))
    return kinds


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_chained_sources_match_golden(dtype, update_golden):
    assert_golden(os.path.join(GOLDEN, f"conv_relu_{dtype}.c"),
                  conv_module(dtype, "long long", "scipy_cblas_?gemm64_", RELU.programs),
                  update_golden)
    assert_golden(os.path.join(GOLDEN, f"winograd_relu_{dtype}.c"),
                  winograd_module(dtype, "long long", "scipy_cblas_?gemm64_", RELU.programs),
                  update_golden)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("chain", [RELU, TANH], ids=["relu", "tanh"])
def test_kernels_with_the_chain_equal_pytorch_and_numpy(case, dtype, chain):
    g, x, w, bias, gy = _problem(case, dtype)
    y, dx, dw, db = _torch(case, chain, x, w, bias, gy)
    numpy_y = chain.apply(np, convolve.conv_nd.generic(np, x, w, bias, g, 1))
    numpy_grads = convolve.conv_nd_backward.generic(np, chain.gradient(np, numpy_y, gy), x,
                                                    w, g, 1)
    for want in (y, numpy_y):
        for kind, kernel in _kinds(g, dtype):
            _close(native_conv.forward(kind, x, w, bias, g, kernel, chain=chain.programs),
                   want, dtype)
    for wants in ((dx, dw, db), numpy_grads):
        for kind, _ in _kinds(g, dtype):
            # the whole pass first, and each slab's images just before its kernels
            masked, dbias = native_conv.chain_gradient(y.astype(dtype), gy, chain.programs)
            grads = native_conv.backward(masked, x, w, g, True, kind, dbias)
            for got, want in zip(grads, wants):
                _close(got, want, dtype)
            masked, masking = native_conv.chain_masking(y.astype(dtype), gy, chain.programs)
            grads = native_conv.backward(masked, x, w, g, True, kind, masking=masking)
            for got, want in zip(grads, wants):
                _close(got, want, dtype)


def test_relu_at_zero_and_below_passes_no_gradient():
    """y exactly 0 (a bias cancelling the sum) gets no gradient, as PyTorch's relu."""
    g = Geometry.of((4, 4), (1, 1), (1, 1), (1, 1), [(0, 0), (0, 0)])
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 0] = -1.0
    w, bias = np.ones((1, 1, 1, 1)), np.array([-1.0])
    y = native_conv.forward("gemm", x, w, bias, g, chain=RELU.programs)
    assert (y == 0).all()
    gy = np.full_like(y, 2.0)
    masked, dbias = native_conv.chain_gradient(y, gy, RELU.programs)
    assert not masked.any() and dbias[0] == 0.0


def test_a_slice_of_a_concatenations_gradient_is_read_in_place(monkeypatch):
    """gy a channel slice of a larger array (what concat's backward hands a branch):
    the gradient pass reads it where it lies, with the contiguous copy's results."""
    g, x, w, bias, _ = _problem(CASES[2], "float64")   # batch 3
    y = native_conv.forward("gemm", x, w, bias, g, chain=RELU.programs)
    whole = np.random.default_rng(5).standard_normal((y.shape[0], 11, *y.shape[2:]))
    gy = whole[:, 2:2 + y.shape[1]]
    assert not gy.flags.c_contiguous and native_conv._images_apart(gy, y)
    monkeypatch.setattr(native_conv.np, "ascontiguousarray", pytest.fail)
    masked, dbias = native_conv.chain_gradient(y, gy, RELU.programs)
    monkeypatch.undo()
    want, want_dbias = native_conv.chain_gradient(y, np.ascontiguousarray(gy), RELU.programs)
    np.testing.assert_array_equal(masked, want)
    np.testing.assert_allclose(dbias, want_dbias, rtol=1e-12)
    np.testing.assert_array_equal(masked, np.where(y > 0, gy, 0))


@pytest.mark.parametrize("one_a_thread", [True, False], ids=["winograd-slab-a-thread", "host"])
def test_slabs_on_two_threads_equal_pytorch(one_a_thread, monkeypatch):
    monkeypatch.setattr(native_conv.native_conv_lowering, "WINOGRAD_SLAB_A_THREAD",
                        one_a_thread)
    monkeypatch.setattr(host, "host_threads", lambda: 2)
    monkeypatch.setattr(host, "MIN_SPLIT_BYTES", 0)   # these small arrays split too
    seen = []
    real = host._slabs
    monkeypatch.setattr(host, "_slabs", lambda *a: seen.append(r := real(*a)) or r)
    case = (6, 4, 5, (10, 10), (3, 3), (1, 1), (1, 1))
    g, x, w, bias, gy = _problem(case, "float64", seed=3)
    y, dx, dw, db = _torch(case, RELU, x, w, bias, gy)
    for kind, kernel in _kinds(g, "float64"):
        _close(native_conv.forward(kind, x, w, bias, g, kernel, chain=RELU.programs), y,
               "float64")
        masked, dbias = native_conv.chain_gradient(y, gy, RELU.programs)
        for got, want in zip(native_conv.backward(masked, x, w, g, True, kind, dbias),
                             (dx, dw, db)):
            _close(got, want, "float64")
        masked, masking = native_conv.chain_masking(y, gy, RELU.programs)
        for got, want in zip(native_conv.backward(masked, x, w, g, True, kind,
                                                  masking=masking), (dx, dw, db)):
            _close(got, want, "float64")
    # two slabs a thread; a Winograd call one (WINOGRAD_SLAB_A_THREAD)
    winograd = one_a_thread and any(kind == "winograd" for kind, _ in _kinds(g, "float64"))
    assert {len(slabs) for slabs in seen} == ({2, 4} if winograd else {4})


@pytest.mark.parametrize("owned", [True, False])
@pytest.mark.parametrize("kind", ["numpy", "gemm", "direct", "winograd"])
def test_the_seam_masks_gy_in_place_only_where_owned(kind, owned, monkeypatch):
    case = CASES[1]
    g, x, w, bias, gy = _problem(case, "float32", seed=4)
    y, dx, dw, db = _torch(case, RELU, x, w, bias, gy)
    monkeypatch.setattr(native_conv, "choose",
                        lambda *a, **k: ({"forward": kind, "backward": kind}, None))
    given = gy.copy()
    with native_conv.in_use():
        ours_y = convolve.conv_nd_then(np, x, w, bias, g, 1, RELU)
        grads = convolve.conv_nd_then_backward(np, given, ours_y, x, w, g, 1, True, RELU,
                                               owned)
    _close(ours_y, y, "float32")
    for got, want in zip(grads, (dx, dw, db)):
        _close(got, want, "float32")
    if owned:
        np.testing.assert_array_equal(given, np.where(ours_y > 0, gy, 0))
    else:
        np.testing.assert_array_equal(given, gy)


def test_outside_a_native_pass_the_numpy_code_runs(monkeypatch):
    g, x, w, bias, gy = _problem(CASES[1], "float32")
    monkeypatch.setattr(native_conv, "forward", pytest.fail)
    monkeypatch.setattr(native_conv, "chain_gradient", pytest.fail)
    y = convolve.conv_nd_then(np, x, w, bias, g, 1, RELU)
    np.testing.assert_array_equal(
        y, np.maximum(convolve.conv_nd.generic(np, x, w, bias, g, 1), 0))
    convolve.conv_nd_then_backward(np, gy, y, x, w, g, 1, True, RELU, True)


# ---- the lowering

SPEC = """
network chained
input  x : [2, 9, 9]
target y : class(3)

a = x -> conv(4, 3, pad=1)
b = a -> relu
c = b -> conv(3, 3)
twice = relu(c) + c                      # c read twice: its relu stays apart
skipped = relu(c + c)                    # a chain of one input, c's second reader
shortcut = b -> conv(4, 1) -> tanh       # tanh: its gradient follows from its output too
logits = (twice + skipped) -> flatten -> dense(3)
other = shortcut -> global_avgpool -> dense(3)
loss cross_entropy(logits + other, y)
"""


def _graph():
    from netdsl.driver import check_text
    return check_text(SPEC).graph


def _joined(lowered):
    """The steps a convolution's chain joined (a dense layer's: tests/test_native_dense)."""
    return {s.node: s.op.nodes for s in lowered.plan.steps
            if isinstance(s.op, ConvChain) and s.op.head.chain_in == "convolution"}


def test_the_native_lowering_joins_a_chain_to_its_convolution():
    from test_train_torch import spec_lowered

    graph = spec_lowered("lenet5").graph
    joined = _joined(lower(graph, "native"))
    assert len(joined) == 2 and all(nodes[0].startswith("conv") for nodes in joined.values())
    assert not _joined(lower(graph))   # the host target keeps its in-place relus
    joined = _joined(lower(_graph(), "native"))
    # b after a (a read once), the 1x1's tanh; not c, which three values read
    assert sorted(len(nodes) for nodes in joined.values()) == [2, 2]
    assert not any(nodes[0] == "c" for nodes in joined.values())


def test_absorb_off_keeps_the_chains_apart(monkeypatch):
    monkeypatch.setattr(conv_chain, "ABSORB", False)
    assert not _joined(lower(_graph(), "native"))


@pytest.mark.parametrize("absorb", [True, False])
def test_a_joined_step_trains_as_the_steps_apart(absorb, monkeypatch):
    """A training step of the spec above and LeNet-5 on the native target, the chains
    joined or not, equals the host's in float64, with the kernels forced to each kind."""
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params
    from test_train_torch import random_batch, spec_lowered

    monkeypatch.setattr(conv_chain, "ABSORB", absorb)
    for graph in (_graph(), spec_lowered("lenet5").graph):
        host_lowered, native_lowered = lower(graph), lower(graph, "native")
        assert bool(_joined(native_lowered)) == absorb
        params = initial_params(host_lowered.built, "torch", seed=0)
        batch = random_batch(host_lowered.plan, 3, np.random.default_rng(0))
        plain = Executor(host_lowered, params, dtype="float64")
        want = {k: float(v) for k, v in plain.forward(batch, training=True).items()}
        plain.backward()
        for kind in ("numpy", "gemm", "direct"):
            monkeypatch.setattr(native_conv, "choose", lambda *a, kind=kind, **k: (
                {"forward": kind, "backward": kind}, None))
            native = Executor(native_lowered, params, dtype="float64")
            got = {k: float(v) for k, v in native.forward(batch, training=True).items()}
            native.backward()
            assert got == pytest.approx(want, rel=1e-12)
            np.testing.assert_allclose(native.flat_grads, plain.flat_grads, rtol=1e-10,
                                       atol=1e-12 * float(np.abs(plain.flat_grads).max()))


def test_the_memory_plan_counts_the_chain_gradient_where_gy_is_not_owned():
    """LeNet's relus feed max pooling, whose gradient is the pass's own: masked in place,
    no buffer; the spec above's 1x1 tanh feeds a global pooling (fresh_grads unset):
    one buffer of its output's size, during its backward step."""
    from test_train_torch import spec_lowered

    lenet = lower(spec_lowered("lenet5").graph, "native")
    assert not [b for b in lenet.memory.buffers if b.name.endswith(":chain")]
    lowered = lower(_graph(), "native")
    [chained] = [b for b in lowered.memory.buffers if b.name.endswith(":chain")]
    node = chained.name[1:-len(":chain")]
    assert isinstance(lowered.plan.step_of(node).op, ConvChain)
    assert chained.start == chained.end and chained.bytes == 4 * 4 * 9 * 9


def test_the_switches_read_the_environment():
    import subprocess
    import sys

    code = ("from netdsl.lower import conv_chain; from netdsl.runtime.native import pooling; "
            "print(conv_chain.ABSORB, pooling.COMPILED)")
    assert conv_chain.ABSORB   # on by default, in this process
    env = dict(os.environ, NETDSL_CONV_CHAINS="0", NETDSL_NATIVE_POOLING="0",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_scratch_bound_covers_the_masking_backward(threads, monkeypatch):
    """Backward with each slab masking its images first (dx's forward after the slabs,
    beside the summed weight gradient) allocates no more than kernel_scratch's bound
    beyond dx, as tracemalloc measures it (the masked gy is the plan's: over gy, or
    `masks_gy`'s buffer, made before the call here)."""
    from netdsl.lower.native_conv import geometry_sizes, kernel_scratch
    from test_native_conv import SCRATCH_CASES, _allocated
    from test_native_conv import _problem as conv_problem

    monkeypatch.setattr(host, "host_threads", lambda: threads)
    for case in SCRATCH_CASES[:2] + SCRATCH_CASES[4:7]:
        g, x, w, _, gy = conv_problem(case, "float32")
        y = np.abs(gy)   # the chain's output: any array of its shape and dtype
        bounds = kernel_scratch("float32", geometry_sizes(x.shape[1], w.shape[0], g),
                                len(x), threads)
        for kind, (_, bound) in bounds.items():
            masked, masking = native_conv.chain_masking(y, gy, RELU.programs)
            native_conv.backward(masked, x, w, g, True, kind, masking=masking)   # warm
            measured = _allocated(
                lambda: native_conv.backward(masked, x, w, g, True, kind, masking=masking),
                lambda grads: grads[0].nbytes)
            assert 0 < measured <= bound, (case, kind, measured, bound)
