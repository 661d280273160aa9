"""Each of a dense layer's GEMMs chosen per shape by a timing at first use, on the native
target (runtime/native/dense.py, runtime/native/dense_choice.py).

- through ops.linear's dense_gemm (x W^T, gy^T x, gy W, into an `out` or not), either
  choice (NumPy's BLAS, the own GEMM on 1, 2 and 3 threads' parts) equals float64
  PyTorch's `linear` and its gradients and the NumPy path, float32 and float64, on odd
  sizes;
- a key is timed once: the fastest candidate is kept, in memory and on disk, read back
  by a later process and timed again where the file is damaged;
- with NETDSL_DENSE_PICK off, outside a native pass, inside a pass whose GEMMs split
  over the pool, and for operands the own GEMM does not take, NumPy multiplies;
- an MLP (and W1) with its layers apart trains on the native target as on the host,
  either choice, one and two threads, float32 and float64;
- with NETDSL_BLAS_WAKE=1 (off by default), OpenBLAS on one thread is woken once (one
  SGEMM on two threads) before a choice is timed, its thread count left as it was; not
  on two threads.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from netdsl.lower import conv_chain, lower
from netdsl.ops import linear
from netdsl.runtime.native import conv as native_conv
from netdsl.runtime.native import dense, dense_choice, split_gemm, toolchain
from netdsl.runtime.native.choice_file import ChoiceFile

pytestmark = pytest.mark.skipif(toolchain.compiler() is None, reason="no C compiler")

# (batch, inputs, units): not multiples of the kernel's tiles; W1's 256x256 layer
CASES = [(13, 7, 33), (5, 100, 10), (1, 3, 1), (37, 65, 70), (128, 256, 256)]


def _ids(case):
    return "b{}k{}n{}".format(*case)


def choose_gemm(monkeypatch, name: str) -> None:
    """Every dense GEMM multiplied by `name`, as if timed so."""
    monkeypatch.setattr(dense_choice, "choose", lambda key, candidates: name)
    monkeypatch.setattr(dense, "_picked", {})


def _close(got, want, dtype):
    scale = float(np.abs(want).max()) + 1
    tol = 1e-12 if dtype == "float64" else 3e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _problem(case, dtype, seed=0):
    b, k, n = case
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype)
                 for shape in ((b, k), (n, k), (n,), (b, n)))


def _layer(x, w, bias, gy, into: bool):
    """y, dx, dweight of a dense layer through dense_gemm (into preallocated arrays where
    `into`, as the executor's lodged values and gradient vector are)."""
    y_out = np.empty((x.shape[0], w.shape[0]), x.dtype) if into else None
    dw_out = np.empty_like(w) if into else None
    y = linear.dense_gemm(np, x, w.T, out=y_out) + bias
    dweight = linear.dense_gemm(np, gy.T, x, out=dw_out)
    dx = linear.dense_gemm(np, gy, w)
    if into:
        assert dweight is dw_out
    return y, dx, dweight


def _torch(x, w, bias, gy):
    tx, tw, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (x, w, bias))
    y = F.linear(tx, tw, tb)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    return [t.detach().numpy() for t in (y, tx.grad, tw.grad)]


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("gemm", dense_choice.CANDIDATES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_either_choice_equals_pytorch_and_numpy(case, dtype, gemm, into, monkeypatch):
    x, w, bias, gy = _problem(case, dtype)
    want = _torch(x, w, bias, gy)
    numpy = _layer(x, w, bias, gy, into)   # outside a native pass
    choose_gemm(monkeypatch, gemm)
    for threads in (1, 2, 3):
        monkeypatch.setattr(dense, "host_threads", lambda threads=threads: threads)
        with native_conv.in_use():
            got = _layer(x, w, bias, gy, into)
        for g, n, t in zip(got, numpy, want):
            _close(g, t, dtype)
            _close(g, n, dtype)


def _forget(monkeypatch, folder) -> None:
    """No choice known in this process, as in a new one; the choices kept in `folder`."""
    monkeypatch.setattr(dense_choice, "CHOICES",
                        ChoiceFile(dense_choice.CHOICES_FILE, dense_choice.CHOICES.valid,
                                   folder))
    monkeypatch.setattr(dense, "_picked", {})


@pytest.fixture
def fresh_choices(tmp_path, monkeypatch):
    """Choices kept in a file of their own, none known yet; returns the file's path."""
    _forget(monkeypatch, tmp_path)
    return tmp_path / dense_choice.CHOICES_FILE


def _count_timings(monkeypatch) -> list:
    timed = []
    real = dense_choice._fastest

    def counted(candidates):
        timed.append(sorted(candidates))
        return real(candidates)
    monkeypatch.setattr(dense_choice, "_fastest", counted)
    return timed


def test_a_shape_is_timed_once_and_kept_on_disk(fresh_choices, monkeypatch):
    import json

    timed = _count_timings(monkeypatch)
    x, w, _, gy = _problem((37, 65, 70), "float32")
    with native_conv.in_use():
        _close(linear.dense_gemm(np, x, w.T), x @ w.T, "float32")
        assert timed == [["numpy", "own"]]
        linear.dense_gemm(np, x, w.T)
        linear.dense_gemm(np, gy, w)   # another shape and layout: timed
    assert len(timed) == 2
    stored = json.loads(fresh_choices.read_text())
    key = dense.key(x, w.T, dense.host_threads())
    assert key.startswith("float32 37x65x70 nt t") and stored[key] in dense_choice.CANDIDATES
    assert dense.key(gy, w, 1) != dense.key(gy, w, 2)   # the thread count is in the key
    # a later process reads the choices from disk
    _forget(monkeypatch, fresh_choices.parent)
    with native_conv.in_use():
        linear.dense_gemm(np, x, w.T)
    assert len(timed) == 2
    # a damaged file counts as empty and is rewritten
    fresh_choices.write_text("{not json")
    _forget(monkeypatch, fresh_choices.parent)
    with native_conv.in_use():
        linear.dense_gemm(np, x, w.T)
    assert len(timed) == 3 and key in json.loads(fresh_choices.read_text())


def test_the_fastest_candidate_is_kept(fresh_choices):
    runs = []
    slow = lambda: runs.append("slow") or time.sleep(0.004)   # noqa: E731
    fast = lambda: runs.append("fast")   # noqa: E731
    assert dense_choice.choose("k", {"numpy": slow, "own": fast}) == "own"
    assert runs.count("slow") == runs.count("fast") == dense_choice.ROUNDS
    assert dense_choice.choose("k", {"numpy": slow, "own": fast}) == "own"   # known
    assert len(runs) == 2 * dense_choice.ROUNDS
    assert dense_choice.choose("j", {"numpy": fast, "own": slow}) == "numpy"


def _refuse(*args, **kwargs):
    raise AssertionError("the own GEMM ran")


def test_numpy_multiplies_with_the_switch_off_and_outside_a_native_pass(monkeypatch):
    monkeypatch.setattr(dense, "matmul", _refuse)
    choose_gemm(monkeypatch, "own")
    x, w, _, _ = _problem((9, 5, 11), "float32")
    _close(linear.dense_gemm(np, x, w.T), x @ w.T, "float32")   # outside a pass
    monkeypatch.setattr(dense, "PICK", False)
    with native_conv.in_use():
        _close(linear.dense_gemm(np, x, w.T), x @ w.T, "float32")


def test_numpy_multiplies_what_the_own_gemm_does_not_take(monkeypatch):
    monkeypatch.setattr(dense, "matmul", _refuse)
    choose_gemm(monkeypatch, "own")
    x, w, _, _ = _problem((9, 5, 11), "float32")
    strided = np.empty((9, 22), np.float32)[:, ::2]   # an out whose rows are not contiguous
    with native_conv.in_use():
        _close(linear.dense_gemm(np, x, w.T, out=strided), x @ w.T, "float32")
        _close(linear.dense_gemm(np, x[:, ::2], w[:, ::2].T), x[:, ::2] @ w[:, ::2].T,
               "float32")   # neither rows nor columns contiguous
        _close(linear.dense_gemm(np, x.astype(np.float16), w.T.astype(np.float16)),
               x.astype(np.float16) @ w.T.astype(np.float16), "float32")


def test_a_pass_whose_gemms_split_over_the_pool_keeps_its_split(monkeypatch):
    monkeypatch.setattr(dense, "matmul", _refuse)
    choose_gemm(monkeypatch, "own")
    x, w, _, _ = _problem((64, 96, 80), "float64")
    with native_conv.in_use(), split_gemm.gemms_on_pool():
        _close(linear.dense_gemm(np, x, w.T), x @ w.T, "float64")


SPEC = """
network mlp
input  x : [7]
target y : class(3)

logits = x -> dense(33) -> relu -> dense(19) -> tanh -> dense(3)
loss cross_entropy(logits, y)
train sgd(lr=0.1), batch=13
"""


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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("gemm", dense_choice.CANDIDATES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_mlp_with_its_layers_apart_trains_as_the_host(dtype, gemm, threads, monkeypatch):
    from netdsl.driver import check_file, check_text
    from netdsl.runtime.init import initial_params
    from test_train_torch import random_batch

    monkeypatch.setattr(conv_chain, "GEMM_CHAINS", False)
    choose_gemm(monkeypatch, gemm)
    monkeypatch.setattr(dense, "host_threads", lambda: threads)
    w1 = check_file(os.path.join(ROOT, "benchmarks", "specs", "w1_mlp.net")).graph
    for graph in (check_text(SPEC).graph, w1):
        host_lowered, native_lowered = lower(graph), lower(graph, "native")
        params = initial_params(host_lowered.built, "torch", seed=0)
        batch = random_batch(host_lowered.plan, 13, np.random.default_rng(0))
        want = _train(host_lowered, params, batch, dtype)
        got = _train(native_lowered, params, batch, dtype)
        tol = 1e-10 if dtype == "float64" else 2e-5
        assert got[0] == pytest.approx(want[0], rel=tol)
        for g, w in zip(got[1:], want[1:]):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * float(np.abs(w).max()))


def _wake_in_a_process(threads: int, **variables) -> list[str]:
    """What blas.wake() returns twice, and BLAS's threads after, in a new process whose
    BLAS runs on `threads` threads, with `variables` in its environment."""
    import subprocess
    import sys

    code = ("import numpy as np; from threadpoolctl import threadpool_limits, "
            "threadpool_info; limits = threadpool_limits(%d, user_api='blas'); "
            "from netdsl.runtime.native import blas; "
            "print(blas.wake(), blas.wake(), "
            "[p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'])"
            % threads)
    env = {k: v for k, v in os.environ.items() if k != "NETDSL_BLAS_WAKE"}
    env.update(PYTHONPATH=str(ROOT), **variables)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)
    return done.stdout.split() if done.returncode == 0 else [done.stderr]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core")
