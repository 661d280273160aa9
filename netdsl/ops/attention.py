"""Attention: a query reads a weighted average of a whole sequence (the memory).

Every op here runs per step for the query and sees the memory (or the keys and the
values) whole: they are listed in `whole`, so inside a recurrence (a decoder) each
step's query attends over every step of the memory (the encoder's outputs), and
outside one every query step does. The memory arrives time-major, (S, B, d); the
query as (R*B, d), R query steps of the same B sequences (R = 1 inside a loop), and
the result has the query's rows. With `causal` query row r reads keys 1..r only.

In a padded batch (`NAME.lengths`) an executor gives the memory's lengths as
`ctx.lengths`: no query reads a memory step past its sequence's end, so an example's
result does not depend on the padding that shares its batch.
"""
from __future__ import annotations

import math

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, boolean, positive, register
from netdsl.ops.common import expect_float
from netdsl.ops.numeric import constant, fan_in_uniform
from netdsl.types import TensorType


def _softmax_last(xp, s, mask=None):
    """Softmax over the last axis; where `mask` is False a weight is exactly 0."""
    if mask is not None:
        s = xp.where(mask, s, -xp.inf)
    e = xp.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_grad(a, ga):
    """d(loss)/d(scores) from d(loss)/d(weights) for weights a = softmax(scores)."""
    return a * (ga - (a * ga).sum(axis=-1, keepdims=True))


class _Attention(Op):
    arity = 2
    whole = ("memory",)

    def check(self, query: TensorType, memory: TensorType) -> None:
        expect_float(self, query)
        expect_float(self, memory)
        if not memory.seq:
            raise ShapeError(f"{self.name} attends over a sequence, but its memory is {memory}",
                             "pass the sequence to attend over, e.g. the encoder's outputs")
        if query.rank != 1 or memory.rank != 1:
            raise ShapeError(f"{self.name} expects vectors, got query {query.step()} and memory "
                             f"{memory.step()}")

    @staticmethod
    def rows(query, memory):
        """The query as (R, B, dq): R query steps of the memory's B sequences."""
        return query.reshape(-1, memory.shape[1], query.shape[-1])

    @staticmethod
    def visible(ctx, steps: int):
        """Which of the memory's `steps` each sequence's query may read, (1, B, S) to
        broadcast over (R, B, S) weights; None when every step is real."""
        if ctx.lengths is None:
            return None
        return (ctx.xp.arange(steps)[None, :] < ctx.lengths[:, None])[None]

    def mask(self, ctx, rows: int, steps: int, causal: bool):
        """Which keys each of R query rows reads, to broadcast over (R, B, S); None: all.
        With `causal` row r reads keys 1..r (as torch's tril mask, top-left aligned)."""
        visible = self.visible(ctx, steps)
        if not causal:
            return visible
        xp = ctx.xp
        earlier = xp.arange(steps)[None, None, :] <= xp.arange(rows)[:, None, None]  # (R, 1, S)
        return earlier if visible is None else earlier & visible

    def read(self, ctx, weights, memory):
        """sum_s weights[r, b, s] memory[s, b, :], and (B, S, d) memory for backward."""
        by_batch = memory.transpose(1, 0, 2)                 # (B, S, d)
        out = ctx.xp.matmul(weights.transpose(1, 0, 2), by_batch)  # (B, R, d)
        return out.transpose(1, 0, 2), by_batch

    def read_grads(self, ctx, g, weights, by_batch):
        """Gradients of the weighted read: for the weights (R, B, S) and the memory (S, B, d)."""
        xp = ctx.xp
        g_b = g.transpose(1, 0, 2)                           # (B, R, d)
        d_weights = xp.matmul(g_b, by_batch.transpose(0, 2, 1)).transpose(1, 0, 2)
        d_memory = xp.matmul(weights.transpose(1, 2, 0), g_b).transpose(1, 0, 2)
        return d_weights, d_memory


