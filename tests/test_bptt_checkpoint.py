"""bptt(checkpoint=k): BPTT that keeps a recurrence's states every k steps.

- the setting: parsed with truncate or alone; k < 1, a fraction, or a spec without a
  recurrence refused at the keyword, one line, exit 1;
- the gradients equal full BPTT's (float64, to rounding) on the project's recurrent specs
  for k = 1, a divisor of T, a non-divisor, T and more, on the NumPy loop and the
  compiled one, padded batches (sequences ending before a span starts) included, with
  truncation's reach and carried states, with dropout inside the recurrence;
- what a step keeps shrinks: the planned bytes at T = 200 and the bytes a forward
  leaves for its backward, measured;
- the trainer and `netc compile` use it.
(tests/test_recurrent_torch.py checks checkpointed BPTT against PyTorch.)
"""
from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

from conftest import SPECS, cli_main
from netdsl.driver import CheckFailed, check_file, check_text
from netdsl.lower import lower
from netdsl.lower.loop_memory import loop_memory
from netdsl.lower.schedule import LoopSegment
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.settings import resolve_settings

T = 6


def _executor(lowered, params, every=None):
    ex = Executor(lowered, params, dtype="float64")
    ex.checkpoint = every
    return ex


def _batch(plan, steps=T, lengths=None, size=4, seed=0):
    rng = np.random.default_rng(seed)
    batch = {}
    for key, t in plan.inputs.items():
        shape = (size, steps, *t.dims) if t.seq else (size, *t.dims)
        batch[key] = (rng.integers(0, t.classes, shape) if t.classes is not None
                      else rng.standard_normal(shape))
        if lengths is not None and t.seq:
            batch[f"{key}.lengths"] = np.array(lengths)
    return batch


def _step(ex, batch, **kwargs) -> dict:
    out = ex.forward(batch, True, **kwargs)
    ex.backward()
    return out


@pytest.fixture(scope="module")
def lowered_specs():
    """(host, native) lowerings of the recurrent specs, made once."""
    made = {}
    for name in ("lstm", "gru", "elman", "lstm_classifier"):
        net = check_file(os.path.join(SPECS, f"{name}.net"))
        made[name] = (lower(net), lower(net, "native"))
    return made


# ---- the setting

def _spec(train: str, body: str = "logits = x -> elman(4) -> dense(3)",
          target: str = "seq class(3)") -> str:
    return (f"import rnn\ninput x : seq[4]\ntarget y : {target}\n{body}\n"
            f"loss cross_entropy(logits, y)\ntrain {train}\n")


def test_the_setting_is_read_alone_and_with_truncation():
    net = check_text(_spec("sgd(lr=0.1), bptt(checkpoint=8)"))
    settings = resolve_settings(net.graph.graph["train"], {}, net.program.train_spans)
    assert (settings.checkpoint, settings.bptt) == (8, None)
    net = check_text(_spec("sgd(lr=0.1), bptt(truncate=20, checkpoint=5)"))
    settings = resolve_settings(net.graph.graph["train"], {}, net.program.train_spans)
    assert (settings.checkpoint, settings.bptt) == (5, (20, 20))


@pytest.mark.parametrize("train, message", [
    ("bptt(checkpoint=0)", "bptt.checkpoint' must be a whole number of steps, at least 1, got 0"),
    ("bptt(checkpoint=2.5)", "must be a whole number of steps, at least 1, got 2.5"),
    ("bptt(truncate=4, checkpoint=-1)", "at least 1, got -1"),
])
def test_a_bad_checkpoint_is_refused_at_its_keyword(train, message):
    clause = f"sgd(lr=0.1), {train}"
    with pytest.raises(CheckFailed) as info:
        check_text(_spec(clause))
    (error,) = info.value.errors
    assert message in error.message
    assert (error.span.line, error.span.col) == (6, len("train ") + clause.index(
        "checkpoint") + 1)


def test_checkpointing_a_spec_without_a_recurrence_is_refused(tmp_path):
    path = tmp_path / "mlp.net"
    path.write_text("input x : [4]\ntarget y : class(3)\nlogits = x -> dense(3)\n"
                    "loss cross_entropy(logits, y)\ntrain sgd(lr=0.1), bptt(checkpoint=4)\n")
    result = cli_main("check", str(path))
    assert result.returncode == 1
    assert "mlp.net:5:25: error: bptt(checkpoint=...) keeps a recurrence's states, but the " \
           "spec has no state" in result.stderr
    assert "Traceback" not in result.stderr


