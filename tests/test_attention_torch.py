"""Attention against PyTorch in float64: padded keys masked, separate keys and values, the
causal mask, multi-head attention and the transformer encoder block.

PyTorch's functions and modules run on netdsl's own parameters (copied, or as leaves
of autograd), so outputs agree to 1e-10 and gradients to rtol 1e-8.
"""
from __future__ import annotations

import os
import re

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
    y, (dq, dm), _ = run_op(OPS["attention"](causal=False), [query, memory], lengths=LENGTHS, gy=gy)
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
mixed = attention(enc, enc) + multihead_attention(enc, enc, heads=5)
state s : [5]
reads = concat(attention(s[t-1], enc), additive_attention(s[t-1], mixed, 6),
               multihead_attention(s[t-1], enc, heads=5))
s = tanh(dense(concat(x, reads), 5) + dense(s[t-1], 5))
logits = s -> last -> dense(3)
loss cross_entropy(logits, y)
"""


def _pass(ex, batch: dict):
    out = ex.forward(batch, True, keep={"logits", "mixed"})
    ex.backward()
    return out, {k: v.copy() for k, v in ex.grads.items()}


def test_a_padded_example_reads_the_same_with_any_padding_beside_it():
    """The three attentions inside and outside a recurrence: example A (3 steps) alone, and padded
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


# ---- separate keys and values, and the causal mask


def _sdpa(query, keys, values, lengths=None, causal=False):
    """PyTorch's scaled_dot_product_attention on netdsl's layouts: query rows (R*B, d),
    keys and values time-major (S, B, *)."""
    steps, batch = keys.shape[0], keys.shape[1]
    qb = query.reshape(-1, batch, query.shape[-1]).transpose(0, 1)
    mask = None
    if lengths is not None:
        mask = ~key_padding(lengths, steps)[:, None, :]
    if causal:
        rows = qb.shape[1]
        earlier = torch.ones(rows, steps, dtype=torch.bool).tril()
        mask = earlier if mask is None else mask & earlier
    out = F.scaled_dot_product_attention(qb, keys.transpose(0, 1), values.transpose(0, 1),
                                         attn_mask=mask)
    return out.transpose(0, 1).reshape(-1, values.shape[-1])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("padded", [False, True], ids=["whole", "padded"])
def test_attention_with_keys_and_values_matches_pytorch(causal, padded):
    rng = np.random.default_rng(4)
    query = rng.standard_normal((S * B, D))    # a query sequence as long as the keys
    keys, values = rng.standard_normal((S, B, D)), rng.standard_normal((S, B, 3))
    gy = rng.standard_normal((S * B, 3))
    lengths = LENGTHS if padded else None
    op = OPS["attention"](causal=causal)
    y, (dq, dk, dv), _ = run_op(op, [query, keys, values], lengths=lengths, gy=gy)
    leaves = [tensor(a) for a in (query, keys, values)]
    theirs = _sdpa(*leaves, lengths, causal)
    np.testing.assert_allclose(y, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, their in zip((dq, dk, dv), torch.autograd.grad(theirs, leaves,
                                                             torch.from_numpy(gy))):
        np.testing.assert_allclose(ours, their.numpy(), rtol=1e-8, atol=1e-12)


def test_causal_attention_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((3 * 2, 4)), rng.standard_normal((3, 2, 4)),
              rng.standard_normal((3, 2, 2))]
    gy = rng.standard_normal((3 * 2, 2))
    op = OPS["attention"](causal=True)
    _, grads, _ = run_op(op, inputs, gy=gy)

    def objective() -> float:
        return float((op.forward(Ctx(np), *inputs) * gy).sum())

    for x, grad in zip(inputs, grads):
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            old = x[index]
            x[index] = old + 1e-6
            up = objective()
            x[index] = old - 1e-6
            numeric[index] = (up - objective()) / 2e-6
            x[index] = old
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


CAUSAL = """input x : seq[4]
target y : seq class(3)
h = x -> dense(4)
logits = attention(h, h, x -> dense(6), causal=true) -> dense(3)
loss cross_entropy(logits, y)
"""


