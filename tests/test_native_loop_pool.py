"""Compiled recurrent loops split over the native target's thread pool.

- the pool runs every part of every call once, on 1 to 5 parts and from two threads at
  once, and an idle pool sleeps: its workers spin no longer than SPIN_NS after a call;
- the pooled functions' C source equals its golden file (LSTM, Elman);
- pooled loops (1, 2 and 4 parts: uneven, and empty parts) give what the unpooled ones
  and float64 PyTorch give, forward and gradients, for LSTM, Elman and GRU cells, full
  and checkpointed BPTT, and what the interpreted loop gives on padded batches;
- the split, packing and parking are on by default (NETDSL_LOOP_POOL=0 turns the split
  off); off, more than one host thread runs the unpooled functions, as do one host thread
  (unless a float32 loop packs its weights), a step below POOL_MIN_MACS and a pool that
  does not build (tried once);
- a pooled float32 loop whose split columns come in panels of 32 multiplies by its
  weights packed once a call, giving what BLAS's GEMM gives (rows of 8 or not, which
  falls back to BLAS's); float64 and other widths leave packing out;
- float32 loops with 32 units, their parts packed, on 1, 2 and 4 parts, full and
  checkpointed, batches of 8 rows and of 6 (BLAS's GEMM), padded batches: the unpooled
  loop's loss and gradients, PyTorch's in float64, the host's interpreted loop's;
- a pass whose loop splits runs every GEMM (the hoisted projection's, the weight
  gradients', the head's) on the pool, BLAS on one thread (STEP_POOL; off: on BLAS's
  threads), and no OpenBLAS worker takes CPU time during such steps (a fresh process);
  the split GEMM gives NumPy's product for every layout it takes and leaves the others
  to NumPy; its source equals its golden file;
- a split loop whose pass keeps BLAS's threads parks OpenBLAS's workers first
  (NETDSL_PARK_BLAS=0: not), and a threaded GEMM after that starts them again and
  computes the same;
- a forked child has no workers and still runs a pooled loop.
(A part is a GEMM or a loop over arrays: it cannot fail, so nothing waits on a failure.)
"""
from __future__ import annotations

import ctypes
import os
import signal
import time

import numpy as np
import pytest

from conftest import ROOT, SPECS, assert_golden
from netdsl.driver import check_file
from netdsl.lower import lower
from netdsl.lower.native_loop import loop_kernel
from netdsl.lower.native_pool import SPIN_NS
from netdsl.runtime.native import dense as native_dense
from netdsl.runtime.native import loops as native_loops
from netdsl.runtime.native import split_gemm
from netdsl.runtime.native.pool import pool_address, pool_workers
from netdsl.runtime.native.toolchain import build
from test_recurrent_torch import CELLS, Pair, assert_same_grads, batch

GOLDEN = os.path.join(ROOT, "tests", "golden_native")

_MARK = """
void mark(void* counts, long long part, long long parts) {
    __atomic_fetch_add(((long long*)counts) + part, part + 1, __ATOMIC_RELAXED);
}
"""


@pytest.fixture
def parts(request, monkeypatch):
    """The loops run pooled on `request.param` parts (host threads), and so do the GEMMs
    of a pass whose loop splits (STEP_POOL)."""
    monkeypatch.setattr(native_loops, "pooled_here", lambda macs, dtype: True)
    monkeypatch.setattr(native_loops, "host_threads", lambda: request.param)
    monkeypatch.setattr(split_gemm, "host_threads", lambda: request.param)
    return request.param


@pytest.fixture
def unpooled(monkeypatch):
    monkeypatch.setattr(native_loops, "pooled_here", lambda macs, dtype: False)


# ---- the pool itself

@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_the_pool_runs_every_part_of_every_call_once(count):
    run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong)(
        pool_address())
    mark = ctypes.cast(build(_MARK).mark, ctypes.c_void_p).value
    counts = np.zeros(count, np.int64)
    calls = 2000
    for _ in range(calls):
        run(mark, counts.ctypes.data, count)
    np.testing.assert_array_equal(counts, calls * np.arange(1, count + 1))
    if count > 1:
        assert pool_workers() >= count - 1