@register("attention")
class DotAttention(_Attention):
    r"""$y = \sum_s \alpha_s v_s$, $\alpha = \mathrm{softmax}_s(q \cdot k_s / \sqrt{d})$"""

    # Vaswani et al. (2017), "Attention is all you need", NeurIPS: scaled dot-product
    # attention. `attention(q, memory)` reads the memory as both keys and values;
    # `attention(q, keys, values)` reads them apart. With `causal` the query's step r
    # (of a sequence read outside a recurrence) reads keys 1..r only.
    arity = (2, 3)
    args = (Arg("causal", boolean, False),)
    whole = ("memory", "value")
    keeps = ("q", "weights", "keys", "values")  # the query's rows, the weights, both by batch

    def shape(self, query: TensorType, memory: TensorType,
              value: TensorType | None = None) -> TensorType:
        self.check(query, memory)
        if value is not None:
            self.check(query, value)
        if query.dims != memory.dims:
            raise ShapeError(f"attention compares the query with each key, so their sizes "
                             f"must agree: query {query.step()}, keys {memory.step()}",
                             "project one first, e.g. dense(n) on the query, or use "
                             "additive_attention(query, memory, units)")
        return (memory if value is None else value).step()

    def over_time(self, sequences: tuple[bool, ...]) -> tuple[str, str] | None:
        if self.causal and not sequences[0]:  # one query row: the mask would show it one key
            heads = f"heads={self.heads}, " if getattr(self, "heads", None) else ""
            return ("causal=true lets a query sequence's step t read keys 1..t, but this "
                    "query is not a sequence: one vector per example",
                    "drop causal=true to read every key, or attend from the sequence itself, "
                    f"as self-attention does: {self.name}(h, h, {heads}causal=true)")
        return None

    def in_recurrence(self) -> str | None:
        if self.causal:
            return ("a causal mask orders a query sequence's steps against the keys', but "
                    "inside a recurrence each step's query is alone")
        return None

    def flops(self, y, query, memory, value=None) -> int:
        return 2 * query.size + 2 * y.size  # per key: a dot product and a weighted add

    def forward(self, ctx, query, memory, value=None):
        xp, scale = ctx.xp, 1 / math.sqrt(query.shape[-1])
        q = self.rows(query, memory)                         # (R, B, d)
        keys = memory.transpose(1, 0, 2)                     # (B, S, d)
        scores = xp.matmul(q.transpose(1, 0, 2), keys.transpose(0, 2, 1)) * scale  # (B, R, S)
        weights = _softmax_last(xp, scores.transpose(1, 0, 2),
                                self.mask(ctx, q.shape[0], memory.shape[0], self.causal))
        out, values = self.read(ctx, weights, memory if value is None else value)
        ctx.save(q=q, weights=weights, keys=keys, values=values, scale=scale,
                 query_shape=query.shape, apart=value is not None)
        return out.reshape(query.shape[:-1] + (out.shape[-1],))

    def backward(self, ctx, gy):
        xp, s = ctx.xp, ctx.saved
        q, keys = s["q"], s["keys"]
        g = gy.reshape(q.shape[:2] + (gy.shape[-1],))
        d_weights, d_value = self.read_grads(ctx, g, s["weights"], s["values"])
        d_scores = _softmax_grad(s["weights"], d_weights) * s["scale"]  # (R, B, S)
        dq = xp.matmul(d_scores.transpose(1, 0, 2), keys).transpose(1, 0, 2)
        d_keys = xp.matmul(d_scores.transpose(1, 2, 0), q.transpose(1, 0, 2)).transpose(1, 0, 2)
        if s["apart"]:
            return (dq.reshape(s["query_shape"]), d_keys, d_value), {}
        return (dq.reshape(s["query_shape"]), d_keys + d_value), {}

    def onnx(self, g, step, inputs, params):
        query, keys, values = inputs[0], inputs[1], inputs[-1]
        d, dv = step.input_types[0].dims[0], step.input_types[-1].dims[0]
        q = query_rows(g, query, keys, d)
        scores = g.node("MatMul", [q, g.node("Transpose", [keys], perm=[0, 2, 1])])
        scores = g.node("Mul", [scores, g.const(1 / math.sqrt(d))])       # (B, R, S)
        if self.causal:
            scores = causal_scores(g, scores)
        return weighted_read(g, g.node("Softmax", [scores], axis=-1), values, dv)

    def torch(self, t, step, inputs):
        causal = ", causal=True" if self.causal else ""
        return f"{t.helper('dot_attention', DOT_ATTENTION)}({', '.join(inputs)}{causal})"


