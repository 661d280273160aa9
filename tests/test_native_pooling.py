"""Max pooling as generated C on the native target (runtime/native/pooling.py).

- the C source equals its golden file per dtype (tests/golden_native_pooling/, update
  with --update-golden);
- the forward kernels a row's windows fill are timed on a shape's first call and the
  fastest kept (`TIMED`), or the widest runs (NETDSL_POOLING_TIMED=0);
- every forward kernel (64-, 32- and 16-byte vectors) gives the NumPy path's maxima and
  indices exactly, ties included (the first maximum in row-major order), and float64
  PyTorch's (`max_pool2d`/`max_pool1d` with return_indices); backward equals both, on
  W2's 2x2 stride 2 and W6's 3x3 stride 1 pad 1, stride 2 with pad and ceil mode, odd
  sizes, rank 1, batch 1 and 3, float32 and float64, on one slab and on two threads;
- split over 1, 2 and 3 threads (18, 12 and 5 planes: unequal slabs), the slabs handed
  to the C pool give the bits the Python threads give (NETDSL_C_SLABS=0), and PyTorch's;
- a NaN is the maximum and its index, as in PyTorch; a window of -inf keeps an index
  inside its plane;
- outside a native pass, with `COMPILED` off, and for rank 3 the NumPy code runs; a
  maxunpool reads the compiled kernel's indices; LeNet-5's native training step pools
  through the kernels with the host's losses and gradients.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, assert_golden
from netdsl.lower.native_window import fitting_kernels, forward_kernel, forward_kernels, \
    pool_sizes, pooling_module
from netdsl.ops import pool
from netdsl.ops.pool import MaxPool
from netdsl.runtime import host
from netdsl.runtime.native import conv as native_conv
from netdsl.runtime.native import pooling, toolchain
from netdsl.types import TensorType

pytestmark = pytest.mark.skipif(toolchain.compiler() is None, reason="no C compiler")

GOLDEN = os.path.join(ROOT, "tests", "golden_native_pooling")

# (shape, kernel, stride, pad, ceil)
CASES = [
    ((3, 6, 28, 28), 2, 2, 0, False),     # W2's first pooling
    ((3, 4, 10, 10), 2, 2, 0, False),     # W2's second: rows of 5
    ((1, 5, 28, 28), 3, 1, 1, False),     # W6's 3x3 stride 1 pad 1, batch 1
    ((3, 4, 13, 11), 3, 1, 1, False),     # odd sizes
    ((2, 3, 9, 12), 3, 2, 1, True),       # stride 2, pad, ceil mode
    ((2, 3, 17, 40), (2, 3), (1, 2), (1, 1), False),   # uneven kernel and stride
    ((3, 4, 21), 3, 2, 1, False),         # rank 1
]


def _ids(case):
    shape, k, s, p, ceil = case
    return f"{'x'.join(map(str, shape))}-k{k}s{s}p{p}{'c' if ceil else ''}"


def _geometry(case):
    shape, k, s, p, ceil = case
    return MaxPool(kernel=k, stride=s, pad=p, ceil=ceil).geometry(TensorType(shape[1:]))


def _problem(case, dtype, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case[0])
    if ties:   # few distinct values: windows with several maxima
        x = np.round(x * 2) / 2
    g = _geometry(case)
    gy = rng.standard_normal(case[0][:2] + tuple(g.out))
    return g, x.astype(dtype), gy.astype(dtype)


def _torch(case, x, gy):
    """PyTorch's y, indices and dx in float64."""
    shape, k, s, p, ceil = case
    function = F.max_pool2d if len(shape) == 4 else F.max_pool1d
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, indices = function(tx, k, s, p, ceil_mode=ceil, return_indices=True)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    return y.detach().numpy(), indices.numpy(), tx.grad.numpy()


def _all_kernels(dtype, sizes):
    """The kernel chosen and every narrower one (each runs any geometry correctly)."""
    names = list(forward_kernels(dtype))
    return names[names.index(forward_kernel(dtype, sizes)):]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_source_matches_golden(dtype, update_golden):
    assert_golden(os.path.join(GOLDEN, f"pooling_{dtype}.c"), pooling_module(dtype),
                  update_golden)


