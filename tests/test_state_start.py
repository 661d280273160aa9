"""States that start from a tensor (`state s : [n] = last(encoded)`): a GRU
encoder-decoder against PyTorch's nn.GRU pair in float64, padded batches included, on
the host executor and in compiled native loops, and the errors of a wrong start."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from netdsl.driver import CheckFailed, check_text  # noqa: E402
from netdsl.lower import lower  # noqa: E402
from netdsl.runtime.execute import Executor  # noqa: E402
from netdsl.runtime.init import initial_params  # noqa: E402

B, S, T, N = 3, 5, 4, 5

# Cho et al. (2014) and Sutskever et al. (2014): the decoder starts from the encoder's
# final state. Both are GRUs as PyTorch computes them (gru_reset_after)
SEQ2SEQ = """import rnn
input  source : seq[3]
input  target_in : seq[2]
target target : seq class(4)
encoded = source -> gru_reset_after(5)
state s : [5] = last(encoded)
gates = sigmoid(dense(concat(target_in, s[t-1]), 10))
z, r = split(gates, 2)
candidate = tanh(dense(target_in, 5) + r * dense(s[t-1], 5))
s = (1 - z) * s[t-1] + z * candidate
logits = s -> dense(4)
loss cross_entropy(logits, target)
"""


def gru_weights(p: dict, gates: str, x_in: str, h_in: str, inputs: int) -> dict:
    """nn.GRU's weights from a GRU written as gru_reset_after is: PyTorch stacks r, z, n,
    and its z weighs the old state (z here is 1 - z there)."""
    w, b = p[f"{gates}.weight"], p[f"{gates}.bias"]
    (wz, wr), (bz, br) = w.chunk(2), b.chunk(2)
    zero = torch.zeros(N, dtype=torch.float64)
    return {"weight_ih_l0": torch.cat([wr[:, :inputs], -wz[:, :inputs], p[f"{x_in}.weight"]]),
            "weight_hh_l0": torch.cat([wr[:, inputs:], -wz[:, inputs:], p[f"{h_in}.weight"]]),
            "bias_ih_l0": torch.cat([br, -bz, p[f"{x_in}.bias"]]),
            "bias_hh_l0": torch.cat([zero, zero, p[f"{h_in}.bias"]])}


def torch_seq2seq(p: dict, batch: dict, source_lengths, target_lengths):
    """The loss of PyTorch's encoder-decoder, the decoder started from the encoder's state
    at each sequence's last real step; the loss counts the real target steps only."""
    from torch.func import functional_call

    encoder, decoder = torch.nn.GRU(3, N, batch_first=True), torch.nn.GRU(2, N, batch_first=True)
    enc = gru_weights(p, "gru_reset_after1/dense1", "gru_reset_after1/dense2",
                      "gru_reset_after1/dense3", 3)
    dec = gru_weights(p, "dense1", "dense2", "dense3", 2)
    encoded, _ = functional_call(encoder, enc, (torch.from_numpy(batch["source"]),))
    last = encoded[torch.arange(B), torch.as_tensor(source_lengths) - 1]      # (B, N)
    decoded, _ = functional_call(decoder, dec, (torch.from_numpy(batch["target_in"]),
                                                last[None].contiguous()))
    logits = decoded @ p["logits.weight"].T + p["logits.bias"]
    real = torch.arange(T)[None, :] < torch.as_tensor(target_lengths)[:, None]
    return torch.nn.functional.cross_entropy(logits[real], torch.from_numpy(batch["target"])[real])