@register("additive_attention")
class AdditiveAttention(_Attention):
    r"""$y = \sum_s \alpha_s m_s$, $\alpha = \mathrm{softmax}_s(v^\top \tanh(W q + U m_s))$"""

    # Bahdanau, Cho & Bengio (2015), "Neural machine translation by jointly learning to
    # align and translate", ICLR: the alignment model is a one-layer network of `units`

    args = (Arg("units", positive),)
    keeps = ("q", "memory", "hidden", "weights", "by_batch", "query_weight", "memory_weight",
             "score")

    def shape(self, query: TensorType, memory: TensorType) -> TensorType:
        self.check(query, memory)
        return memory.step()

    def params(self, query, memory):
        return {"query_weight": (self.units, query.dims[0]),
                "memory_weight": (self.units, memory.dims[0]), "score": (self.units,)}

    def init(self, rng, query, memory):
        return {"query_weight": fan_in_uniform(rng, query.dims[0], (self.units, query.dims[0])),
                "memory_weight": fan_in_uniform(rng, memory.dims[0], (self.units, memory.dims[0])),
                "score": fan_in_uniform(rng, self.units, (self.units,))}

    def flops(self, y, query, memory) -> int:
        return 2 * self.units * (query.size + memory.size) + 4 * self.units + 2 * memory.size

    def forward(self, ctx, query, memory, query_weight, memory_weight, score):
        xp = ctx.xp
        q = self.rows(query, memory)                         # (R, B, dq)
        wq = q @ query_weight.T                              # (R, B, u)
        um = memory @ memory_weight.T                        # (S, B, u)
        hidden = xp.tanh(wq[:, :, None, :] + um.transpose(1, 0, 2)[None])  # (R, B, S, u)
        weights = _softmax_last(xp, hidden @ score, self.visible(ctx, memory.shape[0]))  # (R, B, S)
        out, by_batch = self.read(ctx, weights, memory)
        ctx.save(q=q, memory=memory, hidden=hidden, weights=weights, by_batch=by_batch,
                 query_weight=query_weight, memory_weight=memory_weight, score=score,
                 query_shape=query.shape)
        return out.reshape(query.shape[:-1] + (memory.shape[-1],))

    def backward(self, ctx, gy):
        s = ctx.saved
        q, hidden, weights = s["q"], s["hidden"], s["weights"]
        g = gy.reshape(q.shape[:2] + (gy.shape[-1],))
        d_weights, d_memory = self.read_grads(ctx, g, weights, s["by_batch"])
        d_scores = _softmax_grad(weights, d_weights)         # (R, B, S)
        d_score = (d_scores[..., None] * hidden).sum(axis=(0, 1, 2))
        d_pre = d_scores[..., None] * s["score"] * (1 - hidden * hidden)  # (R, B, S, u)
        d_wq = d_pre.sum(axis=2)                             # (R, B, u)
        d_um = d_pre.sum(axis=0).transpose(1, 0, 2)          # (S, B, u)
        u = d_wq.shape[-1]
        grads = {"query_weight": d_wq.reshape(-1, u).T @ q.reshape(-1, q.shape[-1]),
                 "memory_weight": d_um.reshape(-1, u).T @ s["memory"].reshape(-1, s["memory"].shape[-1]),
                 "score": d_score}
        dq = (d_wq @ s["query_weight"]).reshape(s["query_shape"])
        d_memory = d_memory + d_um @ s["memory_weight"]
        return (dq, d_memory), grads

    def onnx(self, g, step, inputs, params):
        (query, memory), (dq, dm) = inputs, (t.dims[0] for t in step.input_types)
        q = query_rows(g, query, memory, dq)
        wq = g.node("MatMul", [q, g.node("Transpose", [params["query_weight"]])])
        um = g.node("MatMul", [memory, g.node("Transpose", [params["memory_weight"]])])
        hidden = g.node("Tanh", [g.node("Add", [g.node("Unsqueeze", [wq, g.ints([2])]),
                                                g.node("Unsqueeze", [um, g.ints([1])])])])
        scores = g.node("MatMul", [hidden, params["score"]])              # (B, R, S)
        return weighted_read(g, g.node("Softmax", [scores], axis=-1), memory, dm)

    def torch(self, t, step, inputs):
        (dq, dm) = (x.dims[0] for x in step.input_types)
        layer = t.layer(step, f"AdditiveAttention({dq}, {dm}, {self.units})",
                        helper=("AdditiveAttention", ADDITIVE_ATTENTION))
        return f"{layer}({', '.join(inputs)})"


