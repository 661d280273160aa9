"""Attention: a query reads a weighted average of a whole sequence (the memory).

Both ops run per step for the query and see the memory whole: `memory` is listed in
`whole`, so inside a recurrence (a decoder) each step's query attends over every step
of the memory (the encoder's outputs), and outside one every query step does. The
memory arrives time-major, (S, B, d); the query as (R*B, d), R query steps of the
same B sequences (R = 1 inside a loop), and the result has the query's rows.

In a padded batch (`NAME.lengths`) an executor gives the memory's lengths as
`ctx.lengths`: no query reads a memory step past its sequence's end, so an example's
result does not depend on the padding that shares its batch.
"""
from __future__ import annotations

import math

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, boolean, positive, register
from netdsl.ops.common import expect_float
from netdsl.ops.numeric import fan_in_uniform
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
                                self.mask(ctx, q.shape[0], memory.shape[0]))  # (R, B, S)
        out, values = self.read(ctx, weights, memory if value is None else value)
        ctx.save(q=q, weights=weights, keys=keys, values=values, scale=scale,
                 query_shape=query.shape, apart=value is not None)
        return out.reshape(query.shape[:-1] + (out.shape[-1],))

    def mask(self, ctx, rows: int, steps: int):
        """Which keys each query row reads, to broadcast over (R, B, S); None: all."""
        visible = self.visible(ctx, steps)
        if not self.causal:
            return visible
        xp = ctx.xp
        earlier = xp.arange(steps)[None, None, :] <= xp.arange(rows)[:, None, None]  # (R, 1, S)
        return earlier if visible is None else earlier & visible

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


def query_rows(g, query: str, memory: str, d: int) -> str:
    """ONNX: the query rows (B*R, d) as (B, R, d), R query steps of the memory's B
    sequences (R = 1 inside a loop). Rows fold batch and time example by example."""
    shape = g.node("Concat", [g.rows(memory), g.ints([-1, d])], axis=0)
    return g.node("Reshape", [query, shape])


def causal_scores(g, scores: str) -> str:
    """ONNX: (B, R, S) scores with -inf where key s comes after query step r."""
    ones = g.node("Expand", [g.const(1), g.node("Shape", [scores], start=1)])  # (R, S)
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
