"""Attention against PyTorch in float64: padded keys masked, separate keys and values, the
causal mask, multi-head attention and the transformer encoder block.

PyTorch's functions and modules run on netdsl's own parameters (copied, or as leaves
of autograd), so outputs agree to 1e-10 and gradients to rtol 1e-8.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from netdsl.driver import check_text  # noqa: E402
from netdsl.lower import lower  # noqa: E402
from netdsl.ops import OPS  # noqa: E402
from netdsl.ops.base import Ctx  # noqa: E402
from netdsl.runtime.execute import Executor  # noqa: E402
from netdsl.runtime.init import initial_params  # noqa: E402

F = torch.nn.functional
B, S, R, D = 3, 6, 4, 5
LENGTHS = np.array([6, 2, 4])


def tensor(a, grad: bool = True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def key_padding(lengths, steps: int = S):
    """PyTorch's key_padding_mask: True at the keys to ignore, (B, S)."""
    return torch.from_numpy(np.arange(steps)[None, :] >= np.asarray(lengths)[:, None])


def run_op(op, inputs, params=None, lengths=None, gy=None):
    """forward and backward of one op on time-major inputs: (y, input grads, param grads)."""
    ctx = Ctx(np)
    ctx.lengths = lengths
    y = op.forward(ctx, *inputs, **(params or {}))
    (grads, param_grads) = op.backward(ctx, gy)
    return y, grads, param_grads


# ---- padded keys: key_padding_mask semantics


def test_dot_attention_never_reads_a_padded_key():
    rng = np.random.default_rng(0)
    query, memory = rng.standard_normal((R * B, D)), rng.standard_normal((S, B, D))
    gy = rng.standard_normal((R * B, D))
    y, (dq, dm), _ = run_op(OPS["attention"](), [query, memory], lengths=LENGTHS, gy=gy)
    q, m = tensor(query), tensor(memory)
    qb = q.reshape(R, B, D).transpose(0, 1)                  # (B, R, D)
    mb = m.transpose(0, 1)                                   # (B, S, D)
    mask = ~key_padding(LENGTHS)[:, None, :]                 # True where a key may be read
    theirs = F.scaled_dot_product_attention(qb, mb, mb, attn_mask=mask)
    theirs = theirs.transpose(0, 1).reshape(R * B, D)
    np.testing.assert_allclose(y, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    tq, tm = torch.autograd.grad(theirs, [q, m], torch.from_numpy(gy))
    np.testing.assert_allclose(dq, tq.numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(dm, tm.numpy(), rtol=1e-8, atol=1e-12)
    assert not dm[S - 1, 1:].any()  # padding gets no gradient


def test_additive_attention_never_reads_a_padded_key():
    rng = np.random.default_rng(1)
    dq_, units = 3, 7
    op = OPS["additive_attention"](units=units)
    query, memory = rng.standard_normal((R * B, dq_)), rng.standard_normal((S, B, D))
    params = {"query_weight": rng.standard_normal((units, dq_)),
              "memory_weight": rng.standard_normal((units, D)),
              "score": rng.standard_normal(units)}
    gy = rng.standard_normal((R * B, D))
    y, (dq, dm), dp = run_op(op, [query, memory], params, LENGTHS, gy)
    q, m = tensor(query), tensor(memory)
    w = {k: tensor(v) for k, v in params.items()}
    qb, mb = q.reshape(R, B, dq_).transpose(0, 1), m.transpose(0, 1)
    hidden = torch.tanh((qb @ w["query_weight"].T)[:, :, None]
                        + (mb @ w["memory_weight"].T)[:, None])        # (B, R, S, u)
    scores = (hidden @ w["score"]).masked_fill(key_padding(LENGTHS)[:, None, :], -np.inf)
    theirs = (torch.softmax(scores, -1) @ mb).transpose(0, 1).reshape(R * B, D)
    np.testing.assert_allclose(y, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    leaves = [q, m, *w.values()]
    grads = torch.autograd.grad(theirs, leaves, torch.from_numpy(gy))
    for ours, their in zip([dq, dm, *(dp[k] for k in w)], grads):
        np.testing.assert_allclose(ours, their.numpy(), rtol=1e-8, atol=1e-12)


# ---- a padded example's result does not depend on the padding that shares its batch

ATTENDING = """import rnn
input x : seq[4]
target y : class(3)
enc = x -> elman(5)
mixed = attention(enc, enc)
state s : [5]
reads = concat(attention(s[t-1], enc), additive_attention(s[t-1], mixed, 6))
s = tanh(dense(concat(x, reads), 5) + dense(s[t-1], 5))
logits = s -> last -> dense(3)
loss cross_entropy(logits, y)
"""


def _pass(ex, batch: dict):
    out = ex.forward(batch, True, keep={"logits", "mixed"})
    ex.backward()
    return out, {k: v.copy() for k, v in ex.grads.items()}


def test_a_padded_example_reads_the_same_with_any_padding_beside_it():
    """Attention inside and outside a recurrence: example A (3 steps) alone, and padded
    to 6 steps beside example B. The batch loss is the mean of the two, so A's
    gradient is twice the batch's less B's alone."""
    lowered = lower(check_text(ATTENDING), outputs={"logits", "mixed"})
    values = initial_params(lowered.built, "torch", seed=2)
    ex = Executor(lowered, {k: v.astype(np.float64) for k, v in values.items()},
                  dtype="float64")
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((1, 3, 4)), rng.standard_normal((1, 6, 4))
    ya, yb = np.array([1]), np.array([2])
    padded = np.concatenate([np.concatenate([a, 100 * np.ones((1, 3, 4))], axis=1), b])
    alone, grads_a = _pass(ex, {"x": a, "y": ya})
    _, grads_b = _pass(ex, {"x": b, "y": yb})
    both, grads_ab = _pass(ex, {"x": padded, "y": np.concatenate([ya, yb]),
                                "x.lengths": np.array([3, 6])})
    np.testing.assert_allclose(both["logits"][0], alone["logits"][0], rtol=1e-10)
    np.testing.assert_allclose(both["mixed"][0, :3], alone["mixed"][0], rtol=1e-10)
    for key, grad in grads_a.items():
        np.testing.assert_allclose(2 * grads_ab[key] - grads_b[key], grad, rtol=1e-7,
                                   atol=1e-12, err_msg=key)