def test_openblas_is_woken_once_and_left_on_one_thread():
    from threadpoolctl import threadpool_info

    if not any(p.get("internal_api") == "openblas" for p in threadpool_info()):
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    assert _wake_in_a_process(1, NETDSL_BLAS_WAKE="1") == ["True", "True", "[1]"]
    assert _wake_in_a_process(1) == ["False", "False", "[1]"]   # off by default
    assert _wake_in_a_process(2, NETDSL_BLAS_WAKE="1") == ["False", "False", "[2]"]
    assert "NETDSL_BLAS_WAKE='2'" in _wake_in_a_process(1, NETDSL_BLAS_WAKE="2")[0]


def test_blas_is_woken_before_a_choice_is_timed(fresh_choices, monkeypatch):
    order = []
    monkeypatch.setattr(dense, "wake", lambda: order.append("wake"))
    real = dense_choice._fastest
    monkeypatch.setattr(dense_choice, "_fastest",
                        lambda candidates: order.append("timed") or real(candidates))
    x, w, _, _ = _problem((9, 5, 11), "float32")
    with native_conv.in_use():
        linear.dense_gemm(np, x, w.T)
    assert order == ["wake", "timed"]


def test_without_the_own_gemm_numpy_multiplies_and_no_build_is_tried_again(monkeypatch,
                                                                            fresh_choices):
    builds = []

    def unavailable(dtype):
        builds.append(dtype)
        raise toolchain.NativeUnavailable("no compiler here")
    monkeypatch.setattr(dense, "gemm_library", unavailable)
    x, w, _, _ = _problem((9, 5, 11), "float32")
    with native_conv.in_use():
        for _ in range(3):
            _close(linear.dense_gemm(np, x, w.T), x @ w.T, "float32")
    assert builds == ["float32"]