def test_calls_from_two_threads_at_once_each_run_every_part():
    """A call made while another runs (two executors on two Python threads; ctypes
    releases the GIL) runs its parts on its own thread."""
    import threading

    run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong)(
        pool_address())
    mark = ctypes.cast(build(_MARK).mark, ctypes.c_void_p).value
    counts = [np.zeros(3, np.int64) for _ in range(2)]

    def calls(mine):
        for _ in range(3000):
            run(mark, mine.ctypes.data, 3)

    threads = [threading.Thread(target=calls, args=(mine,)) for mine in counts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    for mine in counts:
        np.testing.assert_array_equal(mine, 3000 * np.arange(1, 4))


def test_an_idle_pool_sleeps():
    """After a call the workers spin at most SPIN_NS, then sleep: the process spends
    (almost) no CPU time while the caller sleeps."""
    assert SPIN_NS <= 50_000
    run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong)(
        pool_address())
    mark = ctypes.cast(build(_MARK).mark, ctypes.c_void_p).value
    counts = np.zeros(2, np.int64)
    time.sleep(0.2)   # OpenBLAS's threads spin about 0.1 s after an earlier test's GEMM
    run(mark, counts.ctypes.data, 2)
    time.sleep(0.005)   # a hundred times SPIN_NS
    began = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - began < 0.03


# ---- the generated source

@pytest.mark.parametrize("name, packed", [("elman", False), ("lstm", False), ("lstm", True)])
def test_pooled_loop_source_matches_golden(name, packed, update_golden):
    lowered = lower(check_file(os.path.join(SPECS, f"{name}.net")), "native")
    (segment,) = [s for s in lowered.schedule.segments if hasattr(s, "loop")]
    needs = native_loops.default_needs(lowered, segment)
    kernel = loop_kernel(segment, lowered.plan.types, "float32", needs, "long long",
                         "scipy_cblas_sgemm64_", pooled=True, packed=packed)
    assert kernel.pooled and kernel.packed == packed
    # packed into NumPy's memory, which tracemalloc and the memory report count: the
    # larger of forward's 64x256 and backward's 256x64 weight
    assert kernel.pack_floats == (64 * 256 if packed else None)
    assert "malloc(" not in kernel.source
    label = f"loop_{name}_pooled{'_packed' if packed else ''}.c"
    assert_golden(os.path.join(GOLDEN, label), kernel.source, update_golden)
    for way in ("forward", "backward"):
        assert (f"void loop_{way}(gemm_t gemm, pool_t pool, const long long parts, "
                f"const long long T, const long long B, void* const* a) {{") in kernel.source


# ---- pooled loops against the unpooled ones and PyTorch

def _run(name: str, every=None, many_to_one=False):
    pair = Pair(name, many_to_one, target="native")
    pair.ex.checkpoint = every
    data = batch(many_to_one)
    out = pair.ex.forward(data, True)
    pair.ex.backward()
    assert pair.ex.compiled_loops.calls == {"forward": 1, "backward": 1}
    return pair, data, float(out["loss"]), dict(pair.ex.grads)


def _kernels(ex) -> list:
    return [made[0] for made in ex.compiled_loops._made.values() if made]


