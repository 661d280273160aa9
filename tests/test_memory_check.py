"""Memory checked before allocating: the planned peak of a run, in the dtype runs use,
against the memory the process may take; a refusal gives the estimate and the largest
batch that fits, before a single parameter is made."""
import io
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from contextlib import redirect_stderr

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from conftest import ROOT
from netdsl import cli
from netdsl.app import memory_check
from netdsl.app.memory_check import check_memory, fitting_batch, forward_estimate, training_estimate
from netdsl.app.session import prepare
from netdsl.driver import check_file, check_text
from netdsl.errors import SpecError
from netdsl.lower import conv_chain, lower
from netdsl.ops import numeric
from netdsl.ops.numeric import draw_float32
from netdsl.ops.windows import Windows
from netdsl.report import format_training_memory, human
from netdsl.runtime.data import Dataset
from netdsl.runtime import train
from netdsl.runtime.init import initial_params
from netdsl.runtime.native import toolchain
from netdsl.tui.training import PostingReporter, train_network

WIDE = """\
network wide
input  x : [256]
target y : class(10)
logits = x -> dense(1024) -> relu -> dense(1024) -> relu -> dense(10)
loss cross_entropy(logits, y)
train OPTIMIZER, batch=BATCH, epochs=1
"""

# 600 million parameters: 2.2 GiB of float32 to draw, more than the limit below allows
BIG = """\
network big
input  x : [64]
target y : class(10)
logits = x -> dense(8000000) -> relu -> dense(10)
loss cross_entropy(logits, y)
"""


def wide(optimizer="sgd(lr=0.01)", batch=64):
    text = WIDE.replace("OPTIMIZER", optimizer).replace("BATCH", str(batch))
    return prepare(check_text(text, "wide.net"), {"steps": 2}, native=False)


