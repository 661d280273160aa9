"""Dense layers and embeddings: learned matrices applied to vectors or looked up by index."""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops import parallel
from netdsl.ops.base import Arg, Op, boolean, optional, positive, register
from netdsl.ops.common import expect_float
from netdsl.ops.numeric import draw_float32, fan_in_uniform, scatter_add
from netdsl.ops.routines import overridable
from netdsl.types import TensorType


@overridable
def dense_gemm(xp, a, b, out=None):
    """a @ b (into `out` if given), one of a dense layer's GEMMs: x weight^T, gy^T x or
    gy weight. A runtime may choose who multiplies per shape (the native target times
    BLAS's GEMM against its own at first use); else ops.parallel.matmul's."""
    return parallel.matmul(xp, a, b, out=out)


@overridable
def dense_then(xp, x, weight, bias, chain, out=None):
    """x weight^T + bias, then an elementwise `chain` over it (`chain.apply(xp, y)` writes
    it over y): the layer and the chain the lowering joined to it (lower.conv_chain). A
    runtime may apply bias and chain in one pass."""
    y = dense_gemm(xp, x, weight.T, out=out)
    if bias is not None:
        y += bias
    return chain.apply(xp, y)


@overridable
def dense_chain_gradient(xp, y, gy, chain, gy_owned: bool, bias_out=None, bias: bool = True):
    """(g, the bias's gradient) of dense_then: gy taken back through the chain from its
    output y (`chain.gradient`, over gy where the caller owns it), and g summed over the
    batch (into `bias_out` where given; None where not `bias`). A runtime may sum in
    the chain's pass."""
    g = chain.gradient(xp, y, gy, gy if gy_owned else None)
    return g, (g.sum(axis=0, out=bias_out) if bias else None)


@overridable
def dense_products(xp, g, x, weight, need_dx: bool, weight_out=None, need_weight=True):
    """(dx, dweight) of a dense layer from its output's gradient g: g weight and g^T x
    (into `weight_out` where given; None where not needed)."""
    dweight = dense_gemm(xp, g.T, x, out=weight_out) if need_weight else None
    return (dense_gemm(xp, g, weight) if need_dx else None), dweight


@register("dense")
class Dense(Op):
    r"""$y = W x + b$"""

    args = (Arg("units", positive), Arg("bias", boolean, True))
    keeps = ("x", "weight")
    stackable = True
    fresh = True
    fresh_grads = True
    column_linear = True
    fills_out = True
    chain_in = "gemm"

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if x.rank != 1:
            raise ShapeError(
                f"dense expects a vector [N] but got {x}",
                "flatten it first: -> flatten -> dense(...)",
            )
        return x.with_dims((self.units,))

    def params(self, x):
        shapes = {"weight": (self.units, x.dims[0])}
        if self.bias:
            shapes["bias"] = (self.units,)
        return shapes

    def flops(self, y, x) -> int:
        return 2 * x.dims[0] * self.units + (self.units if self.bias else 0)

    def fans(self, weight):
        return weight[1], weight[0]

    def init(self, rng, x):
        return {name: fan_in_uniform(rng, x.dims[0], shape)
                for name, shape in self.params(x).items()}

    def forward(self, ctx, x, weight, bias=None):
        ctx.save(x=x, weight=weight)
        # BLAS reads the transpose in place; a runtime may choose who multiplies
        y = dense_gemm(ctx.xp, x, weight.T, out=ctx.out)
        if bias is not None:
            y += bias
        return y

    def backward(self, ctx, gy):
        xp, x, weight = ctx.xp, ctx.saved["x"], ctx.saved["weight"]
        out = ctx.grad_out
        grads = {"weight": dense_gemm(xp, gy.T, x, out=out.get("weight"))} \
            if ctx.needs_param_grads else {}
        if self.bias and ctx.needs_param_grads:
            grads["bias"] = gy.sum(axis=0, out=out.get("bias"))
        return (dense_gemm(xp, gy, weight) if ctx.needs(0) else None,), grads

    def forward_then(self, ctx, chain, x, weight, bias=None):
        """forward, then an elementwise `chain` over y (dense_then: the native target adds
        the bias and applies the chain in one pass); keeps the chain's output, from which
        the chain's gradient follows."""
        ctx.save(x=x, weight=weight)
        y = dense_then(ctx.xp, x, weight, bias, chain, ctx.out)
        ctx.save(chain_y=y)
        return y

    def backward_then(self, ctx, chain, gy):
        """backward of forward_then, from the chain's output gradient gy. The chain's
        output is let go once its gradient is made, before dx is: one array of the
        output's size fewer at once (the executor clears what a step saved after its
        backward anyway)."""
        xp, saved, out, params = ctx.xp, ctx.saved, ctx.grad_out, ctx.needs_param_grads
        g, dbias = dense_chain_gradient(xp, saved.pop("chain_y"), gy, chain, ctx.gy_owned,
                                        out.get("bias"), self.bias and params)
        dx, dweight = dense_products(xp, g, saved["x"], saved["weight"], ctx.needs(0),
                                     out.get("weight"), params)
        grads = {"weight": dweight} if params else {}
        if dbias is not None:
            grads["bias"] = dbias
        return (dx,), grads

    def onnx(self, g, step, inputs, params):
        return g.node("Gemm", [inputs[0], *params.values()], transB=1)

    def torch(self, t, step, inputs):
        n = step.input_types[0].dims[0]
        layer = t.layer(step, t.call("nn.Linear", n, self.units, bias=None if self.bias else False))
        return f"{layer}({inputs[0]})"


@register("embedding")
class Embedding(Op):
    r"""$y = W_{x}$, row $x$ of a learned $V \times \mathrm{dim}$ table"""

    args = (Arg("dim", positive), Arg("vocab", optional(positive), None))
    keeps = ("x",)  # the indices: the rows to scatter gy back into

    def shape(self, x: TensorType) -> TensorType:
        if x.classes is None or x.dtype.startswith("float"):
            raise ShapeError(
                f"embedding expects class indices (class(V)) but got {x}",
                "declare the input as word indices, e.g. `input w : seq class(5000)`",
            )
        if self.vocab is not None and self.vocab < x.classes:
            raise ShapeError(
                f"embedding vocab={self.vocab} is smaller than the input's {x.classes} classes",
                "leave vocab out to take it from the input",
            )
        return TensorType(x.dims + (self.dim,), seq=x.seq)

    def params(self, x):
        return {"weight": (self.vocab or x.classes, self.dim)}

    def flops(self, y, x) -> int:
        return 0  # a row copy, no arithmetic

    def init(self, rng, x):
        (shape,) = self.params(x).values()
        return {"weight": draw_float32(rng.standard_normal, shape)}  # PyTorch's N(0, 1)

    def forward(self, ctx, x, weight):
        ctx.save(x=x, weight_shape=weight.shape)
        return weight[x]

    def backward(self, ctx, gy):
        xp, x = ctx.xp, ctx.saved["x"]
        dweight = xp.zeros(ctx.saved["weight_shape"], dtype=gy.dtype)
        # a word seen twice in the batch gets both rows of gy
        scatter_add(xp, dweight, x.reshape(-1), gy.reshape(-1, self.dim))
        return (None,), {"weight": dweight}

    def onnx(self, g, step, inputs, params):
        return g.node("Gather", [params["weight"], inputs[0]], axis=0)

    def torch(self, t, step, inputs):
        (vocab, dim), = self.params(*step.input_types).values()
        return f"{t.layer(step, f'nn.Embedding({vocab}, {dim})')}({inputs[0]})"