@pytest.mark.parametrize("parts", [1, 2, 4], indirect=True)
@pytest.mark.parametrize("every", [None, 3], ids=["full", "checkpointed"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_pooled_loops_match_unpooled_and_pytorch(name, every, parts, monkeypatch):
    pair, data, loss, grads = _run(name, every)
    assert all(k.pooled for k in _kernels(pair.ex))
    theirs, _ = pair.torch_loss(data["x"], data["y"])
    assert loss == pytest.approx(theirs.item(), rel=1e-10)
    assert_same_grads(grads, pair.torch_grads(theirs))
    monkeypatch.setattr(native_loops, "pooled_here", lambda macs, dtype: False)
    plain, _, plain_loss, plain_grads = _run(name, every)
    assert not any(k.pooled for k in _kernels(plain.ex))
    assert loss == pytest.approx(plain_loss, rel=1e-13)
    for key, grad in plain_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=1e-12, atol=1e-15, err_msg=key)


def _native_pair(name: str):
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params

    net = check_file(os.path.join(SPECS, f"{name}.net"))
    host, compiled = lower(net), lower(net, "native")
    params = initial_params(host.built, "torch", seed=0)
    return (Executor(host, params, dtype="float64"), Executor(compiled, params, dtype="float64"))


def _padded_batch(plan, lengths, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for key, t in plan.inputs.items():
        shape = (len(lengths), 6, *t.dims) if t.seq else (len(lengths), *t.dims)
        data[key] = (rng.integers(0, t.classes, shape) if t.classes is not None
                     else rng.standard_normal(shape))
        if t.seq:
            data[f"{key}.lengths"] = np.array(lengths)
    return data


@pytest.mark.parametrize("parts", [2, 4], indirect=True)
@pytest.mark.parametrize("every", [None, 2], ids=["full", "checkpointed"])
@pytest.mark.parametrize("name", ["lstm_classifier", "gru", "elman"])
def test_a_pooled_padded_batch_holds_the_states_past_each_end(name, every, parts):
    host, native_ex = _native_pair(name)
    native_ex.checkpoint = every
    data = _padded_batch(host.plan, [6, 3, 1, 5, 2])
    outputs = [ex.forward(data, True) for ex in (host, native_ex)]
    for ex in (host, native_ex):
        ex.backward()
    assert native_ex.compiled_loops.calls == {"forward": 1, "backward": 1}
    assert all(k.pooled for k in _kernels(native_ex))
    for key, value in outputs[0].items():
        assert float(outputs[1][key]) == pytest.approx(float(value), rel=1e-12), key
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("parts", [2], indirect=True)
def test_a_pooled_chunk_starts_from_the_last_chunks_states(parts):
    """Truncated BPTT: the second chunk's pooled loop starts from the first's carried
    states."""
    host, native_ex = _native_pair("lstm")
    first, second = ({key: value for key, value in _padded_batch(host.plan, [6, 6, 6], seed)
                      .items() if not key.endswith(".lengths")} for seed in (0, 1))
    for ex in (host, native_ex):
        ex.forward(first, True)
        ex.forward(second, True, carry=ex.carry)
        ex.backward()
    assert native_ex.compiled_loops.calls == {"forward": 2, "backward": 1}
    assert all(k.pooled for k in _kernels(native_ex))
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


# ---- weights packed once a call (float32)

_PACKED_CALLS = """
void packed_product(long long M, long long N, long long K, const float* A, const float* B,
                    int beta, float* C, float* p) {
    pack_panels(B, N + 3, K, N, p);   /* B's rows are longer than N: a block of a weight */
    gemm_packed(M, N, K, A, K, p, beta, C, N);
}
"""


@pytest.mark.parametrize("M, N, K", [(8, 32, 1), (16, 64, 7), (32, 256, 128), (8, 96, 300)])
@pytest.mark.parametrize("beta", [0, 1])
def test_the_packed_gemm_multiplies_as_numpy_does(M, N, K, beta):
    from netdsl.lower.native_gemm import PACKED_GEMM

    library = build("#include <string.h>\n" + "\n".join(PACKED_GEMM) + _PACKED_CALLS)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N + 3)).astype(np.float32)
    c = np.full((M, N), np.nan if beta == 0 else 0.5, np.float32)  # beta 0 reads nothing
    expected = a.astype(np.float64) @ b[:, :N] + (0.5 if beta else 0.0)
    packed = np.empty(K * N, np.float32)
    library.packed_product(*(ctypes.c_longlong(v) for v in (M, N, K)),
                           ctypes.c_void_p(a.ctypes.data), ctypes.c_void_p(b.ctypes.data),
                           ctypes.c_int(beta), ctypes.c_void_p(c.ctypes.data),
                           ctypes.c_void_p(packed.ctypes.data))
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-4 * np.sqrt(K))


PACKED_CELLS = {"lstm": "lstm(32)", "gru": "gru_reset_after(32)", "elman": "elman(32)"}


def _float32_step(cell: str, rows: int, pooled: bool, packed: bool, monkeypatch):
    """(loss, gradients, the kernels) of a float32 step of `cell` over `rows` sequences."""
    from test_recurrent_torch import spec
    from netdsl.driver import check_text
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params

    monkeypatch.setattr(native_loops, "pooled_here", lambda macs, dtype: pooled)
    monkeypatch.setattr(native_loops, "LOOP_PACK", packed)
    lowered = lower(check_text(spec(cell)), "native")
    ex = Executor(lowered, initial_params(lowered.built, "torch", seed=1), dtype="float32")
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((rows, 7, 5)), "y": rng.integers(0, 4, (rows, 7))}
    out = ex.forward(data, True)
    ex.backward()
    return float(out["loss"]), dict(ex.grads), _kernels(ex)


