"""The native CPU target: codegen's programs compiled to C.

- every fused pattern's C source equals its golden file (tests/golden_native/, update
  with --update-golden), with and without the vector math declarations;
- every pattern, chains and optimiser updates alike, computes what NumPy's evaluation
  of the same program does, in float32 and float64, in place where it updates, and over
  slabs on the host's threads when the arrays are large;
- the library is cached on disk: a second build loads it, nothing half-written is left;
- the entry that hands a kernel's slabs to the C pool (lower.native_slabs) equals its
  golden files (tests/golden_native_slabs/); a chain split over 1, 2 and 3 threads
  (odd sizes) gives the same bits through it (NETDSL_C_SLABS=1) as on the Python
  threads (NETDSL_C_SLABS=0, the default), scalars and all; a forked child
  splits over a pool of its own; without the pool the Python threads run the slabs;
- without a compiler the target says so in one line, and netc falls back to NumPy.
(The native target's training steps equal the host's on every spec in test_fused and
test_lower.)
"""
import os

import numpy as np
import pytest

from conftest import ROOT, SPECS, assert_golden, run_netc
from netdsl.lower.codegen import evaluate_program, run_program
from netdsl.lower.native import c_module
from netdsl.runtime import native
from netdsl.runtime.native import toolchain as native_build
from netdsl.runtime.optim import make_optimizer
from test_kernelgen import OPTIMIZER_CONFIGS, PATTERNS

