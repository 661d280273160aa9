"""Helpers the op families share: dims formatting, input checks, the pointwise base."""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops.base import NoLowering, Op, input_names
from netdsl.ops.expr import Var, evaluate
from netdsl.ops.layouts import EITHER, NCHW_ONLY
from netdsl.types import TensorType

LAYOUTS = {2: "[C,L]", 3: "[C,H,W]"}
CLASS_HINT = "class labels are whole numbers; turn them into vectors with embedding(dim)"


def fmt(dims) -> str:
    """Dims as the spec writes them: `[64,7,7]`."""
    return "[" + ",".join(map(str, dims)) + "]"


def as_tuple(value) -> tuple:
    """A per-dimension setting as a tuple (an unconverted default is a plain number)."""
    return value if isinstance(value, tuple) else (value,)


def is_float(x: TensorType) -> bool:
    return x.classes is None and x.dtype.startswith("float")


def expect_float(op: Op, x: TensorType, hint: str | None = CLASS_HINT) -> None:
    if not is_float(x):
        raise ShapeError(f"{op.name} expects a float tensor but got {x}", hint)


def expect_spatial(op: Op, x: TensorType, ranks=(2, 3), hint: str | None = None) -> None:
    """Check for a float [C,L] or [C,H,W] input (whichever `ranks` allows)."""
    expect_float(op, x)
    if x.rank not in ranks:
        wanted = " or ".join(LAYOUTS[r] for r in ranks)
        raise ShapeError(f"{op.name} expects {wanted} but got {x}", hint)


class Pointwise(Op):
    """An op applied element by element: the output has the input's type."""

    elementwise = True
    # forward FLOPs per element; transcendental maps cost a few
    cost = 1

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        return x

    def flops(self, y, *xs) -> int:
        return self.cost * y.size

    def layouts(self, *xs: TensorType) -> frozenset[str]:
        # every element alike, unless a parameter broadcasts along an axis (prelu's)
        return NCHW_ONLY if self.params(*xs) else EITHER

    def onnx(self, g, step, inputs, params):
        return g.formula(*self.formula_of(inputs, "ONNX"))

    def torch(self, t, step, inputs):
        return t.formula(*self.formula_of(inputs, "PyTorch"))

    def formula_of(self, inputs, format: str):
        """(the forward formula, the values its variables name): how an exporter writes
        an elementwise op that has no counterpart of its own there."""
        if not hasattr(self, "formula"):
            raise NoLowering(self, format, self.nearest.get(format))
        names = input_names(type(self))
        return self.formula(*(Var(n) for n in names)), dict(zip(names, inputs))


class FromFormula(Pointwise):
    """A pointwise op computed from its formulas (`formula`, `derivative`) on the host as
    in the GPU's kernels: forward keeps x, the input its derivative reads."""

    keeps = ("x",)
    fresh = True

    def forward(self, ctx, x):
        ctx.save(x=x)
        return formula_value(self, ctx, x)

    def backward(self, ctx, gy):
        return formula_grads(self, ctx, gy), {}


def geometry_of(op: Op, ctx, x):
    """The step's geometry (Ctx.geometry, made by the planner), or, for an op called
    alone, the op's own for the example shape of the batch x."""
    if ctx.geometry is not None:
        return ctx.geometry
    return op.geometry(TensorType(tuple(x.shape[1:])))


def formula_value(op: Op, ctx, *xs):
    """The op's forward formula (ops.expr) evaluated on arrays: where an elementwise op's
    value is written once, for the host and the GPU's generated kernels alike."""
    names = input_names(type(op))
    env = dict(zip(names, xs))
    return evaluate(op.formula(*(Var(n) for n in names)), env, ctx.xp, xs[0].dtype)


def formula_grads(op: Op, ctx, gy) -> tuple:
    """The op's derivative formulas evaluated on gy and what forward saved (its `keeps`,
    under the names the formulas read: y, and the inputs' names)."""
    names = input_names(type(op))
    exprs = op.derivative(Var("gy"), Var("y"), *(Var(n) for n in names))
    env = {"gy": gy, **ctx.saved}
    return tuple(None if e is None else evaluate(e, env, ctx.xp, gy.dtype) for e in exprs)
