"""Recurrent cells against PyTorch: nn.RNN, nn.LSTM and nn.GRU with copied weights.

PyTorch's modules run on weights expressed in netdsl's parameters (torch.func's
functional_call), so autograd gives the gradient of each netdsl parameter
directly. Everything is float64: losses agree to 1e-10 and gradients to rtol 1e-8,
for full BPTT over whole sequences (also checkpointed: bptt(checkpoint=k), on the
NumPy loop and the compiled one) and for truncated BPTT in chunks whose states are
carried over without a gradient.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.func import functional_call  # noqa: E402

from netdsl.driver import check_text  # noqa: E402
from netdsl.lower import lower  # noqa: E402
from netdsl.runtime.execute import Executor  # noqa: E402
from netdsl.runtime.init import initial_params  # noqa: E402

IN, HIDDEN, CLASSES, B, T = 5, 6, 4, 3, 7


def spec(cell: str, many_to_one: bool = False) -> str:
    return f"""
import rnn
input  x : seq[{IN}]
target y : {"class(4)" if many_to_one else "seq class(4)"}
logits = x -> {cell} -> {"last -> " if many_to_one else ""}dense({CLASSES})
loss cross_entropy(logits, y)
"""


def batch(many_to_one: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((B, T, IN)),
            "y": rng.integers(0, CLASSES, (B,) if many_to_one else (B, T))}


# ---- PyTorch's weights as functions of netdsl's parameters

def elman_weights(p: dict) -> dict:
    return {"weight_ih_l0": p["elman1/dense1.weight"], "bias_ih_l0": p["elman1/dense1.bias"],
            "weight_hh_l0": p["elman1/dense2.weight"],
            "bias_hh_l0": torch.zeros(HIDDEN, dtype=torch.float64)}


def lstm_weights(p: dict) -> dict:
    # both use the gate order i, f, g, o; netdsl's one matrix reads [x, h]
    w = p["lstm1/z.weight"]
    return {"weight_ih_l0": w[:, :IN], "weight_hh_l0": w[:, IN:], "bias_ih_l0": p["lstm1/z.bias"],
            "bias_hh_l0": torch.zeros(4 * HIDDEN, dtype=torch.float64)}


def gru_weights(p: dict) -> dict:
    # PyTorch stacks r, z, n, and its z weighs the old state: z here is 1 - z there
    w, b = p["gru_reset_after1/dense1.weight"], p["gru_reset_after1/dense1.bias"]
    (wz, wr), (bz, br) = w.chunk(2), b.chunk(2)
    zero = torch.zeros(HIDDEN, dtype=torch.float64)
    return {"weight_ih_l0": torch.cat([wr[:, :IN], -wz[:, :IN], p["gru_reset_after1/dense2.weight"]]),
            "weight_hh_l0": torch.cat([wr[:, IN:], -wz[:, IN:], p["gru_reset_after1/dense3.weight"]]),
            "bias_ih_l0": torch.cat([br, -bz, p["gru_reset_after1/dense2.bias"]]),
            "bias_hh_l0": torch.cat([zero, zero, p["gru_reset_after1/dense3.bias"]])}


CELLS = {
    "elman": ("elman(6)", torch.nn.RNN, elman_weights),
    "lstm": ("lstm(6)", torch.nn.LSTM, lstm_weights),
    "gru": ("gru_reset_after(6)", torch.nn.GRU, gru_weights),
}


class Pair:
    """One network in netdsl and in PyTorch, on the same netdsl parameters."""

    def __init__(self, name: str, many_to_one: bool = False, target: str = "host"):
        cell, module, self.weights = CELLS[name]
        self.rnn = module(IN, HIDDEN, batch_first=True).double()
        self.many_to_one = many_to_one
        self.lowered = lower(check_text(spec(cell, many_to_one)), target)
        values = initial_params(self.lowered.built, "torch", seed=1)
        self.ex = Executor(self.lowered, values, dtype="float64")
        self.leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                       for k, v in values.items()}

    def torch_loss(self, x, y, state=None, cut: int = 0):
        """The loss of one chunk, run step by step with the state detached before step `cut`."""
        x = torch.from_numpy(x)
        weights = self.weights(self.leaves)
        outs = []
        for t in range(x.shape[1]):
            if t == cut and state is not None:
                state = _detach(state)
            out, state = functional_call(self.rnn, weights, (x[:, t:t + 1], state))
            outs.append(out)
        out = torch.cat(outs, dim=1)
        features = out[:, -1] if self.many_to_one else out
        logits = features @ self.leaves["logits.weight"].T + self.leaves["logits.bias"]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CLASSES),
                                                 torch.from_numpy(y).reshape(-1))
        return loss, state

    def torch_grads(self, loss) -> dict:
        grads = torch.autograd.grad(loss, list(self.leaves.values()))
        return {k: g.numpy() for k, g in zip(self.leaves, grads)}


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def assert_same_grads(ours: dict, theirs: dict) -> None:
    for key, grad in theirs.items():
        np.testing.assert_allclose(ours[key], grad, rtol=1e-8, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("many_to_one", [False, True], ids=["many_to_many", "many_to_one"])
def test_full_bptt_matches_pytorch(name, many_to_one):
    pair = Pair(name, many_to_one)
    data = batch(many_to_one)
    loss, _ = pair.torch_loss(data["x"], data["y"])
    out = pair.ex.forward(data, True)
    pair.ex.backward()
    assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-10)
    assert_same_grads(pair.ex.grads, pair.torch_grads(loss))


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("many_to_one", [False, True], ids=["many_to_many", "many_to_one"])
def test_compiled_loops_match_pytorch(name, many_to_one):
    """The native target's generated loop, full BPTT. An LSTM's forward leaves its
    gates' sigmoids where their inputs were and its backward reads them there
    (LoopKernel.activated): no transcendental is computed again."""
    pair = Pair(name, many_to_one, target="native")
    data = batch(many_to_one)
    loss, _ = pair.torch_loss(data["x"], data["y"])
    out = pair.ex.forward(data, True)
    pair.ex.backward()
    assert pair.ex.compiled_loops.calls == {"forward": 1, "backward": 1}
    assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-10)
    assert_same_grads(pair.ex.grads, pair.torch_grads(loss))
    if name == "lstm":
        [(kernel, _, _)] = [made for made in pair.ex.compiled_loops._made.values() if made]
        assert len(kernel.activated) == 3
        assert "tanh(" not in kernel.source.split("void loop_backward")[1]


@pytest.mark.parametrize("target", ["host", "native"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_checkpointed_bptt_matches_pytorch(name, target):
    """bptt(checkpoint=3): spans of 3, 3 and 1 steps, each recomputed in backward."""
    pair = Pair(name, target=target)
    pair.ex.checkpoint = 3
    data = batch()
    loss, _ = pair.torch_loss(data["x"], data["y"])
    out = pair.ex.forward(data, True)
    pair.ex.backward()
    assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-10)
    assert_same_grads(pair.ex.grads, pair.torch_grads(loss))
    if target == "native":
        assert pair.ex.compiled_loops.calls == {"forward": 1, "backward": 1}


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("k1, k2", [(3, 3), (3, 2)])
def test_truncated_bptt_matches_pytorch_chunk_by_chunk(name, k1, k2):
    pair = Pair(name)
    pair.ex.reach = k2 if k2 < k1 else None
    data = batch()
    state = carry = None
    for start in range(0, T, k1):  # chunks of 3, 3 and 1 steps
        chunk = {n: a[:, start:start + k1] for n, a in data.items()}
        loss, state = pair.torch_loss(chunk["x"], chunk["y"], state,
                                      cut=chunk["x"].shape[1] - k2)
        out = pair.ex.forward(chunk, True, carry=carry)
        pair.ex.backward()
        carry = pair.ex.carry
        assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-10)
        assert_same_grads(pair.ex.grads, pair.torch_grads(loss))
        state = _detach(state)


def test_cbow_matches_pytorch():
    """specs/cbow.net at a 50-word vocabulary: embedding, mean over the context, softmax."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "specs" / "cbow.net").read_text()
    lowered = lower(check_text(text.replace("2000", "50")))
    values = initial_params(lowered.built, "torch", seed=2)
    ex = Executor(lowered, values, dtype="float64")
    rng = np.random.default_rng(0)
    data = {"context": rng.integers(0, 50, (B, 4)), "word": rng.integers(0, 50, B)}
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
    vectors = leaves["embedding1.weight"][torch.from_numpy(data["context"])].mean(dim=1)
    scores = vectors @ leaves["scores.weight"].T + leaves["scores.bias"]
    loss = torch.nn.functional.cross_entropy(scores, torch.from_numpy(data["word"]))
    out = ex.forward(data, True)
    ex.backward()
    assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-10)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    assert_same_grads(ex.grads, {k: g.numpy() for k, g in zip(leaves, grads)})