# ---- the gradients

@pytest.mark.parametrize("target", ["host", "native"])
@pytest.mark.parametrize("name", ["lstm", "gru", "elman", "lstm_classifier"])
def test_checkpointed_gradients_equal_full_bptts(lowered_specs, name, target):
    host, native = lowered_specs[name]
    lowered = native if target == "native" else host
    params = initial_params(host.built, "torch", seed=0)
    batch = _batch(host.plan)
    full = _executor(host, params)
    expected = _step(full, batch)
    for every in (1, 2, 4, T, T + 3):   # one step, a divisor, a non-divisor, T, beyond
        ex = _executor(lowered, params, every)
        out = ex.forward(batch, True)
        if target == "native":
            (run,) = ex.compiled_loops.runs.values()
            assert (run.spans is not None) == (every < T)
        else:
            assert bool(ex.recompute) == (every < T)
        ex.backward()
        for key, value in expected.items():   # the compiled loop rounds its own way
            assert float(out[key]) == pytest.approx(float(value), rel=1e-13, abs=0), key
        np.testing.assert_allclose(ex.flat_grads, full.flat_grads, rtol=1e-12, atol=1e-15,
                                   err_msg=f"checkpoint={every}")
        if target == "native":
            assert ex.compiled_loops.calls == {"forward": 1, "backward": 1}
            assert bool(ex.compiled_loops.runs) is False


@pytest.mark.parametrize("target", ["host", "native"])
@pytest.mark.parametrize("name", ["lstm_classifier", "gru"])
def test_a_padded_batch_checkpointed_equals_full_bptt(lowered_specs, name, target):
    """Sequences that end inside a span and before one starts hold their states across
    the spans' edges, forward and back."""
    host, native = lowered_specs[name]
    params = initial_params(host.built, "torch", seed=0)
    batch = _batch(host.plan, steps=7, lengths=[7, 3, 1, 5])
    full = _executor(host, params)
    _step(full, batch)
    for every in (1, 2, 3):
        ex = _executor(native if target == "native" else host, params, every)
        _step(ex, batch)
        np.testing.assert_allclose(ex.flat_grads, full.flat_grads, rtol=1e-12, atol=1e-15,
                                   err_msg=f"checkpoint={every}")


@pytest.mark.parametrize("target", ["host", "native"])
def test_truncated_chunks_checkpointed_equal_them_whole(lowered_specs, target):
    """With truncation: the reach k2 < k1, a later chunk's carried states."""
    host, native = lowered_specs["lstm"]
    params = initial_params(host.built, "torch", seed=0)
    first, second = (_batch(host.plan, steps=5, seed=s) for s in (0, 1))
    results = []
    for lowered, every in ((host, None), (native if target == "native" else host, 2)):
        ex = _executor(lowered, params, every)
        ex.reach = 3
        _step(ex, first)
        _step(ex, second, carry=ex.carry)
        results.append((ex.flat_grads.copy(), {k: v.copy() for k, v in ex.carry.items()}))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12, atol=1e-15)
    for key, value in results[0][1].items():
        np.testing.assert_allclose(results[1][1][key], value, rtol=1e-12, atol=1e-15)


def test_dropout_inside_the_recurrence_draws_the_same_masks_again():
    body = ("state h : [5]\nh = tanh(dense(concat(x, h[t-1] -> dropout(0.4)), 5))\n"
            "logits = h -> dense(3)")
    lowered = lower(check_text(_spec("sgd(lr=0.1), bptt(checkpoint=2)", body)))
    params = initial_params(lowered.built, "torch", seed=0)
    batch = _batch(lowered.plan)
    grads = []
    for every in (None, 2):
        ex = Executor(lowered, params, seed=3, dtype="float64")
        ex.checkpoint = every
        _step(ex, batch)
        grads.append(ex.flat_grads.copy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12, atol=1e-15)