@register("multihead_attention")
class MultiheadAttention(_Attention):
    r"""$y = W_o [h_1; \dots; h_H] + b_o$, $h_i = \mathrm{attention}(W^q_i q, W^k_i k, W^v_i v)$"""

    # Vaswani et al. (2017), "Attention is all you need", NeurIPS, section 3.2.2: the
    # query, keys and values are projected to d = the query's size, split into `heads`
    # of d/heads each, attended head by head, joined and projected again. The layout
    # and initialisation are torch.nn.MultiheadAttention's (kdim, vdim: the key's and
    # value's sizes), so its weights copy over one to one.
    arity = (2, 3)
    args = (Arg("heads", positive), Arg("causal", boolean, False))
    whole = ("memory", "value")
    keeps = ("q", "keys", "values", "Q", "K", "V", "weights", "joined", "query_weight",
             "key_weight", "value_weight", "out_weight")

    def shape(self, query: TensorType, memory: TensorType,
              value: TensorType | None = None) -> TensorType:
        self.check(query, memory)
        if value is not None:
            self.check(query, value)
        if query.dims[0] % self.heads:
            raise ShapeError(f"multihead_attention splits the query's {query.dims[0]} features "
                             f"into {self.heads} heads, which does not divide them",
                             f"pick heads that divide {query.dims[0]}, or project the query "
                             "first, e.g. dense(n)")
        return query.step()

    over_time = DotAttention.over_time
    in_recurrence = DotAttention.in_recurrence

    def params(self, query, memory, value=None):
        d, v = query.dims[0], (memory if value is None else value).dims[0]
        return {"query_weight": (d, d), "query_bias": (d,), "key_weight": (d, memory.dims[0]),
                "key_bias": (d,), "value_weight": (d, v), "value_bias": (d,),
                "out_weight": (d, d), "out_bias": (d,)}

    def init(self, rng, query, memory, value=None):
        # as torch.nn.MultiheadAttention: Xavier-uniform projections (its in_proj_weight
        # is one (3d, d) matrix, so the bound counts 3d outputs), zero biases, and the
        # output projection a Linear layer's U(-1/sqrt(d), 1/sqrt(d))
        shapes = self.params(query, memory, value)
        d = query.dims[0]
        out = {}
        for name in ("query", "key", "value"):
            _, fan_in = shapes[f"{name}_weight"]
            same = memory.dims[0] == d and (value is None or value.dims[0] == d)
            bound = math.sqrt(6 / ((4 * d) if same else (fan_in + d)))
            out[f"{name}_weight"] = rng.uniform(-bound, bound, (d, fan_in)).astype("float32")
            out[f"{name}_bias"] = constant((d,), 0.0)
        out["out_weight"] = fan_in_uniform(rng, d, (d, d))
        out["out_bias"] = constant((d,), 0.0)
        return out

    def flops(self, y, query, memory, value=None) -> int:
        d, v = query.size, (memory if value is None else value).size
        return 2 * d * (2 * d + memory.size + v) + 4 * d  # projections; per key: dot and add

    def split(self, x):
        """(L, B, d) -> (B, h, L, d/h): each head's part, by batch."""
        L, B, d = x.shape
        return x.reshape(L, B, self.heads, d // self.heads).transpose(1, 2, 0, 3)

    @staticmethod
    def join(x):
        """(B, h, L, e) -> (L, B, h*e): split's inverse."""
        B, h, L, e = x.shape
        return x.transpose(2, 0, 1, 3).reshape(L, B, h * e)

    def forward(self, ctx, query, memory, value=None, *, query_weight, query_bias, key_weight,
                key_bias, value_weight, value_bias, out_weight, out_bias):
        xp = ctx.xp
        values = memory if value is None else value
        q = self.rows(query, memory)                                   # (R, B, dq)
        Q = self.split(q @ query_weight.T + query_bias)                # (B, h, R, e)
        K = self.split(memory @ key_weight.T + key_bias)               # (B, h, S, e)
        V = self.split(values @ value_weight.T + value_bias)           # (B, h, S, e)
        scale = 1 / math.sqrt(Q.shape[-1])
        mask = self.mask(ctx, q.shape[0], memory.shape[0], self.causal)  # (R, B|1, S)
        weights = _softmax_last(xp, xp.matmul(Q, K.transpose(0, 1, 3, 2)) * scale,
                                None if mask is None else mask.transpose(1, 0, 2)[:, None])
        joined = self.join(xp.matmul(weights, V))                      # (R, B, d)
        ctx.save(q=q, keys=memory, values=values, Q=Q, K=K, V=V, weights=weights,
                 joined=joined, scale=scale, query_shape=query.shape, apart=value is not None,
                 query_weight=query_weight, key_weight=key_weight, value_weight=value_weight,
                 out_weight=out_weight)
        return (joined @ out_weight.T + out_bias).reshape(query.shape[:-1] + (-1,))

    def backward(self, ctx, gy):
        xp, s = ctx.xp, ctx.saved
        q, Q, K, V, weights = s["q"], s["Q"], s["K"], s["V"], s["weights"]
        g = gy.reshape(q.shape[:2] + (gy.shape[-1],))                  # (R, B, d)
        grads = {"out_weight": _rows(g).T @ _rows(s["joined"]), "out_bias": _rows(g).sum(axis=0)}
        d_heads = self.split(g @ s["out_weight"])                      # (B, h, R, e)
        d_weights = xp.matmul(d_heads, V.transpose(0, 1, 3, 2))        # (B, h, R, S)
        dV = xp.matmul(weights.transpose(0, 1, 3, 2), d_heads)         # (B, h, S, e)
        d_scores = _softmax_grad(weights, d_weights) * s["scale"]
        dQ, dK = xp.matmul(d_scores, K), xp.matmul(d_scores.transpose(0, 1, 3, 2), Q)
        inputs = []
        for name, d, x in (("query", dQ, q), ("key", dK, s["keys"]), ("value", dV, s["values"])):
            d = self.join(d)                                           # (L, B, d)
            grads[f"{name}_weight"] = _rows(d).T @ _rows(x)
            grads[f"{name}_bias"] = _rows(d).sum(axis=0)
            inputs.append(d @ s[f"{name}_weight"])
        dq, d_keys, d_values = inputs
        dq = dq.reshape(s["query_shape"])
        if s["apart"]:
            return (dq, d_keys, d_values), grads
        return (dq, d_keys + d_values), grads

    def onnx(self, g, step, inputs, params):
        query, keys, values = inputs[0], inputs[1], inputs[-1]
        d, e = step.input_types[0].dims[0], step.input_types[0].dims[0] // self.heads

        def heads(x, name, perm):
            x = g.node("Add", [g.node("MatMul", [x, g.node("Transpose", [params[f"{name}_weight"]])]),
                               params[f"{name}_bias"]])
            return g.node("Transpose", [g.node("Reshape", [x, g.ints([0, 0, self.heads, e])])],
                          perm=perm)

        Q = heads(query_rows(g, query, keys, d), "query", [0, 2, 1, 3])  # (B, h, R, e)
        K = heads(keys, "key", [0, 2, 3, 1])                               # (B, h, e, S)
        V = heads(values, "value", [0, 2, 1, 3])                           # (B, h, S, e)
        scores = g.node("Mul", [g.node("MatMul", [Q, K]), g.const(1 / math.sqrt(e))])
        if self.causal:
            scores = causal_scores(g, scores)
        read = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), V])  # (B, h, R, e)
        joined = g.node("Reshape", [g.node("Transpose", [read], perm=[0, 2, 1, 3]),
                                    g.ints([-1, d])])
        out = g.node("MatMul", [joined, g.node("Transpose", [params["out_weight"]])])
        return g.node("Add", [out, params["out_bias"]])

    def torch(self, t, step, inputs):
        dims = [x.dims[0] for x in step.input_types]
        layer = t.layer(step, f"MultiheadAttention({dims[0]}, {dims[1]}, {dims[-1]}, "
                              f"{self.heads}, causal={self.causal})",
                        helper=("MultiheadAttention", MULTIHEAD_ATTENTION))
        return f"{layer}({', '.join(inputs)})"