GOLDEN = os.path.join(ROOT, "tests", "golden_native")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh kernel cache, and no library loaded from an earlier build."""
    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path))
    native_build.build.cache_clear()
    yield tmp_path / "native"
    native_build.build.cache_clear()


@pytest.mark.parametrize("label", sorted(PATTERNS))
def test_c_source_matches_golden(label, update_golden):
    assert_golden(os.path.join(GOLDEN, f"{label}.c"), c_module([PATTERNS[label]], "float32"),
                  update_golden)


def test_every_golden_source_has_a_pattern():
    stale = sorted(set(f[:-2] for f in os.listdir(GOLDEN)
                       if not f.startswith(("loop_", "channels_")))
                   - set(PATTERNS))
    assert not stale, f"golden sources without a pattern: {stale}"


def test_without_vector_math_the_functions_are_not_declared_simd():
    program = PATTERNS["tanh_forward"]
    assert 'simd("notinbranch"))) float tanhf(float)' in c_module([program], "float32")
    plain = c_module([program], "float32", vector_math=False)
    assert "simd(" not in plain and "tanhf(x0)" in plain
    assert "double tanh(double)" in c_module([program], "float64")


def _arrays(program, shape, dtype, rng):
    arrays = {name: rng.uniform(0.5, 1.5, shape).astype(dtype) for name in program.reads}
    for name in program.outputs:   # an update's moments are read and written in place
        if name in arrays:
            arrays[name] = np.ascontiguousarray(arrays[name])
    return arrays


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_pattern_computes_what_numpy_does(dtype, cache):
    programs = [PATTERNS[label] for label in sorted(PATTERNS)]
    assert native.prepare(programs, dtype) == len(programs)
    rng = np.random.default_rng(0)
    scalars = {"lr": 0.1, "c1": 0.19, "c2": 0.7}
    for program in programs:
        arrays = _arrays(program, (7, 5), dtype, rng)
        expected = evaluate_program(program, {k: v.copy() for k, v in arrays.items()},
                                    scalars, np, dtype)
        got = run_program(np, program, arrays, scalars, dtype)
        assert set(got) == set(program.outputs)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=2e-6 if dtype == "float32"
                                       else 1e-13, err_msg=f"{program.name}: {name}")
            if name in arrays:
                assert got[name] is arrays[name], "an update writes in place"


@pytest.mark.parametrize("label", sorted(OPTIMIZER_CONFIGS))
def test_the_native_optimiser_updates_as_numpy_does(label, cache):
    name, settings = OPTIMIZER_CONFIGS[label]
    rng = np.random.default_rng(2)
    start = rng.standard_normal(300)
    ours, theirs = start.copy(), start.copy()
    compiled = make_optimizer(name, settings, ours, native=True)
    plain = make_optimizer(name, settings, theirs)
    assert compiled._native and compiled._scratch is None, "one pass, no scratch vector"
    for _ in range(4):
        grads = rng.standard_normal(300)
        compiled.step(grads.copy(), 0.05)
        plain.step(grads.copy(), 0.05)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("c_slabs", [True, False])
@pytest.mark.parametrize("split", [True, False])
def test_large_arrays_run_in_slabs_on_the_host_threads(cache, monkeypatch, split, c_slabs):
    """Above native.SPLIT_BYTES (lowered here, as the arrays stay small) the slabs run on
    the host's threads, handed over by the C pool (C_SLABS) or to Python threads; below
    it one call does the whole array."""
    from netdsl.ops import parallel  # the seams whose calls the test counts
    from netdsl.runtime import host
    from netdsl.runtime.native import slabs
    calls, pooled = [], []
    real = parallel.slab_map.provided["numpy"]
    monkeypatch.setitem(parallel.slab_map.provided, "numpy",
                        lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr(host, "host_threads", lambda: 2)
    monkeypatch.setattr(slabs, "C_SLABS", c_slabs)
    real_pool = slabs._on_pool
    monkeypatch.setattr(slabs, "_on_pool", lambda plan, parts: pooled.append(len(parts))
                        or real_pool(plan, parts))
    monkeypatch.setattr(native, "SPLIT_BYTES", 1 << 20 if split else 1 << 40)
    program = PATTERNS["add_relu_forward"]
    native.prepare([program], "float32")
    rng = np.random.default_rng(1)
    x0, x1 = (rng.standard_normal((64, 9000)).astype(np.float32) for _ in range(2))
    got = run_program(np, program, {"x0": x0, "x1": x1}, dtype="float32")["y"]
    np.testing.assert_array_equal(got, np.maximum(x0 + x1, 0))
    assert calls == ([64 * 9000] if split and not c_slabs else [])
    assert pooled == ([4] if split and c_slabs else [])


def test_broadcast_and_strided_inputs_are_made_contiguous(cache):
    program = PATTERNS["mul_forward"]
    native.prepare([program], "float64")
    a = np.arange(12.0).reshape(3, 4)
    got = run_program(np, program, {"x0": a.T, "x1": np.float64(2.0) * np.ones((4, 1))},
                      dtype="float64")["y"]
    np.testing.assert_array_equal(got, a.T * 2)


def test_a_program_not_prepared_is_evaluated_by_numpy(cache):
    program = PATTERNS["exp_forward"]
    native._functions.pop((id(program), "float16"), None)
    x = np.array([0.0, 1.0], dtype=np.float16)
    got = run_program(np, program, {"x0": x}, dtype="float16")["y"]
    np.testing.assert_array_equal(got, np.exp(x))


def test_the_library_is_cached_on_disk(cache):
    source = c_module([PATTERNS["relu_forward"]], "float32")
    before = len(native_build.builds)
    native_build.build(source)
    assert len(native_build.builds) == before + 1
    (library,) = cache.iterdir()
    assert library.suffix == ".so", "the build's temporary files are gone"
    native_build.build.cache_clear()      # as a new process would
    native_build.build(source)
    assert len(native_build.builds) == before + 1, "loaded, not compiled again"


def test_without_a_compiler_the_target_says_why(cache, monkeypatch):
    monkeypatch.setenv("NETDSL_NATIVE", "0")
    with pytest.raises(native.NativeUnavailable, match="no C compiler"):
        native.prepare([PATTERNS["relu_forward"]], "float32")


def test_a_compiler_error_is_one_line(cache, monkeypatch, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'error: out of cheese' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.raises(native.NativeUnavailable, match="failed on the generated kernels: "
                                                       "error: out of cheese"):
        native_build.build(c_module([PATTERNS["relu_forward"]], "float32"))


def test_netc_compile_reports_the_native_build(cache):
    result = run_netc("compile", os.path.join(SPECS, "lstm.net"), "--target", "native")
    assert result.returncode == 0, result.stderr
    assert "native kernels: 12 (float32), 1 of 1 loops whole, compiled in" in result.stdout


def test_netc_compile_without_a_compiler_falls_back(cache, monkeypatch):
    monkeypatch.setenv("NETDSL_NATIVE", "0")
    result = run_netc("compile", os.path.join(SPECS, "lstm.net"), "--target", "native")
    assert result.returncode == 0, result.stderr
    assert "no C compiler found" in result.stdout + result.stderr


def _recurrent_pair(name: str, dtype: str = "float64"):
    from netdsl.driver import check_file
    from netdsl.lower import lower
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params

    net = check_file(os.path.join(SPECS, f"{name}.net"))
    host, compiled = lower(net), lower(net, "native")
    params = initial_params(host.built, "torch", seed=0)
    return (Executor(host, params, dtype=dtype), Executor(compiled, params, dtype=dtype))


def _sequence_batch(plan, lengths=None, seed=0):
    rng = np.random.default_rng(seed)
    batch = {}
    for key, t in plan.inputs.items():
        shape = (4, 6, *t.dims) if t.seq else (4, *t.dims)
        batch[key] = (rng.integers(0, t.classes, shape) if t.classes is not None
                      else rng.standard_normal(shape))
        if lengths is not None and t.seq:
            batch[f"{key}.lengths"] = np.array(lengths)
    return batch


@pytest.mark.parametrize("name", ["elman", "lstm", "gru", "jordan", "scrn"])
def test_recurrences_run_as_one_compiled_call_each_way(name):
    host, native_ex = _recurrent_pair(name)
    batch = _sequence_batch(host.plan)
    for ex in (host, native_ex):
        ex.forward(batch, True)
        ex.backward()
    loops = len(native_ex.plan.loops)
    assert native_ex.compiled_loops.calls == {"forward": loops, "backward": loops}
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


def test_a_backward_of_some_parameters_compiles_its_own_loop():
    host, native_ex = _recurrent_pair("lstm")
    batch = _sequence_batch(host.plan)
    keys = [k for k in host.plan.params if "z" in k][:1]
    for ex in (host, native_ex):
        ex.forward(batch, True)
        ex.backward(ex.lowered.backward(params=keys))
    assert native_ex.compiled_loops.calls["backward"] == 1
    for key in keys:
        np.testing.assert_allclose(native_ex.grads[key], host.grads[key], rtol=1e-10)


@pytest.mark.parametrize("name", ["lstm_classifier", "gru", "elman"])
def test_a_padded_batch_holds_the_states_past_each_end(name):
    host, native_ex = _recurrent_pair(name)
    batch = _sequence_batch(host.plan, lengths=[6, 3, 1, 5])
    outputs = [ex.forward(batch, True) for ex in (host, native_ex)]
    for ex in (host, native_ex):
        ex.backward()
    assert native_ex.compiled_loops.calls == {"forward": 1, "backward": 1}
    for key, value in outputs[0].items():
        assert float(outputs[1][key]) == pytest.approx(float(value), rel=1e-12), key
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


def test_a_chunk_starts_from_the_last_chunks_states():
    """Truncated BPTT: the second chunk's loop starts from the first's carried states."""
    host, native_ex = _recurrent_pair("lstm")
    first, second = (_sequence_batch(host.plan, seed=s) for s in (0, 1))
    for ex in (host, native_ex):
        ex.forward(first, True)
        ex.forward(second, True, carry=ex.carry)
        ex.backward()
    assert native_ex.compiled_loops.calls == {"forward": 2, "backward": 1}
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["elman", "lstm"])
def test_loop_source_matches_golden(name, update_golden):
    from netdsl.driver import check_file
    from netdsl.lower import lower
    from netdsl.lower.native_loop import loop_kernel

    lowered = lower(check_file(os.path.join(SPECS, f"{name}.net")), "native")
    (segment,) = [s for s in lowered.schedule.segments if hasattr(s, "loop")]
    backward = lowered.backward()
    needs = {s.node: tuple(x is not None for x in backward.grad_inputs[s.node])
             for s in segment.steps}
    kernel = loop_kernel(segment, lowered.plan.types, "float32", needs, "long long",
                         "scipy_cblas_sgemm64_")
    assert_golden(os.path.join(GOLDEN, f"loop_{name}.c"), kernel.source, update_golden)
    # each function runs the whole batch: (gemm, T, B, slots), as the runtime calls it
    for way in ("forward", "backward"):
        assert (f"void loop_{way}(gemm_t gemm, const long long T, const long long B, "
                f"void* const* a) {{") in kernel.source


def test_truncated_reach_runs_the_interpreted_loop():
    host, native_ex = _recurrent_pair("elman")
    batch = _sequence_batch(host.plan)
    for ex in (host, native_ex):
        ex.reach = 2
        ex.forward(batch, True)
        ex.backward()
    assert not native_ex.compiled_loops.calls
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


def test_without_numpys_cblas_the_loops_run_interpreted(monkeypatch):
    from netdsl.runtime.native import loops as native_loops

    def no_blas(dtype):
        raise native.NativeUnavailable("NumPy's BLAS offers no CBLAS gemm to generated loops")

    monkeypatch.setattr(native_loops, "gemm", no_blas)
    host, native_ex = _recurrent_pair("elman")
    assert native_ex.compiled_loops is None
    batch = _sequence_batch(host.plan)
    for ex in (host, native_ex):
        ex.forward(batch, True)
        ex.backward()
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


def test_an_elman_loop_keeps_one_step_of_its_recurrent_product():
    """tanh(W x + U h[t-1])'s gradient follows from h, which the loop keeps anyway: the
    product U h[t-1] takes one step's room, not T steps'."""
    from netdsl.driver import check_file
    from netdsl.lower import lower
    from netdsl.lower.schedule import LoopSegment
    from netdsl.runtime.native.loops import compile_loop, default_needs

    lowered = lower(check_file(os.path.join(SPECS, "elman.net")), "native")
    [segment] = [s for s in lowered.schedule.segments if isinstance(s, LoopSegment)]
    kernel, _, _ = compile_loop(segment, lowered.plan.types, "float32",
                                default_needs(lowered, segment))
    product = next(s.node for s in segment.steps if s.op.name == "dense")
    assert kernel.rows(product, 100) == 1
    assert all(kernel.rows(node, 100) == 100 for node in segment.stored)


@pytest.mark.parametrize("name", ["lstm", "elman"])
def test_the_input_projections_gradient_is_the_recurrent_products(name):
    """x W + h[t-1] U: both terms get the add's gradient, held once, (T, B, width), as
    the recurrent product's; the projection outside the loop receives that array."""
    from netdsl.lower.schedule import LoopSegment
    from netdsl.runtime.native.loops import compile_loop, default_needs

    host, native_ex = _recurrent_pair(name)
    lowered = native_ex.lowered
    [segment] = [s for s in lowered.schedule.segments if isinstance(s, LoopSegment)]
    kernel, _, _ = compile_loop(segment, lowered.plan.types, "float64",
                                default_needs(lowered, segment))
    product = next(s.node for s in segment.steps if s.op.name == "dense")
    assert kernel.aliases == {kernel.seqs[0]: product}
    batch = _sequence_batch(host.plan)
    seen = {}
    deliver = native_ex.compiled_loops._deliver

    def spy(segment, kernel, seq_grads, *rest):
        seen.update(seq_grads)
        return deliver(segment, kernel, seq_grads, *rest)

    native_ex.compiled_loops._deliver = spy
    for ex in (host, native_ex):
        ex.forward(batch, True)
        ex.backward()
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)
    grad = seen[kernel.seqs[0]]
    assert grad.shape[0] == 6 and np.abs(grad).max() > 0   # (T, B, width), written