def test_the_widest_kernel_a_row_fills_runs():
    def kernel(case, dtype="float32"):
        return forward_kernel(dtype, pool_sizes(case[0][2:], _geometry(case)))

    assert kernel(CASES[2]) == "maxpool_forward"          # 26 inner windows of 28
    assert kernel(CASES[0]) == "maxpool_forward_narrow"   # 14
    assert kernel(CASES[1]) == "maxpool_forward_short"    # 5
    assert kernel(CASES[0], "float64") == "maxpool_forward"   # 8 doubles a vector


def test_the_kernels_a_row_fills_are_the_candidates():
    def fitting(case, dtype="float32"):
        return fitting_kernels(dtype, pool_sizes(case[0][2:], _geometry(case)))

    assert fitting(CASES[2]) == ["maxpool_forward", "maxpool_forward_narrow",
                                 "maxpool_forward_short"]
    assert fitting(CASES[0]) == ["maxpool_forward_narrow", "maxpool_forward_short"]
    assert fitting(CASES[1]) == ["maxpool_forward_short"]   # 5 windows: 4 a vector
    assert fitting(((1, 1, 3, 3), 3, 1, 0, False)) == ["maxpool_forward_short"]   # one


@pytest.mark.parametrize("timed", [True, False])
def test_a_shape_times_its_candidates_once_and_keeps_the_fastest(timed, monkeypatch):
    """With TIMED, a shape's first call times the kernels that fit (through
    choice_file.fastest), later calls run the kept one; without, the widest that fits
    runs. Either way the NumPy path's maxima and indices."""
    monkeypatch.setattr(pooling, "TIMED", timed)
    monkeypatch.setattr(pooling, "_chosen", {})
    timings, ran = [], []
    real_fastest, real_forward = pooling.fastest, pooling._forward
    monkeypatch.setattr(pooling, "fastest",
                        lambda candidates, *how: timings.append(sorted(candidates))
                        or real_fastest(candidates, *how))
    monkeypatch.setattr(pooling, "_forward",
                        lambda x, g, sizes, kernel: ran.append(kernel)
                        or real_forward(x, g, sizes, kernel))
    g, x, _ = _problem(CASES[2], "float32")
    sizes = pool_sizes(x.shape[2:], g)
    want = pool.max_pool.generic(np, x, g)
    for _ in range(2):
        for got, expected in zip(pooling.forward(x, g), want, strict=True):
            np.testing.assert_array_equal(got, expected)
    if timed:
        assert timings == [sorted(pooling.timed_kernels("float32", sizes))]
        kept = pooling._chosen[("float32", sizes)]
        assert kept in pooling.timed_kernels("float32", sizes) and ran[-1] == kept
        assert len(ran) == pooling.TIMED_RUNS * len(timings[0]) + 1   # rounds, then once
    else:
        assert timings == [] and pooling._chosen == {}
        assert ran == [forward_kernel("float32", sizes)] * 2


@pytest.mark.parametrize("vector, anywhere, timed", [
    (64, False, ["maxpool_forward", "maxpool_forward_narrow", "maxpool_forward_short"]),
    (32, False, ["maxpool_forward_narrow", "maxpool_forward_short"]),
    (16, False, ["maxpool_forward_short"]),
    (16, True, ["maxpool_forward", "maxpool_forward_narrow", "maxpool_forward_short"])])
def test_the_kernels_wider_than_the_cpus_vectors_are_not_timed(vector, anywhere, timed,
                                                               monkeypatch):
    """Of the kernels W6's 28-wide rows fill, those whose vectors the compiler has
    (AVX-512: 64 bytes, AVX2: 32, else 16) are timed, or all of them with
    NETDSL_POOLING_WIDE_TIMED=1; a shape's first call runs those alone, and gives the
    NumPy path's bits."""
    monkeypatch.setattr(pooling, "vector_bytes", lambda: vector)
    monkeypatch.setattr(pooling, "WIDE_TIMED_ANYWHERE", anywhere)
    monkeypatch.setattr(pooling, "TIMED", True)
    monkeypatch.setattr(pooling, "_chosen", {})
    g, x, _ = _problem(CASES[2], "float32")
    sizes = pool_sizes(x.shape[2:], g)
    assert pooling.timed_kernels("float32", sizes) == timed
    assert pooling.timed_kernels("float64", sizes) == (   # 8 doubles fill 64 bytes
        timed if anywhere or vector == 64 else timed[-2 if vector == 32 else -1:])
    ran = []
    real_forward = pooling._forward
    monkeypatch.setattr(pooling, "_forward", lambda x, g, sizes, kernel: ran.append(kernel)
                        or real_forward(x, g, sizes, kernel))
    for got, expected in zip(pooling.forward(x, g), pool.max_pool.generic(np, x, g),
                             strict=True):
        np.testing.assert_array_equal(got, expected)
    assert set(ran) == set(timed)
    # a row that fills the 16-byte kernel alone times it alone, whatever the vectors
    g, x, _ = _problem(CASES[1], "float32")
    assert pooling.timed_kernels("float32", pool_sizes(x.shape[2:], g)) == \
        ["maxpool_forward_short"]