def _rows(x):
    """(L, B, n) -> (L*B, n): every row of every step, for a weight's gradient."""
    return x.reshape(-1, x.shape[-1])


def query_rows(g, query: str, memory: str, d: int) -> str:
    """ONNX: the query rows (B*R, d) as (B, R, d), R query steps of the memory's B
    sequences (R = 1 inside a loop). Rows fold batch and time example by example."""
    shape = g.node("Concat", [g.rows(memory), g.ints([-1, d])], axis=0)
    return g.node("Reshape", [query, shape])


def causal_scores(g, scores: str) -> str:
    """ONNX: (..., R, S) scores with -inf where key s comes after query step r."""
    ones = g.node("Expand", [g.const(1), g.node("Shape", [scores], start=-2)])  # (R, S)
    later = g.node("Equal", [g.node("Trilu", [ones], upper=0), g.const(0)])
    return g.node("Where", [later, g.const(float("-inf")), scores])


def weighted_read(g, weights: str, memory: str, d: int) -> str:
    """ONNX: sum_s weights[b, r, s] memory[b, s, :], as rows (B*R, d)."""
    return g.node("Reshape", [g.node("MatMul", [weights, memory]), g.ints([-1, d])])


# the generated PyTorch module's versions: the memory is (B, S, d), the query's rows fold
# batch and time example by example
DOT_ATTENTION = '''
def dot_attention(query, keys, values=None, causal=False):
    """Each query row reads the values weighted by softmax_s(q . k_s / sqrt(d)); with
    `causal`, query step r reads keys 1..r only."""
    values = keys if values is None else values
    q = query.reshape(keys.shape[0], -1, query.shape[-1])               # (B, R, d)
    scores = q @ keys.transpose(1, 2) * (1 / math.sqrt(q.shape[-1]))    # (B, R, S)
    if causal:
        later = torch.ones(scores.shape[1:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(later, float("-inf"))
    return (torch.softmax(scores, -1) @ values).reshape(-1, values.shape[-1])
'''