def _lstm_kernel(padded: bool = False):
    from netdsl.driver import check_file
    from netdsl.lower import lower
    from netdsl.lower.native_loop import loop_kernel
    from netdsl.lower.schedule import LoopSegment
    from netdsl.runtime.native.loops import default_needs

    lowered = lower(check_file(os.path.join(SPECS, "lstm.net")), "native")
    [segment] = [s for s in lowered.schedule.segments if isinstance(s, LoopSegment)]
    kernel = loop_kernel(segment, lowered.plan.types, "float32",
                         default_needs(lowered, segment), "long long", "gemm", padded)
    return segment, kernel


def _passes(source: str) -> tuple[int, int]:
    """Passes over a step's rows in (loop_forward, loop_backward)."""
    loop = "for (long long r = 0; r < B"
    forward, backward = source.split("void loop_backward")
    return forward.count(loop), backward.count(loop)


def test_an_lstm_step_is_one_pass_over_its_gates_each_way():
    """The gate add is the GEMM's (the step's projection copied in, beta = 1) and the
    five chains after the split are one loop forward and one backward, with no gradient
    to clear between steps."""
    segment, kernel = _lstm_kernel()
    product = next(s.node for s in segment.steps if s.op.name == "dense")
    [(gates, folded)] = kernel.folds.items()
    assert folded == product
    assert _passes(kernel.source) == (1, 1)
    forward = kernel.source.split("void loop_backward")[0]
    assert forward.count("memcpy(") == 1 and forward.count("gemm(") == 1
    assert ", 1, (((float*)a[1]) + (t)*B*256), 256);" in forward  # beta 1, into the gates
    assert "memset" not in kernel.source