def test_the_timing_switch_reads_the_environment():
    import subprocess
    import sys

    code = "from netdsl.runtime.native import pooling; print(pooling.TIMED)"
    assert pooling.TIMED   # on by default, in this process
    env = dict(os.environ, NETDSL_POOLING_TIMED="0", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["False"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_kernels_equal_numpy_and_pytorch(case, dtype):
    g, x, gy = _problem(case, dtype)
    y, indices, dx = _torch(case, x, gy)
    numpy_y, numpy_indices = pool.max_pool.generic(np, x, g)
    numpy_dx = pool.max_pool_backward.generic(np, gy, numpy_indices, x.shape, g)
    np.testing.assert_array_equal(numpy_indices, indices)   # the paths agree on ties
    for kernel in _all_kernels(dtype, pool_sizes(x.shape[2:], g)):
        ours_y, ours_indices = pooling.forward(x, g, kernel)
        assert ours_indices.dtype == np.int32
        np.testing.assert_array_equal(ours_y, numpy_y)
        np.testing.assert_array_equal(ours_indices, numpy_indices)
        np.testing.assert_array_equal(ours_y, y.astype(dtype))
    ours_dx = pooling.backward(gy, numpy_indices, x.shape, g)
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(ours_dx, numpy_dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(ours_dx, dx, rtol=tol, atol=tol)


def test_slabs_on_two_threads_equal_one(monkeypatch):
    monkeypatch.setattr(host, "host_threads", lambda: 2)
    monkeypatch.setattr(host, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(pooling, "SPLIT_BYTES", 0)   # these small arrays split too
    seen = []
    real = host._slabs
    monkeypatch.setattr(host, "_slabs", lambda *a: seen.append(r := real(*a)) or r)
    for case in CASES[:3]:
        g, x, gy = _problem(case, "float64", seed=2)
        y, indices, dx = _torch(case, x, gy)
        ours_y, ours_indices = pooling.forward(x, g)
        np.testing.assert_array_equal(ours_y, y)
        np.testing.assert_array_equal(ours_indices, indices)
        np.testing.assert_allclose(pooling.backward(gy, ours_indices, x.shape, g), dx,
                                   rtol=1e-12, atol=1e-12)
    assert seen and all(len(slabs) == 4 for slabs in seen)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_pool_splits_into_the_bits_the_python_threads_do(threads, dtype, monkeypatch):
    from netdsl.runtime.native import slabs
    pooled = []
    real_pool = slabs._on_pool
    monkeypatch.setattr(slabs, "_on_pool",
                        lambda plan, parts: pooled.append(len(parts)) or real_pool(plan, parts))
    monkeypatch.setattr(host, "host_threads", lambda: threads)
    monkeypatch.setattr(host, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(pooling, "SPLIT_BYTES", 0)   # these small arrays split too
    for case in CASES[:3]:
        g, x, gy = _problem(case, dtype, seed=5)
        runs = []
        for c_slabs in (True, False):
            monkeypatch.setattr(slabs, "C_SLABS", c_slabs)
            count = len(pooled)
            y, indices = pooling.forward(x, g)
            runs.append((y, indices, pooling.backward(gy, indices, x.shape, g)))
            assert len(pooled) - count == (2 if c_slabs and threads > 1 else 0)
        for got, want in zip(*runs, strict=True):
            np.testing.assert_array_equal(got, want)
        y, indices, dx = _torch(case, x, gy)
        np.testing.assert_array_equal(runs[0][0], y.astype(dtype))
        np.testing.assert_array_equal(runs[0][1], indices)
        tol = 1e-12 if dtype == "float64" else 1e-6
        np.testing.assert_allclose(runs[0][2], dx, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=_ids)
def test_a_nan_is_the_maximum_as_in_pytorch(case):
    g, x, gy = _problem(case, "float32", ties=False)
    x[0, 0, 2, 2] = x[0, 1, 0, 0] = np.nan
    y, indices, _ = _torch(case, x, gy)
    for kernel in _all_kernels("float32", pool_sizes(x.shape[2:], g)):
        ours_y, ours_indices = pooling.forward(x, g, kernel)
        np.testing.assert_array_equal(ours_y, y.astype("float32"))   # NaN where NaN
        np.testing.assert_array_equal(ours_indices, indices)
    assert np.isnan(pool.max_pool.generic(np, x, g)[0][0, 0]).any()


def test_a_window_of_minus_infinity_keeps_an_index_in_its_plane():
    case = CASES[2]
    g, x, _ = _problem(case, "float32")
    x[...] = -np.inf
    for kernel in forward_kernels("float32"):
        y, indices = pooling.forward(x, g, kernel)
        assert (y == -np.inf).all()
        assert indices.min() >= 0 and indices.max() < 28 * 28
    dx = pooling.backward(np.ones(y.shape, "float32"), indices, x.shape, g)
    assert dx.sum() == y.size


def test_the_seam_runs_the_kernels_only_in_a_native_pass(monkeypatch):
    g, x, gy = _problem(CASES[0], "float32")
    calls = []
    real_forward, real_backward = pooling.forward, pooling.backward
    monkeypatch.setattr(pooling, "forward", lambda *a: calls.append("f") or real_forward(*a))
    monkeypatch.setattr(pooling, "backward",
                        lambda *a: calls.append("b") or real_backward(*a))
    y, indices = pool.max_pool(np, x, g)
    pool.max_pool_backward(np, gy, indices, x.shape, g)
    assert calls == []
    with native_conv.in_use():
        y2, indices2 = pool.max_pool(np, x, g)
        pool.max_pool_backward(np, gy, indices2, x.shape, g)
        assert calls == ["f", "b"]
        monkeypatch.setattr(pooling, "COMPILED", False)
        pool.max_pool(np, x, g)
        assert calls == ["f", "b"]
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(indices, indices2)


def test_rank_3_falls_back():
    case = ((1, 2, 5, 5, 5), 2, 2, 0, False)
    g = _geometry(case)
    x = np.random.default_rng(0).standard_normal(case[0]).astype("float32")
    assert not pooling.covered(x, g)
    with native_conv.in_use():
        y, _ = pool.max_pool(np, x, g)
    np.testing.assert_array_equal(y, pool.max_pool.generic(np, x, g)[0])


def _train(spec_text, monkeypatch, compiled):
    from netdsl.driver import check_text
    from netdsl.lower import lower
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params
    from test_train_torch import random_batch

    monkeypatch.setattr(pooling, "COMPILED", compiled)
    graph = check_text(spec_text).graph
    host_lowered, native_lowered = lower(graph), lower(graph, "native")
    params = initial_params(host_lowered.built, "torch", seed=0)
    batch = random_batch(host_lowered.plan, 3, np.random.default_rng(0))
    results = []
    for lowered in (host_lowered, native_lowered):
        ex = Executor(lowered, params, dtype="float64")
        losses = {k: float(v) for k, v in ex.forward(batch, training=True).items()}
        ex.backward()
        results.append((losses, ex.flat_grads.copy()))
    return results


UNPOOL = """
network unpool
input  x : [2, 8, 8]
target y : [2, 8, 8]
p = x -> conv(2, 3, pad=1) -> maxpool(2)
r = maxunpool(p -> tanh, p, 2)
loss mse(r, y)
"""


@pytest.mark.parametrize("compiled", [True, False])
def test_native_steps_pool_through_the_kernels_as_the_host(compiled, monkeypatch):
    """LeNet-5, and a maxunpool that borrows the indices, train on the native target
    with the host's losses and gradients, pooling compiled or not."""
    from test_train_torch import SPECS

    calls = []
    real = pooling.forward
    monkeypatch.setattr(pooling, "forward", lambda *a: calls.append(1) or real(*a))
    for text in ((SPECS / "lenet5.net").read_text(), UNPOOL):
        (want, want_grads), (got, got_grads) = _train(text, monkeypatch, compiled)
        assert got == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(got_grads, want_grads, rtol=1e-10,
                                   atol=1e-12 * float(np.abs(want_grads).max()))
    assert bool(calls) == compiled