def test_a_causal_step_reads_no_later_step():
    """Changing step 4 of a sequence leaves the causal self-attention's steps 1..3 alone."""
    lowered = lower(check_text(CAUSAL))
    ex = Executor(lowered, initial_params(lowered.built, "torch", seed=0), dtype="float64")
    x = np.random.default_rng(6).standard_normal((2, 5, 4))
    changed = x.copy()
    changed[:, 3] += 1
    before = ex.forward({"x": x}, False, keep={"logits"}, losses=False)["logits"]
    after = ex.forward({"x": changed}, False, keep={"logits"}, losses=False)["logits"]
    np.testing.assert_array_equal(before[:, :3], after[:, :3])
    assert not np.allclose(before[:, 3:], after[:, 3:])


def test_a_causal_mask_inside_a_recurrence_is_refused_with_its_place():
    """netc check refuses it, as netc run would."""
    from netdsl.driver import CheckFailed

    text = """import rnn
input x : seq[4]
target y : seq class(3)
enc = x -> elman(4)
state s : [4]
s = tanh(dense(concat(x, attention(s[t-1], enc, causal=true)), 4))
logits = s -> dense(3)
loss cross_entropy(logits, y)
"""
    with pytest.raises(CheckFailed) as err:
        check_text(text)
    [error] = err.value.errors
    assert "inside a recurrence each step's query is alone" in error.message
    assert error.span.line == 6


def test_a_causal_mask_on_a_query_that_is_not_a_sequence_is_refused():
    """One query vector per example has no steps to order: causal=true would let it read
    the first key alone, so it is an error at the call."""
    from netdsl.driver import CheckFailed

    text = """input x : seq[5]
target y : class(3)
h = x -> dense(4)
logits = attention(h -> mean, h, causal=true) -> dense(3)
loss cross_entropy(logits, y)
"""
    with pytest.raises(CheckFailed) as err:
        check_text(text)
    [error] = err.value.errors
    assert "this query is not a sequence" in error.message and error.span.line == 4
    check_text(text.replace(", causal=true", ""))  # without the mask it reads every key


def test_every_example_of_the_attention_docs_checks():
    examples = doc_examples()
    assert len(examples) >= 3
    for text in examples:
        assert lower(check_text(text)).plan.losses


# ---- exports: ONNX (onnxruntime) and PyTorch give netdsl's outputs


def exported_outputs(text: str, tmp_path):
    """netdsl's eval-mode outputs of a spec, its ONNX model's under onnxruntime and its
    generated PyTorch module's (run here, on the same weights in float64)."""
    import importlib.util

    import onnxruntime as ort
    from export_cases import Case
    from netdsl.export.onnx import to_onnx
    from netdsl.export.torch import to_torch

    path = tmp_path / "spec.net"
    path.write_text(text)
    case = Case(str(path))
    feed = case.inputs(batch=2, steps=4, dtype=np.float64)
    want = case.forward(feed, "float64")
    model = to_onnx(case.view, case.params, case.buffers)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {k: v.astype(np.float32) if v.dtype == np.float64 else v
                                  for k, v in feed.items()})
    module = to_torch(case.view, case.net.sources)
    (tmp_path / "model.py").write_text(module.source)
    spec = importlib.util.spec_from_file_location("exported_model", tmp_path / "model.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    net = loaded.Model()
    net.load_state_dict({name: torch.tensor(np.asarray(case.params[source[1]]))
                         for name, source in module.state.items() if source[0] == "param"},
                        strict=False)
    with torch.no_grad():
        torch_out = net.double().eval()(*(torch.from_numpy(v) for v in feed.values()))
    torch_out = torch_out if isinstance(torch_out, tuple) else (torch_out,)
    return want, onnx_out, [t.numpy() for t in torch_out]


def assert_exports_agree(text: str, tmp_path) -> None:
    want, onnx_out, torch_out = exported_outputs(text, tmp_path)
    for (name, expected), got_onnx, got_torch in zip(want.items(), onnx_out, torch_out):
        np.testing.assert_allclose(got_onnx, expected, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got_torch, expected, rtol=1e-8, atol=1e-12, err_msg=name)


def doc_examples() -> list[str]:
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "language.md")).read()
    section = doc.split("\n## Attention\n")[1].split("\n## ")[0]
    return re.findall(r"```net\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["attention", "multihead", "transformer"])
def test_the_documented_examples_export(index, tmp_path):
    assert_exports_agree(doc_examples()[index], tmp_path)


# ---- multi-head attention: torch.nn.MultiheadAttention with copied weights

MHA_NAMES = ("query_weight", "query_bias", "key_weight", "key_bias", "value_weight",
             "value_bias", "out_weight", "out_bias")


def mha_module(params: dict, d: int, heads: int, kdim: int, vdim: int):
    """torch.nn.MultiheadAttention (batch_first) on netdsl's multihead_attention weights."""
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True, kdim=kdim, vdim=vdim,
                                      dtype=torch.float64)
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            mha.in_proj_weight.copy_(torch.cat([torch.from_numpy(params[f"{n}_weight"])
                                                for n in ("query", "key", "value")]))
        else:
            for n, name in (("q", "query"), ("k", "key"), ("v", "value")):
                getattr(mha, f"{n}_proj_weight").copy_(torch.from_numpy(params[f"{name}_weight"]))
        mha.in_proj_bias.copy_(torch.cat([torch.from_numpy(params[f"{n}_bias"])
                                          for n in ("query", "key", "value")]))
        mha.out_proj.weight.copy_(torch.from_numpy(params["out_weight"]))
        mha.out_proj.bias.copy_(torch.from_numpy(params["out_bias"]))
    return mha


