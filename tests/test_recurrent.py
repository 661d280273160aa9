"""Recurrent networks: loops in the plan, BPTT against finite differences, and training."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from netdsl.driver import CheckFailed, check_file, check_text
from netdsl.errors import SpecError
from netdsl.lower import lower
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params

SPECS = os.path.join(os.path.dirname(__file__), "..", "specs")


def network(body: str, target: str = "seq class(3)", inputs: str = "input x : seq[4]") -> str:
    return f"import rnn\n{inputs}\ntarget y : {target}\n{body}\nloss cross_entropy(logits, y)\n"


def random_batch(plan, steps: int = 5, size: int = 3, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in plan.inputs.items():
        shape = (size,) + ((steps,) if t.seq else ()) + t.dims
        out[name] = (rng.integers(0, t.classes, shape) if t.classes is not None
                     else rng.standard_normal(shape))
    return out


def worst_gradient_error(lowered, steps: int = 5, per_param: int = 8) -> float:
    """The largest gap between BPTT's gradient and central differences, in units of the
    tolerance 1e-8 + 1e-6 |numeric| (so below 1 passes)."""
    rng = np.random.default_rng(0)
    plan = lowered.plan
    params = {k: v.astype(np.float64) + 0.3 * rng.standard_normal(v.shape)
              for k, v in initial_params(lowered.built, "auto", 0).items()}
    ex = Executor(lowered, params, dtype="float64")
    data = random_batch(plan, steps)
    loss = plan.losses["loss"]

    def value() -> float:
        return float(ex.forward(data, True)[loss])

    value()
    ex.backward()
    worst = 0.0
    for key in lowered.backward().params:
        p, g = ex.params[key], ex.grads[key].copy()
        for index in list(np.ndindex(p.shape))[:per_param]:
            old = p[index]
            p[index] = old + 1e-6
            up = value()
            p[index] = old - 1e-6
            down = value()
            p[index] = old
            numeric = (up - down) / 2e-6
            worst = max(worst, abs(numeric - g[index]) / (1e-8 + 1e-6 * abs(numeric)))
    return worst


@pytest.mark.parametrize("target", ["host", "native"])
@pytest.mark.parametrize("cell", ["jordan(5, 3)", "scrn(5, 4)", "gru(5)", "elman(5)", "lstm(5)",
                                  "gru_reset_after(5)", "bi_lstm(3) -> bi_gru(2)",
                                  "bi_elman(3) x 2"])
def test_stdlib_cells_agree_with_finite_differences(cell, target):
    lowered = lower(check_text(network(f"logits = x -> {cell} -> dense(3)")), target)
    assert worst_gradient_error(lowered) < 1


@pytest.mark.parametrize("target", ["host", "native"])
def test_learned_constant_and_two_step_states_agree_with_finite_differences(target):
    body = """state h : [5] = learned, c : [5] = 0.5
h = tanh(dense(x, 5) + dense(h[t-1], 5, bias=false) + dense(h[t-2], 5, bias=false) + c[t-1])
c = sigmoid(dense(h, 5))
logits = concat(h, c) -> dense(3)"""
    lowered = lower(check_text(network(body)), target)
    plan = lowered.plan
    assert any(s.delay == 2 for s in plan.states.values())
    assert "h[t-1].init" in lowered.backward().params
    assert worst_gradient_error(lowered, steps=6) < 1


def test_stacked_bidirectional_and_many_to_one_agree_with_finite_differences():
    body = """f = x -> elman(4)
b = x -> reverse -> gru(4) -> reverse
logits = concat(f, b) -> lstm(4) -> last -> dense(3)"""
    lowered = lower(check_text(network(body, target="class(3)")))
    plan = lowered.plan
    assert len(plan.loops) == 3
    assert worst_gradient_error(lowered) < 1


def test_a_per_sequence_value_read_at_every_step_agrees_with_finite_differences():
    body = """state h : [4]
summary = x -> last -> dense(4)
h = tanh(dense(x, 4) + dense(h[t-1], 4) + summary)
logits = h -> dense(3)"""
    lowered = lower(check_text(network(body)))
    assert worst_gradient_error(lowered) < 1


def test_input_projections_run_outside_the_loop():
    lowered = lower(check_file(os.path.join(SPECS, "elman.net")))
    plan = lowered.plan
    (loop,) = plan.loops
    members = [s.node for s in loop.steps]
    assert "dense1" not in members and "logits" not in members  # W x_t and the read-out
    assert members == ["dense2", "add1", "h"]


def test_a_whole_sequence_op_inside_a_recurrence_is_refused_with_its_location():
    body = """state h : [4]