def test_on_the_gpu_a_draw_inside_a_checkpointed_recurrence_is_refused_at_its_op():
    """A GPU's random stream cannot be rewound to a span's start: the recomputation would
    draw other masks, so the pass stops, naming the op."""
    from types import SimpleNamespace

    from netdsl.errors import SpecError
    from netdsl.runtime import loops

    body = ("state h : [5]\nh = tanh(dense(concat(x, h[t-1] -> dropout(0.4)), 5))\n"
            "logits = h -> dense(3)")
    lowered = lower(check_text(_spec("sgd(lr=0.1), bptt(checkpoint=2)", body)))
    ex = Executor(lowered, initial_params(lowered.built, "torch", seed=0))
    (segment,) = [s for s in lowered.schedule.segments if isinstance(s, LoopSegment)]
    loops._check_replayable(ex, segment)   # NumPy's generator is restored: allowed
    ex.xp = SimpleNamespace()              # any array module but NumPy's is a device's
    with pytest.raises(SpecError, match="'dropout' inside it would draw other random") as info:
        loops._check_replayable(ex, segment)
    assert info.value.span.line == 5


# ---- memory

@pytest.mark.parametrize("target", ["host", "native"])
def test_the_planned_stored_bytes_shrink(lowered_specs, target):
    host, native = lowered_specs["lstm"]
    lowered = native if target == "native" else host
    (segment,) = [s for s in lowered.schedule.segments if isinstance(s, LoopSegment)]
    kept = None
    if target == "native":
        from netdsl.runtime.native.loops import compile_loop, default_needs
        kept = compile_loop(segment, lowered.plan.types, "float32",
                            default_needs(lowered, segment))[0].kept
    memory = loop_memory(segment, lowered.plan.types, kept)
    # lstm.net: h (64 numbers) is read after the loop, c and h are the states
    assert (memory.read_after, memory.checkpoint) == (64, 128)
    assert memory.kept >= 6 * 64
    full, spans = memory.stored(200, 32), memory.stored(200, 32, every=14)
    assert full == memory.kept * 200 * 32 * 4
    assert spans == (64 * 200 + 128 * 15 + memory.kept * 14) * 32 * 4
    assert spans < full / 3


@pytest.mark.parametrize("target", ["host", "native"])
def test_a_forward_leaves_far_less_for_backward(lowered_specs, target):
    """Measured: the bytes alive between forward and backward (tracemalloc follows
    NumPy's allocations), T = 200 and k = 14, float32."""
    host, native = lowered_specs["lstm"]
    lowered = native if target == "native" else host
    params = initial_params(host.built, "torch", seed=0)
    batch = _batch(host.plan, steps=200)
    held, peak = {}, {}
    for every in (None, 14):
        ex = Executor(lowered, params, dtype="float32")
        ex.checkpoint = every
        _step(ex, batch)   # the native loop compiles, buffers settle
        tracemalloc.start()
        try:
            ex.forward(batch, True)
            held[every] = tracemalloc.get_traced_memory()[0]
            ex.backward()
            peak[every] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert held[14] < held[None] / 4, held
    assert peak[14] < peak[None] / 2, peak


# ---- the trainer and netc compile

def test_the_trainer_checkpoints_and_takes_the_same_steps():
    from netdsl.runtime.data import load_data
    from netdsl.runtime.train import Trainer

    finals = []
    for train in ("sgd(lr=0.1), batch=8, epochs=1, seed=3",
                  "sgd(lr=0.1), batch=8, epochs=1, seed=3, bptt(checkpoint=3)"):
        net = check_text(_spec(train))
        lowered = lower(net)
        trainer = Trainer(lowered, resolve_settings(net.graph.graph["train"]), dtype="float64")
        data = load_data(net.graph, seed=0, examples=24, steps=7)
        trainer.fit(data, None)
        finals.append(trainer.executor.flat_params.copy())
    assert trainer.executor.checkpoint == 3
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-11, atol=1e-13)


def test_netc_compile_reports_what_bptt_keeps_with_and_without_checkpoints():
    result = cli_main("compile", os.path.join(SPECS, "lstm.net"), "--steps", "200",
                      "--batch", "32")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("recurrence of c[t-1], h[t-1]: BPTT over 200 steps at batch 32 keeps ")
    assert "with bptt(checkpoint=14), say: " in line