def data(padded: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch = {"source": rng.standard_normal((B, S, 3)), "target_in": rng.standard_normal((B, T, 2)),
             "target": rng.integers(0, 4, (B, T))}
    source_lengths, target_lengths = ([5, 2, 3], [4, 1, 3]) if padded else ([S] * B, [T] * B)
    if padded:
        batch |= {"source.lengths": np.array(source_lengths),
                  "target_in.lengths": np.array(target_lengths)}
    return batch, source_lengths, target_lengths


@pytest.mark.parametrize("target", ["host", "native"])
@pytest.mark.parametrize("padded", [False, True], ids=["whole", "padded"])
def test_a_decoder_started_from_its_encoder_matches_pytorch(target, padded):
    lowered = lower(check_text(SEQ2SEQ), target)
    values = initial_params(lowered.built, "torch", seed=1)
    ex = Executor(lowered, values, dtype="float64")
    batch, source_lengths, target_lengths = data(padded)
    out = ex.forward(batch, True)
    ex.backward()
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in values.items()}
    loss = torch_seq2seq(leaves, batch, source_lengths, target_lengths)
    assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-10)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    for key, grad in zip(leaves, grads):
        np.testing.assert_allclose(ex.grads[key], grad.numpy(), rtol=1e-8, atol=1e-13,
                                   err_msg=key)
    # the encoder learns only through the decoder's start
    assert np.abs(ex.grads["gru_reset_after1/dense2.weight"]).max() > 1e-6
    if target == "native" and ex.compiled_loops is not None:
        assert ex.compiled_loops.calls["backward"] == 2  # the encoder and the decoder


def test_the_reference_interpreter_agrees():
    from netdsl.runtime.interpret import interpret

    lowered = lower(check_text(SEQ2SEQ))
    values = {k: v.astype(np.float64) for k, v in initial_params(lowered.built, "torch", 1).items()}
    batch, _, _ = data(False)
    batch["source"] = batch["source"][:, :T]  # the interpreter's sequences share one length
    ex = Executor(lowered, values, dtype="float64")
    out = ex.forward(batch, True)
    ex.backward()
    _, grads = interpret(lowered.built, values, batch)
    assert grads and set(grads) == set(values)
    for key, grad in grads.items():
        np.testing.assert_allclose(ex.grads[key], grad, rtol=1e-10, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("start, message", [
    ("encoded", "state 's' starts from one value per example, but 'encoded' is the "
                "sequence seq[5]"),
    ("dense(last(encoded), 3)", "state 's' is declared [5] but starts from "
                                "'dense(last(encoded), 3)', which is [3]"),
])
def test_a_wrong_start_is_said_at_the_state(start, message):
    with pytest.raises(CheckFailed) as failed:
        check_text(SEQ2SEQ.replace("= last(encoded)", f"= {start}"))
    (error,) = failed.value.errors
    assert str(error) == f"<spec>:6:7: {message}"


def test_a_started_decoder_exports(tmp_path):
    from test_attention_torch import assert_exports_agree

    assert_exports_agree(SEQ2SEQ, tmp_path)


def test_the_documented_example_checks_and_exports(tmp_path):
    import os
    import re

    from test_attention_torch import assert_exports_agree

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "language.md")).read()
    section = doc.split("\n### States that start from a tensor\n")[1].split("\n## ")[0]
    (example,) = re.findall(r"```net\n(.*?)```", section, re.S)
    assert lower(check_text(example)).plan.states["s[t-1]"].start == "last1"
    assert_exports_agree(example, tmp_path)


def test_a_start_computed_by_an_elementwise_chain_stays_a_value():
    """`tanh(...)` alone feeds the state: fusion must not fold it away."""
    text = SEQ2SEQ.replace("= last(encoded)", "= tanh(2 * last(encoded))")
    for target in ("host", "native"):
        lowered = lower(check_text(text), target)
        ex = Executor(lowered, initial_params(lowered.built, "torch", seed=1), dtype="float64")
        batch, _, _ = data(True)
        ex.forward(batch, True)
        ex.backward()
        assert np.abs(ex.grads["gru_reset_after1/dense2.weight"]).max() > 1e-6


def test_unrolled_the_start_feeds_the_initial_value():
    from netdsl.unroll import unroll

    dag = unroll(check_text(SEQ2SEQ).graph, 2)
    assert set(dag.successors("last1")) == {"s@0"}
    assert set(dag.predecessors("s[t-1]@1")) == {"s@0"}