def training_peak(session, data) -> int:
    """The bytes tracemalloc sees allocated at the peak of making a trainer and fitting
    `data` (NumPy reports its arrays to it)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        session.trainer(None).fit(data, None)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("optimizer,batch", [
    ("sgd(lr=0.01)", 1024),
    ("adam(lr=0.001)", 64),
    ("sgd(lr=0.01, momentum=0.9, nesterov=true)", 256),
])
def test_the_estimate_is_what_a_run_takes(optimizer, batch):
    """Measured by tracemalloc over making a trainer and two steps (NumPy reports its
    arrays to it): the planned peak is what was allocated, give or take the batches' copies
    of the data (a few percent) and the first-fit sharing of buffers (over by up to 20%)."""
    session = wide(optimizer, batch)
    estimate = training_estimate(session.lowered, session.settings)
    rng = np.random.default_rng(0)
    data = Dataset({"x": rng.standard_normal((2 * batch, 256)).astype(np.float32),
                    "y": rng.integers(0, 10, 2 * batch)}, "test data")
    peak = training_peak(session, data)
    assert 0.97 * peak <= estimate.peak <= 1.2 * peak, (peak, estimate)


def test_the_plan_holds_a_chain_in_one_buffer_as_the_executor_does():
    """A host chain's follower writes over its predecessor's output and relu's backward
    writes its input's gradient over its output's: the plan gives each pair one buffer,
    and after a step no context holds the array its follower wrote over."""
    session = wide()
    plan, memory = session.lowered.plan, session.lowered.memory.at(4096)
    followers = [step for step in plan.steps if step.in_place]
    assert [step.op.name for step in followers] == ["relu", "relu"]
    names = {b.name for b in memory.buffers}
    assert memory.lodged == {}  # at this batch no value fits in the gradient vector
    for step in followers:
        assert memory.assignment[step.node] == memory.assignment[step.inputs[0]]
        assert step.node not in names and f"d{step.node}" in names
        assert f"d{step.inputs[0]}" not in names  # relu's dx is its dy's buffer
    trainer = session.trainer(None)
    rng = np.random.default_rng(0)
    trainer.fit(Dataset({"x": rng.standard_normal((128, 256)).astype(np.float32),
                         "y": rng.integers(0, 10, 128)}, "test data"), None)
    assert trainer.executor.ctxs and all(ctx.out is None
                                         for ctx in trainer.executor.ctxs.values())


def test_a_value_lives_in_the_gradient_vector_until_backward_writes_there(monkeypatch):
    """dense2's output (with relu2 over it) is read last by relu2's backward, dense1's by
    relu1's, and each layer's gradients are written after that: at batch 256 (a value as
    large as dense1's weight) each lives in its layer's part of the gradient vector, the
    step allocates nothing for them, and the gradients are what they are when they have
    arrays of their own, bit for bit."""
    session = wide(batch=256)
    memory = session.lowered.memory.at(256)
    assert memory.lodged == {"dense1": 0, "dense2": 256 * 1024}
    assert "dense2" not in memory.assignment and "relu1" not in memory.assignment
    assert memory.lodge(258, _spans(session)) \
        == {"dense2": 0}  # dense1 fits its layer's part (and bias) up to batch 257
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((256, 256)).astype(np.float32),
             "y": rng.integers(0, 10, 256)}
    runs = []
    for lodging in (True, False):
        if not lodging:
            monkeypatch.setattr(type(session.lowered.memory), "lodge", lambda *a: {})
        ex = session.trainer(None).executor
        assert ex.lodge_values
        out = ex.forward(batch, True, keep={"logits"})
        for relu in ("relu1", "relu2"):  # dense's value, relu written over it
            assert np.shares_memory(ex.ctxs[relu].saved["y"], ex.flat_grads) == lodging
        assert not np.shares_memory(out["logits"], ex.flat_grads)  # returned: never there
        logits = out["logits"].copy()
        ex.backward()
        assert np.array_equal(out["logits"], logits)
        runs.append((float(out["loss"]), ex.flat_grads.copy()))
    (loss, grads), (plain_loss, plain_grads) = runs
    assert loss == plain_loss and np.array_equal(grads, plain_grads)
    assert np.abs(grads).sum() > 0


def test_a_native_chain_writes_its_gradient_over_the_one_it_was_given(monkeypatch):
    """relu as a fused chain of the native target (kept apart from the dense layer before
    it: lower.conv_chain.GEMM_CHAINS off): its input's gradient is written over its
    output's, which dense's backward made, as the plan holds them; the gradients are the
    host target's."""
    from netdsl.runtime.execute import Executor
    monkeypatch.setattr(conv_chain, "GEMM_CHAINS", False)
    text = WIDE.replace("OPTIMIZER", "sgd(lr=0.1)").replace("BATCH", "16")
    graph = check_text(text, "w.net").graph
    rng = np.random.default_rng(1)
    batch = {"x": rng.standard_normal((16, 256)).astype(np.float32),
             "y": rng.integers(0, 10, 16)}
    grads = {}
    for target in ("native", "host"):
        lowered = lower(graph, target)
        ex = Executor(lowered, initial_params(lowered.built, "he", 0))
        if target == "native":
            names = {b.name for b in lowered.memory.buffers}
            assert {"drelu1", "drelu2"} <= names and not {"ddense1", "ddense2"} & names
            fused = type(lowered.plan.step_of("relu2").op)
            seen = []
            backward = fused.backward

            def spy(self, ctx, gy):
                (dx,), own = backward(self, ctx, gy)
                seen.append(dx is gy and ctx.gy_owned)
                return (dx,), own
            fused.backward = spy
            try:
                ex.forward(batch, True)
                ex.backward()
            finally:
                fused.backward = backward
            assert seen == [True, True]
        else:
            ex.forward(batch, True)
            ex.backward()
        grads[target] = ex.flat_grads.copy()
    np.testing.assert_allclose(grads["native"], grads["host"], rtol=1e-4, atol=1e-6)


def _spans(session) -> dict:
    start, spans = 0, {}
    for key, param in session.lowered.plan.params.items():
        spans[key] = (start, start + param.size)
        start += param.size
    return spans


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_drawing_in_chunks_gives_the_numbers_of_one_draw(monkeypatch, scale):
    monkeypatch.setattr(numeric, "DRAW_CHUNK", 7)
    shape = (5, 9)
    whole = (np.random.default_rng(4).standard_normal(shape) * scale).astype(np.float32)
    rng = np.random.default_rng(4)
    chunked = draw_float32(lambda n: rng.standard_normal(n) * scale, shape)
    assert chunked.dtype == np.float32 and np.array_equal(chunked, whole)
    whole = np.random.default_rng(5).uniform(-scale, scale, shape).astype(np.float32)
    rng = np.random.default_rng(5)
    assert np.array_equal(draw_float32(lambda n: rng.uniform(-scale, scale, n), shape), whole)


def test_initialisation_holds_no_float64_copy():
    """One 16 MiB float32 weight: drawing it once in float64 alone would take 32 MiB more."""
    text = WIDE.replace("dense(1024) -> relu -> dense(1024)", "dense(16384)") \
        .replace("OPTIMIZER", "sgd(lr=0.1)").replace("BATCH", "1")
    plan = lower(check_text(text, "w.net").graph).built
    for scheme in ("auto", "xavier", "torch"):
        tracemalloc.start()
        try:
            params = initial_params(plan, scheme, 0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        made = sum(p.nbytes for p in params.values())
        assert all(p.dtype == np.float32 for p in params.values())
        assert peak < 1.4 * made, (scheme, peak / made)


def test_the_largest_batch_that_fits():
    estimate = training_estimate(wide().lowered, wide().settings)
    room = estimate.fixed + 10 * estimate.per_example + estimate.per_example // 2
    with pytest.raises(SpecError) as refused:
        check_memory(estimate, room=room)
    assert "largest batch that fits is 10: pass --batch 10" in refused.value.hint
    assert "--force" in refused.value.hint
    check_memory(estimate, force=True, room=room)
    # evaluation and prediction run at the largest batch that fits instead
    forward = forward_estimate(wide().lowered, 256)
    assert fitting_batch(forward, room=forward.fixed + 3 * forward.per_example) == 3
    assert fitting_batch(forward, room=forward.peak) == 256
    with pytest.raises(SpecError) as refused:
        fitting_batch(forward, room=forward.fixed)
    assert "even one example does not fit" in refused.value.hint


def test_netc_run_refuses_under_a_small_limit_and_force_overrides(tmp_path, monkeypatch):
    spec = tmp_path / "wide.net"
    spec.write_text(WIDE.replace("OPTIMIZER", "sgd(lr=0.01)").replace("BATCH", "32"))
    estimate = training_estimate(wide(batch=32).lowered, wide(batch=32).settings)
    room = estimate.fixed + 20 * estimate.per_example
    monkeypatch.setattr(memory_check, "available_bytes", lambda: room)
    args = ["run", str(spec), "--steps", "1", "--quiet", "--checkpoint", str(tmp_path / "run")]
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert cli.main(args) == 1
    assert "not enough memory" in stderr.getvalue() and "pass --batch 20" in stderr.getvalue()
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
    assert cli.main(args + ["--batch", "20"]) == 0
    assert cli.main(args + ["--force"]) == 0


def test_a_huge_layer_is_refused_at_once_without_allocating(tmp_path):
    """Under a 3 GiB address-space limit, dense(8000000) (planned 9.6 GiB) is refused in
    seconds; had it allocated, NumPy would have failed with a traceback."""
    spec = tmp_path / "big.net"
    spec.write_text(BIG)
    limit = 3 << 30

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "netdsl.cli", "run", str(spec), "--checkpoint",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, preexec_fn=limited)
    assert time.monotonic() - started < 30
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not enough memory" in done.stderr and "GiB" in done.stderr
    assert "make the network smaller" in done.stderr


LSTM = """\
network long
import rnn
input  x : seq[16]
target y : seq class(16)
logits = x -> lstm(64) -> dense(16)
loss cross_entropy(logits, y)
train sgd(lr=0.01), batch=BATCH, epochs=1
"""


def long_lstm(batch=32, clause=""):
    text = LSTM.replace("BATCH", str(batch)).replace("epochs=1", "epochs=1" + clause)
    return prepare(check_text(text, "long.net"), {"steps": 2}, native=False)


def test_a_recurrent_estimate_is_what_bptt_over_the_sequence_takes():
    """Measured as the feed-forward estimate is: a trainer and two steps, at 50 steps.
    The estimate counts what the lowering plans (what BPTT keeps, the sequence values
    outside the loop, their gradients): the NumPy loop's bookkeeping is on top."""
    session, steps = long_lstm(), 50
    estimate = training_estimate(session.lowered, session.settings, steps)
    assert estimate.what == "training step over 50 time steps"
    rng = np.random.default_rng(0)
    data = Dataset({"x": rng.standard_normal((64, steps, 16)).astype(np.float32),
                    "y": rng.integers(0, 16, (64, steps))}, "test data")
    peak = training_peak(session, data)
    assert 0.8 * peak <= estimate.peak <= 1.2 * peak, (peak, estimate)
    # twice the steps, twice the activations; truncated BPTT plans the chunk it runs
    assert training_estimate(session.lowered, session.settings, 2 * steps).per_example \
        == 2 * estimate.per_example
    chunked = long_lstm(clause=", bptt(truncate=10)")
    assert training_estimate(chunked.lowered, chunked.settings, steps).per_example \
        == training_estimate(session.lowered, session.settings, 10).per_example
    # checkpointing keeps less
    spans = long_lstm(clause=", bptt(checkpoint=7)")
    assert training_estimate(spans.lowered, spans.settings, steps).per_example \
        < 0.7 * estimate.per_example


def test_netc_run_refuses_an_lstm_on_long_sequences_before_allocating(tmp_path, monkeypatch):
    spec = tmp_path / "long.net"
    spec.write_text(LSTM.replace("BATCH", "64"))
    estimate = training_estimate(long_lstm(64).lowered, long_lstm(64).settings, 400)
    monkeypatch.setattr(memory_check, "available_bytes",
                        lambda: estimate.fixed + 10 * estimate.per_example)
    monkeypatch.setattr(train.Trainer, "__init__",
                        lambda *a, **k: pytest.fail("parameters made before the check"))
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert cli.main(["run", str(spec), "--no-native", "--length", "400", "--examples",
                         "64", "--checkpoint", str(tmp_path / "run")]) == 1
    said = stderr.getvalue()
    assert said.startswith("error: not enough memory: the training step over 400 time steps "
                           "at batch 64 plans a peak of "), said
    assert "the largest batch that fits is 10: pass --batch 10, or pass --force" in said


def test_the_builder_runs_the_same_check_and_says_what_to_change(tmp_path, monkeypatch):
    """The builder's run (F5) is refused as `netc run` is, before a parameter is made,
    with advice that fits it: the train clause's batch, no --force."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train.Trainer, "__init__",
                        lambda *a, **k: pytest.fail("parameters made before the check"))
    for text, steps in ((WIDE.replace("OPTIMIZER", "sgd(lr=0.01)").replace("BATCH", "32"),
                         None), (LSTM.replace("BATCH", "64"), 20)):
        network = check_text(text, "n.net")
        session = prepare(network, {"epochs": 1})  # as the builder prepares it
        estimate = training_estimate(session.lowered, session.settings, steps)
        monkeypatch.setattr(memory_check, "available_bytes",
                            lambda: estimate.fixed + 3 * estimate.per_example)
        with pytest.raises(SpecError) as refused:
            train_network(network, PostingReporter(lambda event: None), 1, 64)
        assert refused.value.message.startswith(f"not enough memory: the {estimate.what} at")
        assert refused.value.hint == ("the largest batch that fits is 3: set batch=3 in the "
                                      "train clause")


def test_the_im2col_scratch_is_planned_and_what_a_convolution_holds():
    """netc compile's scratch: one chunk of about CHUNK_BYTES of im2col columns (and its
    GEMM's result), as conv_nd allocates it; tracemalloc sees NumPy's arrays."""
    from netdsl.ops.convolve import conv_nd  # the op's routine, measured alone
    from netdsl.ops.parallel import CHUNK_BYTES, chunk_examples
    text = ("network c\ninput x : [8, 32, 32]\ntarget y : class(4)\n"
            "z = x -> conv(16, 3, pad=1) -> relu -> global_avgpool -> dense(4)\n"
            "loss cross_entropy(z, y)\ntrain sgd(lr=0.1), batch=64\n")
    lowered = lower(check_text(text, "c.net").graph)
    step = next(s for s in lowered.plan.steps if s.op.name == "conv")
    sizing, held = step.op.scratch(*step.input_types)
    assert sizing == 8 * 9 * 4 * Windows.of(step.geometry, compact=True).size
    memory = lowered.memory.at(64)
    examples = chunk_examples(64, sizing)
    assert 1 < examples < 64 and examples * sizing <= CHUNK_BYTES
    assert memory.scratch_bytes == examples * held
    assert memory.peak == (memory.slot_bytes + memory.scratch_bytes + 2 * memory.param_bytes
                           + memory.optimizer_bytes)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 32, 32)).astype(np.float32)
    weight = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    with threadpool_limits(1):   # one slab: the whole budget is one chunk's
        tracemalloc.start()
        try:
            y = conv_nd(np, x, weight, None, step.geometry, 1)
            held_at_peak = tracemalloc.get_traced_memory()[1] - y.nbytes
        finally:
            tracemalloc.stop()
    # the padded copy of a chunk's input comes on top: within a fifth
    assert memory.scratch_bytes <= held_at_peak <= 1.2 * memory.scratch_bytes
    line = format_training_memory(check_text(text, "c.net"), 64)
    assert f"+ im2col scratch {human(memory.scratch_bytes, 'B')} (chunks of about" in line


def test_a_forward_estimate_over_a_sequence_is_what_evaluation_takes():
    """The activations of an evaluation at 50 and 200 steps, measured as the training
    estimate is (tracemalloc sees NumPy's arrays): the loop's bookkeeping is on top."""
    session = long_lstm(64)
    trainer = session.trainer(None)
    rng = np.random.default_rng(0)
    for steps in (50, 200):
        estimate = forward_estimate(session.lowered, 64, steps)
        assert estimate.what == f"forward pass over {steps} time steps"
        data = Dataset({"x": rng.standard_normal((64, steps, 16)).astype(np.float32),
                        "y": rng.integers(0, 16, (64, steps))}, "test data")
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            trainer.evaluate(data, 64)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        planned = estimate.batch * estimate.per_example
        assert 0.75 * peak <= planned <= 1.2 * peak, (steps, planned, peak)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_plan_a_recurrent_network_at_its_data_length(tmp_path, monkeypatch,
                                                                      command):
    """As `netc run` does: the activations over the data's sequences, not only the
    parameters. Where a smaller batch fits it runs at that batch; where not even one
    example fits it is refused with the estimate, exit code 1, before running."""
    spec, run = tmp_path / "long.net", str(tmp_path / "run")
    spec.write_text(LSTM.replace("BATCH", "8"))
    common = [str(spec), "--no-native", "--examples", "16", "--checkpoint", run]
    assert cli.main(["run", *common, "--steps", "1", "--length", "5", "--quiet"]) == 0
    estimate = forward_estimate(long_lstm(8).lowered, 256, 400)
    batches = []
    original = train.Trainer.evaluate
    monkeypatch.setattr(train.Trainer, "evaluate",
                        lambda self, data, batch=None: batches.append(batch)
                        or original(self, data, batch))
    monkeypatch.setattr(memory_check, "available_bytes",
                        lambda: estimate.fixed + 3 * estimate.per_example)
    args = [command, *common, "--length", "400"]
    assert cli.main(args) == 0
    if command == "eval":
        assert batches == [3]
    monkeypatch.setattr(memory_check, "available_bytes",
                        lambda: estimate.fixed + estimate.per_example // 2)
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert cli.main(args) == 1
    said = stderr.getvalue()
    assert said.startswith("error: not enough memory: the forward pass over 400 time steps "
                           "at batch "), said
    assert "even one example does not fit" in said and "shorter sequences" in said
    assert "Traceback" not in said
    assert cli.main(args + ["--force"]) == 0


CONV = """\
network c
input x : [8, 32, 32]
target y : class(4)
z = x -> conv(16, 3, pad=1) -> relu -> conv(16, 3, pad=1) -> relu -> global_avgpool -> dense(4)
loss cross_entropy(z, y)
train sgd(lr=0.1), batch=BATCH
"""


def test_the_native_target_plans_its_convolution_kernels_scratch():
    """Each convolution the compiled kernels may run is planned with the largest scratch
    of its candidates (lower.native_conv.largest_scratch) at the run's threads; the host
    target plans im2col's alone, as before."""
    from netdsl.lower.native_conv import largest_scratch
    graph = check_text(CONV.replace("BATCH", "16"), "c.net").graph
    host_plan, native_plan = lower(graph).memory, lower(graph, "native").memory
    assert host_plan.convolutions == () and host_plan.at(16, threads=2).scratch_bytes \
        == host_plan.at(16).im2col_bytes
    layers = native_plan.convolutions
    assert layers == ((8, 32, 32, 16, 3, 3, 32, 32, 1, 1, 1, 1, 1, 1),
                      (16, 32, 32, 16, 3, 3, 32, 32, 1, 1, 1, 1, 1, 1))
    for batch, threads in ((1, 1), (1, 2), (16, 2), (256, 2)):
        memory = native_plan.at(batch, threads=threads)
        assert memory.threads == threads
        assert memory.convolution_bytes == max(largest_scratch("float32", sizes, batch, threads)
                                               for sizes in layers)
        assert memory.scratch_bytes == max(memory.im2col_bytes, memory.convolution_bytes)
    # at batch 1 Winograd's chunks of tiles, on two threads, are more than im2col's columns
    assert native_plan.at(1, threads=2).convolution_bytes > native_plan.at(1).im2col_bytes


def test_compile_reports_the_convolution_scratch_on_the_native_target(tmp_path, monkeypatch,
                                                                      capsys):
    """`netc compile specs/resnet20.net --target native` counts the convolution scratch
    in the planned peak and says what it is; the host target's line is as before."""
    from netdsl.runtime.host import host_threads
    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path))
    spec = os.path.join(ROOT, "specs", "resnet20.net")
    net = check_file(spec)
    for target in ("host", "native"):
        assert cli.main(["compile", spec, "--target", target]) == 0
        said = capsys.readouterr().out
        line = next(line for line in said.splitlines() if "planned peak" in line)
        memory = lower(net.graph, target).memory.at(1, 1, host_threads())
        assert f"planned peak {human(memory.peak, 'B')} = " in line
        if target == "host":
            assert line.endswith(f"+ im2col scratch {human(memory.im2col_bytes, 'B')} (chunks "
                                 "of about 4.0 MiB of columns, one example's at least)")
            assert "convolution scratch" not in line
        else:
            threads = host_threads()
            assert line.endswith(f"+ convolution scratch {human(memory.scratch_bytes, 'B')} "
                                 f"(largest candidate kernel per layer, {threads} thread"
                                 + ("s)" if threads != 1 else ")"))
            assert "im2col" not in line
    # Winograd's chunk, no more tile rows than one image's: more than im2col's 659.4 KiB;
    # with its lean scratch (the chunk's slack within the budget, dx made after the weight
    # gradient with the flipped weight dropped once U is made) and the weight gradient
    # taken back in C 692.3 KiB, the lean scratch alone 744.2, neither 789.1
    from netdsl.lower import native_conv as conv_lowering
    for lean, in_c, figure in ((True, True, "692.3 KiB"), (True, False, "744.2 KiB"),
                               (False, False, "789.1 KiB")):
        monkeypatch.setattr(conv_lowering, "WINOGRAD_LEAN", lean)
        monkeypatch.setattr(conv_lowering, "WINOGRAD_BACK_IN_C", in_c)
        single = format_training_memory(net, 1, "native", 2)
        assert "(largest candidate kernel per layer, 2 threads)" in single
        assert f"{figure} (largest" in single