def test_the_first_call_gives_the_chosen_gemms_bits_into_an_out_too(fresh_choices,
                                                                     monkeypatch):
    """The timing's runs share `out`, the last not the chosen one: the chosen runs again."""
    def own_chosen_numpy_last(candidates):
        candidates["own"]()
        candidates["numpy"]()
        return "own"
    monkeypatch.setattr(dense_choice, "_fastest", own_chosen_numpy_last)
    monkeypatch.setattr(dense, "host_threads", lambda: 1)
    x, w, _, _ = _problem((37, 65, 70), "float32")
    out = np.empty((37, 70), np.float32)
    with native_conv.in_use():
        got = linear.dense_gemm(np, x, w.T, out=out)
    assert got is out
    assert got.tobytes() == dense.matmul(x, w.T, None, 1).tobytes()


def test_a_shape_under_another_blas_thread_count_is_timed_apart(fresh_choices, monkeypatch):
    """Within a pass whose ops split (one_blas_thread) BLAS runs on one thread while the
    pass has two: a choice timed there is not reused where BLAS runs on two, nor the
    other way round."""
    from threadpoolctl import threadpool_limits

    from netdsl.runtime.host import blas_threads, host_threads, one_blas_thread

    timed = _count_timings(monkeypatch)
    x, w, _, _ = _problem((37, 65, 70), "float32")
    with threadpool_limits(2, user_api="blas"), native_conv.in_use():
        if blas_threads() != 2:
            pytest.skip("no BLAS whose thread count threadpoolctl sets")
        with one_blas_thread(np):
            assert (host_threads(), blas_threads()) == (2, 1)
            _close(linear.dense_gemm(np, x, w.T), x @ w.T, "float32")
        _close(linear.dense_gemm(np, x, w.T), x @ w.T, "float32")
        keys = [k for k in dense_choice.choices() if k.startswith("float32 37x65x70 nt")]
    assert len(timed) == 2 and len(keys) == 2, keys
    assert {k.split()[4] for k in keys} == {"b1", "b2"}