@pytest.mark.parametrize("parts", [2, 3], indirect=True)
@pytest.mark.parametrize("rows", [8, 6], ids=["rows_of_8", "rows_not_of_8"])
@pytest.mark.parametrize("name", sorted(PACKED_CELLS))
def test_packed_weights_give_what_blas_gives(name, rows, parts, monkeypatch):
    """Hidden 32: every split weight's columns come in panels of 32; on a batch of 6 rows
    the packed kernel falls back to BLAS's GEMM."""
    loss, grads, kernels = _float32_step(PACKED_CELLS[name], rows, True, True, monkeypatch)
    assert all(k.packed for k in kernels) and "gemm_packed(" in kernels[0].source
    plain_loss, plain_grads, plain = _float32_step(PACKED_CELLS[name], rows, False, False,
                                                   monkeypatch)
    assert not any(k.pooled for k in plain)
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    for key, grad in plain_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=2e-4, atol=2e-6, err_msg=key)


def _float32_pair(name: str, monkeypatch):
    """PyTorch's cell in float64 (test_recurrent_torch.Pair) with 32 units, and the
    native target's executor of the same parameters in float32."""
    import test_recurrent_torch as cells
    from netdsl.runtime.execute import Executor

    monkeypatch.setattr(cells, "HIDDEN", 32)
    _, module, weights = cells.CELLS[name]
    monkeypatch.setitem(cells.CELLS, name, (PACKED_CELLS[name], module, weights))
    pair = cells.Pair(name, target="native")
    values = {k: v.detach().numpy() for k, v in pair.leaves.items()}
    return pair, Executor(pair.lowered, values, dtype="float32")


def _float32_batch(rows: int, lengths=None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = {"x": rng.standard_normal((rows, 7, 5)), "y": rng.integers(0, 4, (rows, 7))}
    if lengths is not None:
        data["x.lengths"] = np.array(lengths)
    return data


def _step(ex, data) -> tuple[float, dict]:
    out = ex.forward(data, True)
    ex.backward()
    return float(out["loss"]), {k: np.array(v) for k, v in ex.grads.items()}


@pytest.mark.parametrize("parts", [1, 2, 4], indirect=True)
@pytest.mark.parametrize("every", [None, 3], ids=["full", "checkpointed"])
@pytest.mark.parametrize("rows", [8, 6], ids=["rows_of_8", "rows_not_of_8"])
@pytest.mark.parametrize("name", sorted(PACKED_CELLS))
def test_packed_pooled_loops_match_unpooled_and_pytorch(name, rows, every, parts,
                                                         monkeypatch):
    """float32, 32 units: the pooled loop's parts multiply by packed weights (rows of 8;
    a batch of 6 falls back to BLAS's GEMM), the pass's GEMMs on the pool: the same loss
    and gradients as the unpooled loop and as PyTorch's cell in float64, to float32's
    rounding."""
    monkeypatch.setattr(native_loops, "LOOP_PACK", True)
    monkeypatch.setattr(split_gemm, "MIN_MACS", 0)
    pair, ex = _float32_pair(name, monkeypatch)
    ex.checkpoint = every
    data = _float32_batch(rows)
    loss, grads = _step(ex, data)
    assert all(k.pooled and k.packed for k in _kernels(ex))
    theirs, _ = pair.torch_loss(data["x"], data["y"])
    assert loss == pytest.approx(theirs.item(), rel=2e-6)
    for key, grad in pair.torch_grads(theirs).items():
        np.testing.assert_allclose(grads[key], grad, rtol=2e-4, atol=2e-6, err_msg=key)
    monkeypatch.setattr(native_loops, "pooled_here", lambda macs, dtype: False)
    _, plain = _float32_pair(name, monkeypatch)
    plain.checkpoint = every
    plain_loss, plain_grads = _step(plain, data)
    assert not any(k.pooled for k in _kernels(plain))
    assert loss == pytest.approx(plain_loss, rel=2e-6)
    for key, grad in plain_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=2e-4, atol=2e-6, err_msg=key)