def mha_grads(mha) -> dict:
    """The module's parameter gradients under netdsl's names."""
    d = mha.embed_dim
    if mha._qkv_same_embed_dim:
        q, k, v = mha.in_proj_weight.grad.split(d)
    else:
        q, k, v = (getattr(mha, f"{n}_proj_weight").grad for n in "qkv")
    bq, bk, bv = mha.in_proj_bias.grad.split(d)
    return dict(zip(MHA_NAMES, (q, bq, k, bk, v, bv, mha.out_proj.weight.grad,
                                mha.out_proj.bias.grad)))


@pytest.mark.parametrize("apart", [False, True], ids=["memory", "keys_values"])
@pytest.mark.parametrize("padded", [False, True], ids=["whole", "padded"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_multihead_attention_matches_torchs_module(apart, padded, causal):
    from netdsl.types import TensorType

    rng = np.random.default_rng(7)
    d, heads, dk, dv = 6, 3, (4 if apart else 6), (5 if apart else 6)
    rows = S if causal else R
    op = OPS["multihead_attention"](heads=heads, causal=causal)
    query = rng.standard_normal((rows * B, d))
    keys, values = rng.standard_normal((S, B, dk)), rng.standard_normal((S, B, dv))
    types = [TensorType((d,)), TensorType((dk,), seq=True)] + (
        [TensorType((dv,), seq=True)] if apart else [])
    params = {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape)
              for k, v in op.init(rng, *types).items()}
    inputs = [query, keys] + ([values] if apart else [])
    gy = rng.standard_normal((rows * B, d))
    lengths = LENGTHS if padded else None
    y, grads, param_grads = run_op(op, inputs, params, lengths, gy)

    mha = mha_module(params, d, heads, dk, dk if not apart else dv)
    q = tensor(query)
    k = tensor(keys)
    v = tensor(values) if apart else k
    qb = q.reshape(rows, B, d).transpose(0, 1)
    mask = torch.ones(rows, S, dtype=torch.bool).triu(1) if causal else None
    out, _ = mha(qb, k.transpose(0, 1), v.transpose(0, 1), need_weights=False,
                 key_padding_mask=key_padding(LENGTHS) if padded else None, attn_mask=mask)
    out = out.transpose(0, 1).reshape(rows * B, d)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    leaves = [q, k] + ([v] if apart else [])
    theirs = torch.autograd.grad(out, leaves, torch.from_numpy(gy), retain_graph=True)
    for ours, their in zip(grads, theirs):
        np.testing.assert_allclose(ours, their.numpy(), rtol=1e-8, atol=1e-12)
    out.backward(torch.from_numpy(gy))
    for name, their in mha_grads(mha).items():
        np.testing.assert_allclose(param_grads[name], their.numpy(), rtol=1e-8, atol=1e-12,
                                   err_msg=name)


def test_heads_must_divide_the_query_said_at_the_call():
    from netdsl.driver import CheckFailed

    with pytest.raises(CheckFailed) as failed:
        check_text("""input x : seq[6]
target y : seq class(2)
logits = multihead_attention(x, x, heads=4) -> dense(2)
loss cross_entropy(logits, y)
""")
    (error,) = failed.value.errors
    assert str(error) == ("<spec>:3:10: multihead_attention splits the query's 6 features "
                          "into 4 heads, which does not divide them")
    assert "pick heads that divide 6" in error.hint


# ---- the stdlib's transformer_encoder: torch.nn.TransformerEncoderLayer, post-norm

ENCODER = """import transformer
input  x : seq[8]
target r : seq[8]
h = x -> transformer_encoder(8, 2, 16, p=0)
loss mse(h, r)
"""


@pytest.mark.parametrize("padded", [False, True], ids=["whole", "padded"])
def test_transformer_encoder_matches_torchs_layer(padded):
    lowered = lower(check_text(ENCODER))
    rng = np.random.default_rng(8)
    params = {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape)
              for k, v in initial_params(lowered.built, "torch", seed=3).items()}
    ex = Executor(lowered, params, dtype="float64")
    x, r = rng.standard_normal((B, S, 8)), rng.standard_normal((B, S, 8))
    batch = {"x": x, "r": r} | ({"x.lengths": LENGTHS} if padded else {})
    out = ex.forward(batch, True)
    ex.backward()

    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                             dtype=torch.float64)
    p = {k.split("/")[1]: v for k, v in params.items()}
    mha = "multihead_attention1."
    copied = {"self_attn.in_proj_weight": np.concatenate(
                  [p[f"{mha}{n}_weight"] for n in ("query", "key", "value")]),
              "self_attn.in_proj_bias": np.concatenate(
                  [p[f"{mha}{n}_bias"] for n in ("query", "key", "value")]),
              "self_attn.out_proj.weight": p[f"{mha}out_weight"],
              "self_attn.out_proj.bias": p[f"{mha}out_bias"],
              "linear1.weight": p["dense1.weight"], "linear1.bias": p["dense1.bias"],
              "linear2.weight": p["dense2.weight"], "linear2.bias": p["dense2.bias"],
              "norm1.weight": p["a.weight"], "norm1.bias": p["a.bias"],
              "norm2.weight": p["layernorm2.weight"], "norm2.bias": p["layernorm2.bias"]}
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in copied.items()})
    layer.train()  # the reference path, not the fast path of inference
    mask = key_padding(LENGTHS) if padded else None
    h = layer(torch.from_numpy(x), src_key_padding_mask=mask)
    real = ~mask if padded else torch.ones(B, S, dtype=torch.bool)
    loss = ((h - torch.from_numpy(r)) ** 2).mean(-1)[real].mean()
    assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-10)
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in layer.named_parameters()}
    for name, key in [("self_attn.out_proj.weight", f"{mha}out_weight"),
                      ("linear1.weight", "dense1.weight"), ("linear2.bias", "dense2.bias"),
                      ("norm1.weight", "a.weight"), ("norm2.bias", "layernorm2.bias")]:
        np.testing.assert_allclose(ex.grads[f"transformer_encoder1/{key}"], grads[name],
                                   rtol=1e-8, atol=1e-12, err_msg=name)
    d = 8
    for i, n in enumerate(("query", "key", "value")):
        np.testing.assert_allclose(ex.grads[f"transformer_encoder1/{mha}{n}_weight"],
                                   grads["self_attn.in_proj_weight"][i * d:(i + 1) * d],
                                   rtol=1e-8, atol=1e-12, err_msg=n)
        np.testing.assert_allclose(ex.grads[f"transformer_encoder1/{mha}{n}_bias"],
                                   grads["self_attn.in_proj_bias"][i * d:(i + 1) * d],
                                   rtol=1e-8, atol=1e-12, err_msg=n)
