"""Dense layers and embeddings: learned matrices applied to vectors or looked up by index."""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops import parallel
from netdsl.ops.base import Arg, Op, boolean, optional, positive, register
from netdsl.ops.common import expect_float
from netdsl.ops.numeric import draw_float32, fan_in_uniform, scatter_add
from netdsl.types import TensorType


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
        # BLAS reads the transpose in place; a runtime may split the GEMM (ops.parallel)
        y = parallel.matmul(ctx.xp, x, weight.T, out=ctx.out)
        if bias is not None:
            y += bias
        return y

    def backward(self, ctx, gy):
        xp, x, weight = ctx.xp, ctx.saved["x"], ctx.saved["weight"]
        out = ctx.grad_out
        grads = {"weight": parallel.matmul(xp, gy.T, x, out=out.get("weight"))} \
            if ctx.needs_param_grads else {}
        if self.bias and ctx.needs_param_grads:
            grads["bias"] = gy.sum(axis=0, out=out.get("bias"))
        return (parallel.matmul(xp, gy, weight) if ctx.needs(0) else None,), grads

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