h = reverse(tanh(dense(x, 4) + dense(h[t-1], 4)))
logits = h -> dense(3)"""
    with pytest.raises(CheckFailed) as info:
        check_text(network(body))
    (error,) = info.value.errors
    assert "whole sequence" in error.message and error.span.line == 5


def test_lowering_refuses_a_whole_sequence_op_inside_a_recurrence_it_is_given_unchecked():
    from netdsl.expand import expand
    from netdsl.graph import build_graph
    from netdsl.lower.plan import build_plan
    from netdsl.parse import parse
    from netdsl.shapes import typed_graph

    body = """state h : [4]
h = reverse(tanh(dense(x, 4) + dense(h[t-1], 4)))
logits = h -> dense(3)"""
    text = network(body).replace("import rnn", "# the cells of rnn are not used")
    graph, errors = typed_graph(build_graph(expand(parse(text))))
    assert not errors
    with pytest.raises(SpecError, match="whole sequence") as info:
        build_plan(graph)
    assert info.value.span.line == 5


def test_truncated_bptt_takes_one_optimiser_step_per_chunk():
    from netdsl.runtime.data import load_data
    from netdsl.settings import resolve_settings
    from netdsl.runtime.train import Trainer

    text = network("logits = x -> elman(8) -> dense(3)") + "train sgd(lr=0.1), bptt(truncate=4)\n"
    net = check_text(text)
    lowered = lower(net)
    trainer = Trainer(lowered, resolve_settings(net.graph.graph["train"], {"epochs": 1}))
    data = load_data(net.graph, seed=0, examples=64, steps=10)
    trainer.fit(data, None)
    assert trainer.truncation == (4, 4)
    # 58 training examples: two batches, each in three chunks of 4, 4 and 2 steps
    assert trainer.optimizers[0][1].state_dict()["step"] == 2 * 3
    assert all(np.isfinite(v) for v in trainer.position.losses[-1].values())


def test_truncated_bptt_refuses_a_whole_sequence_op_at_check():
    text = network("logits = x -> elman(4) -> last -> dense(3)", target="class(3)")
    with pytest.raises(CheckFailed) as info:
        check_text(text + "train adam(lr=1e-3), bptt(truncate=5)\n")
    (error,) = info.value.errors
    assert "whole sequence" in error.message and error.span.line == 4
    assert "remove bptt(...) from the train clause at <spec>:6:22" in error.hint


def test_checkpointing_alone_does_not_truncate_so_whole_sequence_ops_check():
    """bptt(checkpoint=k) keeps full BPTT: `last` after the recurrence is fine."""
    text = network("logits = x -> elman(4) -> last -> dense(3)", target="class(3)")
    check_text(text + "train adam(lr=1e-3), bptt(checkpoint=5)\n")


def test_the_trainer_checks_settings_given_apart_from_the_spec():
    """The Python API may give a trainer settings the train clause did not have: it
    makes netc check's own check of them (netdsl.recurrences.training_errors)."""
    from dataclasses import replace

    from netdsl.settings import resolve_settings
    from netdsl.runtime.train import Trainer

    net = check_text(network("logits = x -> elman(4) -> last -> dense(3)", target="class(3)"))
    settings = resolve_settings(net.graph.graph["train"], {})
    with pytest.raises(SpecError, match="truncated BPTT cuts sequences into chunks, but 'last' "
                                        "needs the whole sequence") as info:
        Trainer(lower(net), replace(settings, bptt=(5, 5)))
    assert info.value.span.line == 4
    with pytest.raises(SpecError, match="gan_k needs two losses .* but the spec has 1"):
        Trainer(lower(net), replace(settings, gan_k=2))
    Trainer(lower(net), replace(settings, checkpoint=5))  # full BPTT: nothing to refuse