def test_what_a_fused_lstm_pass_holds_in_registers_takes_no_room():
    segment, kernel = _lstm_kernel()
    product = next(s.node for s in segment.steps if s.op.name == "dense")
    [gates] = kernel.folds
    assert kernel.rows(product, 50) == 0 and kernel.rows(gates, 50, grad=True) == 0
    # the states and what backward reads keep every step; nothing else keeps more than one
    assert all(kernel.rows(n, 50) == 50 for n in segment.stored)
    assert kernel.rows(gates, 50) == 50
    assert {kernel.rows(n, 50) for n in kernel.storage} <= {0, 1, 50}
    assert len([n for n in kernel.storage if kernel.rows(n, 50, grad=True) == 0]) == 3 + 1


def test_an_lstm_backward_reads_the_gates_forward_activated():
    """Forward writes sigmoid(i), sigmoid(f) and sigmoid(o) over i, f and o (read by
    nothing else) and backward reads them there; tanh(g) and tanh(c) are read as the
    chains' outputs, which are kept anyway. Backward computes no tanh, and the loop keeps
    no more than before: per step the gates, tanh(g), c, tanh(c) and h."""
    segment, kernel = _lstm_kernel()
    blocks = [s.node for s in segment.steps if s.node in kernel.views]
    assert len(blocks) == 4 and set(kernel.activated) == set(blocks) - {"g"}
    forward, backward = kernel.source.split("void loop_backward")
    assert "tanhf(" not in backward and forward.count("tanhf(") == 1 + 5  # a declaration
    assert sum(kernel.rows(n, 50) * kernel.widths[n] for n in kernel.storage) == 50 * (
        4 * 64 + 4 * 64)