@pytest.mark.parametrize("parts", [1, 2, 4], indirect=True)
@pytest.mark.parametrize("every", [None, 2], ids=["full", "checkpointed"])
@pytest.mark.parametrize("name", sorted(PACKED_CELLS))
def test_a_packed_pooled_padded_batch_matches_the_interpreted_loop(name, every, parts,
                                                                  monkeypatch):
    """A padded float32 batch of 8 rows (packed): what the host's interpreted loop gives
    in float64, and the unpooled compiled loop in float32."""
    from netdsl.runtime.execute import Executor

    monkeypatch.setattr(native_loops, "LOOP_PACK", True)
    monkeypatch.setattr(split_gemm, "MIN_MACS", 0)
    from test_recurrent_torch import spec
    from netdsl.driver import check_text

    pair, ex = _float32_pair(name, monkeypatch)
    values = {k: v.detach().numpy() for k, v in pair.leaves.items()}
    host = Executor(lower(check_text(spec(PACKED_CELLS[name])), "host"), values,
                    dtype="float64")
    data = _float32_batch(8, [7, 3, 1, 5, 2, 7, 6, 4])
    ex.checkpoint = every
    loss, grads = _step(ex, data)
    assert all(k.pooled and k.packed for k in _kernels(ex))
    host_loss, host_grads = _step(host, data)
    assert loss == pytest.approx(host_loss, rel=2e-6)
    for key, grad in host_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=2e-4, atol=2e-6, err_msg=key)
    monkeypatch.setattr(native_loops, "pooled_here", lambda macs, dtype: False)
    _, plain = _float32_pair(name, monkeypatch)
    plain.checkpoint = every
    plain_loss, plain_grads = _step(plain, data)
    assert not any(k.pooled for k in _kernels(plain))
    assert loss == pytest.approx(plain_loss, rel=2e-6)
    for key, grad in plain_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=2e-4, atol=2e-6, err_msg=key)


def test_packing_is_left_to_blas_where_it_cannot_apply(monkeypatch):
    """float64, or columns that do not come in panels of 32 (hidden 6): BLAS's GEMM."""
    _, _, kernels = _float32_step("lstm(6)", 8, True, True, monkeypatch)
    assert "gemm_packed(" not in kernels[0].source
    lowered = lower(check_file(os.path.join(SPECS, "lstm.net")), "native")
    (segment,) = [s for s in lowered.schedule.segments if hasattr(s, "loop")]
    needs = native_loops.default_needs(lowered, segment)
    kernel = loop_kernel(segment, lowered.plan.types, "float64", needs, "long long",
                         "scipy_cblas_dgemm64_", pooled=True, packed=True)
    assert not kernel.packed and "gemm_packed(" not in kernel.source


# ---- the switch

def test_the_switch_one_thread_and_small_steps_run_the_unpooled_loop(monkeypatch):
    big = native_loops.POOL_MIN_MACS
    monkeypatch.setattr(native_loops, "host_threads", lambda: 2)
    monkeypatch.setattr(native_loops, "LOOP_POOL", True)
    monkeypatch.setattr(native_loops, "LOOP_PACK", True)
    assert native_loops.pooled_here(big, "float64")
    assert not native_loops.pooled_here(big - 1, "float64")
    monkeypatch.setattr(native_loops, "POOL_MIN_MACS", 0)
    pair, _, _, _ = _run("lstm")
    assert all(k.pooled for k in _kernels(pair.ex))
    # off: two threads run the whole-batch functions, packed or not
    monkeypatch.setattr(native_loops, "LOOP_POOL", False)
    assert not native_loops.pooled_here(big, "float32")
    pair, _, _, _ = _run("lstm")
    assert not any(k.pooled for k in _kernels(pair.ex))
    # one thread: the pooled functions where they pack their weights (float32), whatever
    # LOOP_POOL says: there is no thread to split over
    monkeypatch.setattr(native_loops, "host_threads", lambda: 1)
    assert native_loops.pooled_here(big, "float32")
    assert not native_loops.pooled_here(big, "float64")
    monkeypatch.setattr(native_loops, "LOOP_PACK", False)
    assert not native_loops.pooled_here(big, "float32")