def test_netc_run_trains_the_elman_spec_and_accuracy_rises(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "netdsl.cli", "run", os.path.join(SPECS, "elman.net"),
         "--epochs", "4", "--examples", "512", "--checkpoint", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    accuracies = [float(line.split("val_accuracy")[1].split("%")[0])
                  for line in result.stdout.splitlines() if "val_accuracy" in line]
    assert len(accuracies) == 4 and accuracies[-1] > accuracies[0]


def test_hoisting_takes_the_input_projection_out_of_the_lstm_loop():
    plan = lower(check_text(network("logits = x -> lstm(5) -> dense(3)"))).plan
    (loop,) = plan.loops
    inside = [s.op.name for s in loop.steps]
    assert "concat" not in inside and inside.count("dense") == 1  # only W_h h[t-1] per step
    hoisted = [s for s in plan.steps if s.slices and s not in loop.steps]
    assert [s.inputs for s in hoisted] == [("x",)]
    assert set(plan.params) == {"lstm1/z.weight", "lstm1/z.bias", "logits.weight", "logits.bias"}


def test_mean_over_time_agrees_with_finite_differences():
    body = "logits = x -> dense(5) -> tanh -> mean -> dense(3)"
    lowered = lower(check_text(network(body, target="class(3)")))
    assert worst_gradient_error(lowered) < 1


def test_the_parity_demo_learns_and_generalises_to_longer_strings(tmp_path):
    folder = str(tmp_path / "parity")
    netc = [sys.executable, "-m", "netdsl.cli"]
    spec = os.path.join(SPECS, "parity.net")
    trained = subprocess.run(netc + ["run", spec, "--epochs", "8", "--checkpoint", folder,
                                     "--quiet"], capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert "parity of the bits so far" in trained.stderr  # what the data is: a notice
    longer = subprocess.run(netc + ["eval", spec, "--checkpoint", folder, "--length", "60"],
                            capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stderr
    accuracy = float(longer.stdout.split("accuracy")[1].split("%")[0])
    assert accuracy > 95, longer.stdout


ATTENDING = """enc = x -> elman(5)
state s : [5]
context = attention(s[t-1], enc)
s = tanh(dense(concat(x, context), 5) + dense(s[t-1], 5))
read = additive_attention(s, enc, 7)
logits = concat(s, read) -> dense(3)"""


def test_attention_inside_and_outside_a_recurrence_agrees_with_finite_differences():
    lowered = lower(check_text(network(ATTENDING)))
    plan = lowered.plan
    assert len(plan.loops) == 2  # the encoder, and the decoder that attends over it
    assert worst_gradient_error(lowered, per_param=12) < 1


def test_a_decoder_may_run_for_another_number_of_steps_than_its_memory():
    body = """input target_in : seq[2]
enc = x -> elman(5)
state s : [5]
s = tanh(dense(concat(target_in, attention(s[t-1], enc)), 5))
logits = s -> dense(3)"""
    lowered = lower(check_text(network(body)))
    ex = Executor(lowered, initial_params(lowered.built, "auto", 0))
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((2, 7, 4)), "target_in": rng.standard_normal((2, 3, 2)),
             "y": rng.integers(0, 3, (2, 3))}
    out = ex.forward(batch, True, keep={"logits"})
    ex.backward()
    assert out["logits"].shape == (2, 3, 3)
    assert np.isfinite(ex.flat_grads).all() and ex.grads["elman1/dense1.weight"].any()


# ---- decoding


def test_greedy_decoding_picks_the_best_class_of_the_prefix_it_wrote():
    from netdsl.runtime.generate import generate

    lowered = lower(check_file(os.path.join(SPECS, "seq2seq.net")))

    plan = lowered.plan
    ex = Executor(lowered, initial_params(lowered.built, "auto", 0))
    source = np.random.default_rng(0).integers(1, 12, (3, 5))
    tokens = generate(ex, plan, {"source": source}, "target_in", steps=6)
    assert tokens.shape == (3, 6)
    fed = np.concatenate([np.zeros((3, 1), dtype=np.int64), tokens[:, :-1]], axis=1)
    scores = ex.forward({"source": source, "target_in": fed}, False, {"logits"}, losses=False)
    assert (scores["logits"].argmax(axis=2) == tokens).all()  # what a full pass would choose


def test_generate_names_what_it_needs_when_the_input_cannot_be_fed():
    from netdsl.runtime.generate import fed_scores

    parity = lower(check_file(os.path.join(SPECS, "parity.net"))).plan
    with pytest.raises(SpecError, match="feeds classes back"):
        fed_scores(parity, "bits")
    seq2seq = lower(check_file(os.path.join(SPECS, "seq2seq.net"))).plan
    with pytest.raises(SpecError, match="not an input"):
        fed_scores(seq2seq, "target")
    assert fed_scores(seq2seq, "target_in") == "logits"


def test_seq2seq_with_attention_learns_to_reverse_and_decodes_greedily(tmp_path):
    folder = str(tmp_path / "seq2seq")
    netc = [sys.executable, "-m", "netdsl.cli"]
    spec = os.path.join(SPECS, "seq2seq.net")
    trained = subprocess.run(netc + ["run", spec, "--epochs", "2", "--examples", "3000",
                                     "--checkpoint", folder, "--quiet"],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    decoded = subprocess.run(netc + ["predict", spec, "--checkpoint", folder, "--generate",
                                     "target_in", "--examples", "20"],
                             capture_output=True, text=True, timeout=300)
    assert decoded.returncode == 0, decoded.stderr
    right = total = 0
    for line in decoded.stdout.splitlines():
        source, output = line.split("->")
        words = [int(w) for w in source.split("[")[1].rstrip("] ").split()]
        guess = [int(w) for w in output.strip(" []").split()]
        right += sum(a == b for a, b in zip(words[::-1], guess))
        total += len(words)
    assert total == 20 * 8 and right / total > 0.8, decoded.stdout


# ---- padded batches of sequences of different lengths

@pytest.mark.parametrize("body, target", [
    ("logits = x -> lstm(5) -> dense(3)", "seq class(3)"),
    ("logits = concat(x -> gru(4), x -> reverse -> elman(4) -> reverse) -> last -> dense(3)",
     "class(3)"),
    ("logits = x -> elman(4) -> mean -> dense(3)", "class(3)"),
], ids=["many_to_many", "bidirectional_last", "mean"])
def test_a_padded_batch_equals_its_sequences_run_one_by_one(body, target):
    """Loss and gradients of a padded batch are those of each sequence alone, at its own
    length, averaged as the loss averages (over real steps, or over examples)."""
    lowered = lower(check_text(network(body, target=target)))
    plan = lowered.plan
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) + 0.2 * rng.standard_normal(v.shape)
              for k, v in initial_params(lowered.built, "auto", 0).items()}
    ex = Executor(lowered, params, dtype="float64")
    lengths = np.array([5, 2, 4])
    per_step = plan.types["y"].seq
    x = rng.standard_normal((3, 5, 4))
    y = rng.integers(0, 3, (3, 5) if per_step else 3)
    padded = {"x": x, "x.lengths": lengths, "y": y, "y.lengths": lengths}
    loss = float(ex.forward(padded, True)["loss"])
    ex.backward()
    grads = ex.flat_grads.copy()
    weights = lengths / lengths.sum() if per_step else np.full(3, 1 / 3)
    expected_loss, expected_grads = 0.0, np.zeros_like(grads)
    for b, (n, w) in enumerate(zip(lengths, weights)):
        alone = {"x": x[b:b + 1, :n], "y": y[b:b + 1, :n] if per_step else y[b:b + 1]}
        expected_loss += w * float(ex.forward(alone, True)["loss"])
        ex.backward()
        expected_grads += w * ex.flat_grads
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(grads, expected_grads, rtol=1e-9, atol=1e-12)


def test_netc_run_trains_on_padded_sequences_from_a_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 9, 32)).astype(np.float32)
    lengths = rng.integers(2, 10, 120)
    x[np.arange(9)[None, :] >= lengths[:, None]] = 0
    y = (x[..., 0].sum(axis=1) > 0).astype(np.int64)
    np.savez(tmp_path / "padded.npz", x=x, y=y, **{"x.lengths": lengths})
    np.savez(tmp_path / "bad.npz", x=x, y=y, **{"x.lengths": lengths + 9})
    netc = [sys.executable, "-m", "netdsl.cli", "run", os.path.join(SPECS, "lstm_classifier.net"),
            "--epochs", "1", "--checkpoint", str(tmp_path / "run"), "--quiet", "--data"]
    good = subprocess.run(netc + [str(tmp_path / "padded.npz")], capture_output=True, text=True,
                          timeout=300)
    assert good.returncode == 0, good.stderr
    assert "padded sequences, with x.lengths" in good.stderr
    bad = subprocess.run(netc + [str(tmp_path / "bad.npz")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and "x.lengths must lie in 1..9" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_recurrence_that_reads_no_sequence_is_refused_at_its_state():
    """`netc check` refuses it, as lowering would."""
    text = """input x : [4]
target y : seq class(3)
state h : [4]
h = tanh(dense(x, 4) + dense(h[t-1], 4))
logits = h -> dense(3)
loss cross_entropy(logits, y)
"""
    with pytest.raises(CheckFailed) as info:
        check_text(text)
    (error,) = info.value.errors
    assert "reads no sequence" in error.message and error.span.line == 3