def test_a_padded_lstm_holds_its_states_between_passes():
    """A padded batch's states hold their values past a sequence's end after the chain
    that makes them: the chains keep a pass each; the add is still the GEMM's."""
    _, kernel = _lstm_kernel(padded=True)
    assert kernel.folds and _passes(kernel.source) == (5 + 2, 5 + 2)   # chains, h's and c's holds
    host, native_ex = _recurrent_pair("lstm")
    batch = _sequence_batch(host.plan, lengths=[6, 3, 1, 5])
    for ex in (host, native_ex):
        ex.forward(batch, True)
        ex.backward()
    assert native_ex.compiled_loops.calls == {"forward": 1, "backward": 1}
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


def test_the_forward_multiplies_by_a_transposed_copy_made_once_a_pass():
    """OpenBLAS runs the step's GEMM faster on (inputs, units) weights than transposing
    (units, inputs) ones: the runtime passes a copy, and drops it after forward."""
    segment, kernel = _lstm_kernel()
    product = next(s.node for s in segment.steps if s.op.name == "dense")
    assert kernel.transposed == ((product, "weight"),)
    assert "gemm(101, 111, 111, B, 256, 64, 1" in kernel.source     # no transposition
    host, native_ex = _recurrent_pair("lstm")
    batch = _sequence_batch(host.plan)
    native_ex.forward(batch, True)
    assert native_ex.compiled_loops.runs["concat1"].transposed is None


@pytest.mark.parametrize("spec, expected", [("mlp.net", "host"), ("lenet5.net", "native"),
                                            ("elman.net", "native")])
def test_a_run_takes_the_native_target_for_convolutions_and_recurrences(spec, expected):
    """Unasked, a network with a convolution or a recurrence is lowered for the native
    target (where a compiler works, as here); one of dense layers alone stays on the host."""
    from netdsl.app.session import prepare  # the CLI's session, above the runtime
    from netdsl.driver import check_file

    network = check_file(os.path.join(SPECS, spec))
    assert prepare(network).lowered.target.name == expected
    assert prepare(network, native=False).lowered.target.name == "host"


def test_the_gradient_last_hands_back_is_added_into_as_it_is():
    """`last`'s backward makes a new (T, B, width) array: the loop's backward adds into
    it instead of copying it first."""
    host, native_ex = _recurrent_pair("lstm_classifier")
    loops, taken = native_ex.compiled_loops, []
    value_grad = loops._value_grad

    def spy(kernel, node, n, outside, *rest):
        grad = value_grad(kernel, node, n, outside, *rest)
        if node in outside:
            taken.append(grad is outside[node])
        return grad

    loops._value_grad = spy
    batch = _sequence_batch(host.plan)
    for ex in (host, native_ex):
        ex.forward(batch, True)
        ex.backward()
    assert taken == [True]
    np.testing.assert_allclose(native_ex.flat_grads, host.flat_grads, rtol=1e-10, atol=1e-13)


# ---- the slabs handed to the C pool

GOLDEN_SLABS = os.path.join(ROOT, "tests", "golden_native_slabs")