@pytest.fixture(scope="module")
def conv_cache(tmp_path_factory):
    """A cache folder of its own for the kernels below, built once for all of them: the
    first (kernel None) times the layers' choices in it, as a fresh folder makes it."""
    return str(tmp_path_factory.mktemp("conv_cache"))


@pytest.mark.skipif(toolchain.compiler() is None, reason="no C compiler")
@pytest.mark.parametrize("kernel", [None, "gemm", "direct", "winograd"])
def test_a_native_convolutional_estimate_is_what_a_run_takes(kernel, conv_cache, monkeypatch):
    """Measured as the feed-forward estimate is, on the native target: once the layers'
    choices are timed (the first step, which times them, holds one or two layer outputs
    more), the planned peak, with the convolutions' scratch, is what two steps take,
    whichever kernel runs."""
    from netdsl.runtime.host import host_threads
    from netdsl.runtime.native import conv as native_conv
    monkeypatch.setenv("NETDSL_CACHE", conv_cache)
    batch = 256
    session = prepare(check_text(CONV.replace("BATCH", str(batch)), "c.net"), {"steps": 2},
                      native=True)
    assert session.lowered.target.name == "native"
    estimate = training_estimate(session.lowered, session.settings)
    memory = session.lowered.memory.at(batch, threads=host_threads())
    assert estimate.fixed >= memory.scratch_bytes > 0
    rng = np.random.default_rng(0)
    data = Dataset({"x": rng.standard_normal((2 * batch, 8, 32, 32)).astype(np.float32),
                    "y": rng.integers(0, 4, 2 * batch)}, "test data")
    session.trainer(None).fit(data, None)   # the choices, timed once
    if kernel is not None:
        monkeypatch.setattr(native_conv, "choose", lambda *a, **k: (
            {"forward": kernel, "backward": kernel}, None))
    peak = training_peak(session, data)
    assert 0.97 * peak <= estimate.peak <= 1.2 * peak, (peak, estimate)