def test_the_split_and_packing_are_on_where_no_setting_says():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NETDSL_LOOP_", "NETDSL_PARK_"))}
    code = ("from netdsl.runtime.native import loops; "
            "print(loops.LOOP_POOL, loops.LOOP_PACK, loops.PARK_BLAS)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["True", "True", "True"], done.stderr


def test_a_steps_gemms_are_counted_per_row():
    """W4's step: 32 rows by a 128x512 recurrent weight (its input projection is hoisted
    out of the loop)."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import sequence_speed

    w4 = next(w for w in sequence_speed.WORKLOADS if w.id == "W4")
    lowered = sequence_speed.lowered_spec(w4, "native")
    (segment,) = [s for s in lowered.schedule.segments if hasattr(s, "loop")]
    assert native_loops.step_macs(segment, lowered.plan.types, 32) == 32 * 128 * 512


# ---- fork

@pytest.mark.parametrize("parts", [2], indirect=True)
def test_a_forked_child_runs_a_pooled_loop(parts):
    pair, data, loss, grads = _run("lstm")
    assert pool_workers() >= 1
    pid = os.fork()
    if pid == 0:   # the child: no workers until its first call, then the same loop
        code = 1
        try:
            signal.alarm(60)   # a hung pool fails the test rather than the run
            fresh = pool_workers() == 0
            again = pair.ex.forward(data, True)
            pair.ex.backward()
            same = float(again["loss"]) == loss and all(
                np.array_equal(pair.ex.grads[k], g) for k, g in grads.items())
            code = 0 if fresh and same and pool_workers() >= 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


# ---- without the pool

def test_without_a_pool_the_loops_run_whole(monkeypatch):
    """A pool that does not build (no compiler for it) leaves the unpooled loops, and
    is not tried again at every loop's call."""
    from netdsl.runtime.native import pool as native_pool
    from netdsl.runtime.native.toolchain import NativeUnavailable

    tries = []

    def no_pool(source, libraries=()):
        tries.append(source)
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")

    monkeypatch.setattr(native_pool, "build", no_pool)
    monkeypatch.setattr(native_pool, "_library", None)
    monkeypatch.setattr(native_pool, "_address", None)
    monkeypatch.setattr(native_pool, "_failure", None)
    monkeypatch.setattr(native_loops, "host_threads", lambda: 2)
    monkeypatch.setattr(native_loops, "POOL_MIN_MACS", 0)
    monkeypatch.setattr(native_loops, "LOOP_POOL", True)
    assert not native_loops.pooled_here(1 << 30, "float32")
    pair, data, loss, grads = _run("lstm")
    assert not any(k.pooled for k in _kernels(pair.ex))
    theirs, _ = pair.torch_loss(data["x"], data["y"])
    assert loss == pytest.approx(theirs.item(), rel=1e-10)
    assert len(tries) == 1


# ---- OpenBLAS's workers parked before a split loop

def test_openblas_workers_parked_start_again_at_the_next_threaded_gemm():
    from threadpoolctl import threadpool_limits

    from netdsl.runtime.native.pool import park_blas_workers

    a = np.random.default_rng(0).standard_normal((256, 256))
    with threadpool_limits(2):
        expected = a @ a
        parked = park_blas_workers()
        np.testing.assert_array_equal(a @ a, expected)
        park_blas_workers()
    assert parked == any(i.get("internal_api") == "openblas"
                         for i in __import__("threadpoolctl").threadpool_info())


@pytest.mark.parametrize("parts", [2], indirect=True)
@pytest.mark.parametrize("park, step_pool", [(True, False), (False, False), (True, True)])
def test_a_split_loop_parks_openblas_first_unless_told_not(parts, park, step_pool,
                                                           monkeypatch):
    """With the pass's GEMMs on BLAS's threads (STEP_POOL off); with them on the pool no
    OpenBLAS worker has run, and parking one would only make the next setting of BLAS's
    threads start it again (spinning)."""
    parked = []
    monkeypatch.setattr(native_loops, "PARK_BLAS", park)
    monkeypatch.setattr(native_loops, "STEP_POOL", step_pool)
    monkeypatch.setattr(native_loops, "park_blas_workers", lambda: parked.append(1))
    pair, data, loss, grads = _run("lstm")
    # before the forward call and the backward
    assert len(parked) == (2 if park and not step_pool else 0)
    theirs, _ = pair.torch_loss(data["x"], data["y"])
    assert loss == pytest.approx(theirs.item(), rel=1e-10)
    assert_same_grads(grads, pair.torch_grads(theirs))


# ---- the whole step on the pool (STEP_POOL)

def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
               default=1)