ADDITIVE_ATTENTION = '''
class AdditiveAttention(nn.Module):
    """Bahdanau's attention: the memory's steps weighted by softmax_s(v . tanh(W q + U m_s))."""

    def __init__(self, query, memory, units):
        super().__init__()
        self.query_weight = nn.Parameter(torch.empty(units, query))
        self.memory_weight = nn.Parameter(torch.empty(units, memory))
        self.score = nn.Parameter(torch.empty(units))
        for weight in (self.query_weight, self.memory_weight):
            nn.init.uniform_(weight, -weight.shape[1] ** -0.5, weight.shape[1] ** -0.5)
        nn.init.uniform_(self.score, -units ** -0.5, units ** -0.5)

    def forward(self, query, memory):
        q = query.reshape(memory.shape[0], -1, query.shape[-1])             # (B, R, dq)
        hidden = torch.tanh((q @ self.query_weight.T)[:, :, None]
                            + (memory @ self.memory_weight.T)[:, None])     # (B, R, S, u)
        weights = torch.softmax(hidden @ self.score, -1)                     # (B, R, S)
        return (weights @ memory).reshape(-1, memory.shape[-1])
'''

MULTIHEAD_ATTENTION = '''
class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's computation (its weights one to one, the input
    projection as three matrices) on query rows (B*R, dq) and keys and values (B, S, *)."""

    def __init__(self, query, key, value, heads, causal=False):
        super().__init__()
        self.heads, self.causal = heads, causal
        for name, size in (("query", query), ("key", key), ("value", value)):
            setattr(self, name + "_weight", nn.Parameter(torch.empty(query, size)))
            setattr(self, name + "_bias", nn.Parameter(torch.zeros(query)))
            nn.init.xavier_uniform_(getattr(self, name + "_weight"))
        self.out_weight = nn.Parameter(torch.empty(query, query))
        self.out_bias = nn.Parameter(torch.zeros(query))
        nn.init.uniform_(self.out_weight, -query ** -0.5, query ** -0.5)

    def forward(self, query, keys, values=None):
        values = keys if values is None else values
        q = query.reshape(keys.shape[0], -1, query.shape[-1])             # (B, R, dq)

        def heads(x, name):  # (B, L, d) -> (B, h, L, d/h)
            x = x @ getattr(self, name + "_weight").T + getattr(self, name + "_bias")
            return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

        read = torch.nn.functional.scaled_dot_product_attention(
            heads(q, "query"), heads(keys, "key"), heads(values, "value"), is_causal=self.causal)
        joined = read.transpose(1, 2).reshape(-1, self.out_weight.shape[1])
        return joined @ self.out_weight.T + self.out_bias
'''