# a convolution's backward with its chain's mask first, an update with three scalars
SLAB_SIGNATURES = {"conv_backward_masked": ("p" * 8 + "l" * 16, "pppp" + "l" * 5),
                   "update_adam": ("ppppdddl",)}


@pytest.mark.parametrize("label", sorted(SLAB_SIGNATURES))
def test_the_slabs_entry_matches_golden(label, update_golden):
    from netdsl.lower.native_slabs import slabs_source
    assert_golden(os.path.join(GOLDEN_SLABS, f"slabs_{label}.c"),
                  slabs_source(SLAB_SIGNATURES[label]), update_golden)


def test_the_slabs_entry_takes_only_known_kinds():
    from netdsl.lower.native_slabs import slabs_source
    for wrong in ((), ("",), ("px",)):
        with pytest.raises(ValueError):
            slabs_source(wrong)


def _split_chain(monkeypatch, threads, c_slabs):
    """update_adam (three scalars, in place) and add_relu_backward over 1001 x 7 elements,
    split."""
    from netdsl.runtime import host
    from netdsl.runtime.native import slabs
    monkeypatch.setattr(host, "host_threads", lambda: threads)
    monkeypatch.setattr(slabs, "C_SLABS", c_slabs)
    monkeypatch.setattr(native, "SPLIT_BYTES", 0)
    monkeypatch.setattr(host, "MIN_SPLIT_BYTES", 0)
    rng = np.random.default_rng(7)
    results = []
    for label in ("update_adam", "add_relu_backward_11"):
        program = PATTERNS[label]
        native.prepare([program], "float32")
        arrays = _arrays(program, (1001, 7), "float32", rng)
        scalars = {name: 0.37 / (i + 1) for i, name in enumerate(program.scalars)}
        want = evaluate_program(program, {k: v.copy() for k, v in arrays.items()}, scalars,
                                np, "float32")
        got = run_program(np, program, arrays, scalars, "float32")
        for name in program.outputs:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
        results += [got[name].copy() for name in sorted(program.outputs)]
    return results


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_chain_on_the_pool_gives_the_bits_of_the_python_threads(cache, monkeypatch, threads):
    from netdsl.runtime.native import slabs
    pooled = []
    real_pool = slabs._on_pool
    monkeypatch.setattr(slabs, "_on_pool",
                        lambda plan, parts: pooled.append(len(parts)) or real_pool(plan, parts))
    on_pool = _split_chain(monkeypatch, threads, True)
    assert pooled == ([2 * threads] * 2 if threads > 1 else [])
    on_threads = _split_chain(monkeypatch, threads, False)
    assert len(pooled) == (2 if threads > 1 else 0)
    for got, want in zip(on_pool, on_threads, strict=True):
        np.testing.assert_array_equal(got, want)


def test_without_the_pool_the_python_threads_run_the_slabs(cache, monkeypatch):
    from netdsl.runtime.native import pool as native_pool
    from netdsl.runtime.native.toolchain import NativeUnavailable

    def no_pool():
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")

    monkeypatch.setattr(native_pool, "pool_address", no_pool)
    from netdsl.runtime.native import slabs
    monkeypatch.setattr(slabs, "pool_address", no_pool)
    on_threads = _split_chain(monkeypatch, 2, True)
    monkeypatch.undo()
    for got, want in zip(on_threads, _split_chain(monkeypatch, 2, False), strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_environment_switches_the_slabs_to_python_threads():
    import subprocess
    import sys
    code = "from netdsl.runtime.native import slabs; print(slabs.C_SLABS)"
    said = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, **({"NETDSL_C_SLABS": value} if value else {})},
                           check=True).stdout.strip() for value in ("0", "1", None)]
    assert said == ["False", "True", "False"]   # the Python threads by default


def test_a_forked_child_splits_a_chain_over_a_pool_of_its_own(cache, monkeypatch):
    import signal
    from netdsl.runtime.native.pool import pool_workers
    want = _split_chain(monkeypatch, 2, True)
    assert pool_workers() >= 1
    pid = os.fork()
    if pid == 0:   # the child: no workers until its first split, then the same results
        code = 1
        try:
            signal.alarm(60)   # a hung pool fails the test rather than the run
            fresh = pool_workers() == 0
            again = _split_chain(monkeypatch, 2, True)
            same = all(np.array_equal(a, b) for a, b in zip(again, want))
            code = 0 if fresh and same and pool_workers() >= 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