@pytest.mark.parametrize("parts", [2, 4], indirect=True)
@pytest.mark.parametrize("step_pool", [True, False])
def test_a_split_steps_gemms_run_on_the_pool_with_blas_on_one_thread(parts, step_pool,
                                                                      monkeypatch):
    """Every GEMM of a pass whose loop splits (the hoisted projection's, the weight
    gradients', the head's) runs within gemms_on_pool, BLAS on one thread; STEP_POOL off,
    on BLAS's threads as before. The gradients are PyTorch's either way."""
    from netdsl.ops import parallel

    monkeypatch.setattr(native_loops, "STEP_POOL", step_pool)
    monkeypatch.setattr(split_gemm, "MIN_MACS", 0)   # the spec's GEMMs are small
    # outside the pool a dense layer's GEMMs go to the one chosen for their shape
    # (runtime.native.dense), not to parallel.matmul, which is watched here
    monkeypatch.setattr(native_dense, "PICK", False)
    seen, split = [], []
    generic = parallel.matmul.provided["numpy"]

    def watched(xp, a, b, out=None):
        seen.append((split_gemm.on_pool(), _blas_threads()))
        return generic(xp, a, b, out)

    def counted(a, b, out=None):
        result = split_gemm.split_matmul(a, b, out)
        split.append(result is not NotImplemented)
        return result

    monkeypatch.setitem(parallel.matmul.provided, "numpy", watched)
    monkeypatch.setattr(native_loops, "split_matmul", counted)
    outside = _blas_threads()
    pair, data, loss, grads = _run("lstm")
    assert _blas_threads() == outside   # given back after each pass
    # the projection and the head forward, their weight gradients and the head's input's
    assert len(seen) >= 5 and split
    if step_pool:
        assert all(on and threads == 1 for on, threads in seen), seen
        assert all(split)
    else:
        assert not any(on for on, _ in seen) and not any(split)
        assert all(threads == outside for _, threads in seen)
    theirs, _ = pair.torch_loss(data["x"], data["y"])
    assert loss == pytest.approx(theirs.item(), rel=1e-10)
    assert_same_grads(grads, pair.torch_grads(theirs))


def test_a_pass_without_a_split_loop_keeps_its_gemms_as_they_were(monkeypatch):
    """One host thread, or the split off: no pass runs its GEMMs on the pool."""
    from netdsl.ops import parallel

    seen = []
    generic = parallel.matmul.provided["numpy"]
    monkeypatch.setitem(parallel.matmul.provided, "numpy",
                        lambda xp, a, b, out=None: seen.append(split_gemm.on_pool())
                        or generic(xp, a, b, out))
    monkeypatch.setattr(native_loops, "LOOP_POOL", False)
    monkeypatch.setattr(native_dense, "PICK", False)   # parallel.matmul's GEMMs watched
    _run("lstm")
    assert seen and not any(seen)


@pytest.mark.parametrize("M, K, N", [(1600, 32, 512), (512, 1600, 128), (37, 300, 600),
                                     (600, 41, 37)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["plain", "a_transposed", "b_transposed", "both", "views"])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_split_gemm_multiplies_as_numpy_does(M, K, N, dtype, layout, count, monkeypatch):
    """Rows split where C has as many rows as columns or more, columns else; A and B read
    as stored, transposed or as column blocks of wider arrays; out written in place."""
    from netdsl.runtime.host import one_blas_thread

    monkeypatch.setattr(split_gemm, "host_threads", lambda: count)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K + 5)).astype(dtype)[:, 2:K + 2]
    b = rng.standard_normal((K, N + 3)).astype(dtype)[:, :N]
    if layout in ("a_transposed", "both"):
        a = np.ascontiguousarray(a.T).T
    if layout in ("b_transposed", "both"):
        b = np.ascontiguousarray(b.T).T
    if layout == "plain":
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    expected = a.astype(np.float64) @ b
    out = np.full((M, N + 4), np.nan, dtype)[:, 1:N + 1]
    with one_blas_thread(np), split_gemm.gemms_on_pool():
        made = split_gemm.split_matmul(a, b)
        into = split_gemm.split_matmul(a, b, out=out)
    assert into is out
    tolerance = {"rtol": 1e-4, "atol": 1e-4 * np.sqrt(K)} if dtype == "float32" else \
        {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(made, expected, **tolerance)
    np.testing.assert_allclose(out, expected, **tolerance)


def test_a_split_gemm_leaves_what_it_does_not_take_to_numpy():
    a = np.ones((600, 600), np.float32)
    assert split_gemm.split_matmul(a, a) is NotImplemented   # outside gemms_on_pool
    with split_gemm.gemms_on_pool():
        assert split_gemm.on_pool()
        assert split_gemm.split_matmul(a[:8, :8], a[:8, :8]) is NotImplemented  # small
        assert split_gemm.split_matmul(a, a.astype(np.float64)) is NotImplemented
        assert split_gemm.split_matmul(a[::2], a[:300]) is NotImplemented   # strided rows
        assert split_gemm.split_matmul(a[None], a) is NotImplemented
        assert split_gemm.split_matmul(a, a, out=np.empty((600, 600), np.float32).T) \
            is NotImplemented
    assert not split_gemm.on_pool()


def test_the_split_gemm_source_matches_golden(update_golden):
    from netdsl.lower.native_split_gemm import split_gemm_source

    assert_golden(os.path.join(GOLDEN, "loop_step_gemm.c"),
                  split_gemm_source("float32", "long long", "scipy_cblas_sgemm64_"),
                  update_golden)


_OPENBLAS_WORKERS = r"""
import os, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from netdsl.driver import check_file
from netdsl.lower import lower
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.native import loops

def others():
    # CPU seconds of the threads but this one and the pool's, those ended included
    pool = 0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            stat = f.read()
        if stat[stat.index("(") + 1:stat.rindex(")")] == "netdsl-pool":
            fields = stat[stat.rindex(")") + 2:].split()
            pool += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return time.process_time() - time.thread_time() - pool

loops.LOOP_POOL, loops.STEP_POOL = True, sys.argv[1] == "1"
with threadpool_limits(2, user_api="blas"):
    lowered = lower(check_file(sys.argv[2]), "native")
    ex = Executor(lowered, initial_params(lowered.built, "auto", 0), dtype="float32")
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((32, 20, 32)), "y": rng.integers(0, 10, 32)}
    for _ in range(3):
        ex.forward(data, True)
        ex.backward()
    time.sleep(0.5)   # OpenBLAS's workers asleep
    before = others()
    for _ in range(6):
        ex.forward(data, True)
        ex.backward()
    time.sleep(0.3)   # a worker woken spins on
    pooled = all(m[0].pooled for m in ex.compiled_loops._made.values() if m)
    print(others() - before, pooled)
"""


@pytest.mark.parametrize("step_pool", [True, False])
def test_no_openblas_worker_runs_during_a_split_step(step_pool):
    """W4's network on two BLAS threads, the loop split: with STEP_POOL no OpenBLAS worker
    takes any CPU time over six steps; without it (the projection and the weight
    gradients on BLAS's threads, its workers parked and started again) they spin. A fresh
    process, so that no other library's threads count: the process's CPU time less the
    calling thread's and the pool's workers' (named netdsl-pool)."""
    import subprocess
    import sys

    from threadpoolctl import threadpool_info

    if not any(i.get("internal_api") == "openblas" for i in threadpool_info()):
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    if (os.cpu_count() or 1) < 2 or not os.path.isdir("/proc/self/task"):
        pytest.skip("needs two cores and Linux's /proc")
    spec = os.path.join(ROOT, "benchmarks", "specs", "w4_lstm.net")
    done = subprocess.run([sys.executable, "-c", _OPENBLAS_WORKERS, "1" if step_pool else "0",
                           spec], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    spent, pooled = done.stdout.split()
    assert pooled == "True"
    # a clock tick of the pool's threads' time (10 ms) is the probe's error
    if step_pool:
        assert float(spent) < 0.03, f"OpenBLAS's workers ran {spent} s"
    else:   # the probe sees them (0.16-0.19 s measured)
        assert float(spent) > 0.03, f"OpenBLAS's workers ran {spent} s"
