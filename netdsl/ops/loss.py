"""Losses: each reduces its inputs to one number per example, averaged over the batch.

mse and sigmoid_cross_entropy take `reduction`: 'mean' (the default) averages over every
element of an example as well, like PyTorch's default; 'sum' adds the elements up, so the
loss is a per-example total (a log-likelihood, as in a VAE's evidence lower bound).
"""
from __future__ import annotations

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, choice, number, numbers, optional, register
from netdsl.ops import expr as E
from netdsl.ops.common import expect_float, fmt, is_float
from netdsl.ops.expr import Var
from netdsl.ops.numeric import scalar, sigmoid
from netdsl.ops.routines import overridable
from netdsl.types import TensorType

SCALAR = TensorType(())
REDUCTION = Arg("reduction", choice("mean", "sum"), "mean")


class _Loss(Op):
    is_loss = True
    arity = 2

    def same_dims(self, a: TensorType, b: TensorType, names: str, hint=None) -> None:
        if a.dims != b.dims:
            raise ShapeError(
                f"{self.name} expects {names} of the same shape but got {a} and {b}", hint
            )

    def flops(self, y, x, *rest) -> int:
        return 3 * x.size

    def divisor(self, x) -> int:
        """What the summed elementwise losses of a batch `x` are divided by: every element
        ('mean'), or the examples only ('sum': the total per example, averaged)."""
        return x.size if self.reduction == "mean" else x.shape[0]

    def onnx_reduce(self, g, terms: str, x: str) -> str:
        """ONNX: the elementwise losses `terms` of a batch `x` reduced as `divisor` says."""
        if self.reduction == "mean":
            return g.node("ReduceMean", [terms], keepdims=0)
        return g.node("Div", [g.node("ReduceSum", [terms], keepdims=0), g.count(x)])


@register("mse")
class Mse(_Loss):
    r"""$L = \frac{1}{N} \sum_i (p_i - t_i)^2$, or $\sum_i$ with reduction='sum'"""

    args = (REDUCTION,)
    keeps = ("diff",)  # p - t: one array instead of both inputs

    def shape(self, pred: TensorType, target: TensorType) -> TensorType:
        expect_float(self, pred)
        expect_float(self, target, "mse compares real values; for class labels use cross_entropy")
        self.same_dims(pred, target, "pred and target")
        return SCALAR

    def forward(self, ctx, pred, target):
        diff = pred - target
        ctx.save(diff=diff)
        return scalar(ctx.xp, (diff * diff).sum() / self.divisor(diff))

    def backward(self, ctx, gy):
        diff = ctx.saved["diff"]
        g = diff * (2 * gy / self.divisor(diff))
        return (g, -g), {}

    def onnx(self, g, step, inputs, params):
        diff = g.node("Sub", inputs)
        return self.onnx_reduce(g, g.node("Mul", [diff, diff]), inputs[0])

    def torch(self, t, step, inputs):
        pred, target = inputs
        if self.reduction == "mean":
            return f"F.mse_loss({pred}, {target})"
        return f'F.mse_loss({pred}, {target}, reduction="sum") / {pred}.shape[0]'


@register("cross_entropy")
class CrossEntropy(_Loss):
    r"""$L = -w_y \log \mathrm{softmax}(z)_y$, per position for pixel-wise logits"""

    args = (Arg("weights", optional(numbers), None),)
    keeps = ("probs", "y")  # softmax(logits) and the labels: dlogits = probs - onehot(y)
    accuracy = "class"

    def shape(self, logits: TensorType, y: TensorType) -> TensorType:
        expect_float(self, logits)
        if logits.rank == 0:
            raise ShapeError(f"cross_entropy expects logits [C] or [C,...] but got {logits}")
        c, rest = logits.dims[0], logits.dims[1:]
        if y.classes is None or is_float(y):
            raise ShapeError(
                f"cross_entropy expects class labels as its target but got {y}",
                f"targets of cross_entropy are class labels: declare `target y : class({c})`; "
                "for real-valued targets use mse",
            )
        if y.dims != rest:
            wanted = f"class({c})" + (fmt(rest) if rest else "")
            raise ShapeError(
                f"cross_entropy: logits {logits} need a target {wanted} but got {y}",
                "logits [C] pair with class(C); pixel-wise logits [C,H,W] with class(C)[H,W]",
            )
        if y.classes != c:
            raise ShapeError(
                f"cross_entropy: logits {logits} give {c} classes but the target has {y.classes}",
                f"end the network with dense({y.classes}) or conv({y.classes}, 1)",
            )
        if self.weights is not None and len(self.weights) != c:
            raise ShapeError(
                f"cross_entropy: weights has {len(self.weights)} values but there are {c} classes"
            )
        return SCALAR

    def flops(self, y, logits, target) -> int:
        return 5 * logits.size  # a log-softmax, then a pick per position

    def forward(self, ctx, logits, y):
        """Logits (B, C, *S) and labels (B, *S): the mean over batch and positions, or with
        class weights the weighted mean sum(w_y * nll) / sum(w_y), as PyTorch's."""
        loss, probs = softmax_cross_entropy(ctx.xp, logits, y, self.weights)
        ctx.save(probs=probs, y=y)
        return loss

    def backward(self, ctx, gy):
        probs, y = ctx.saved["probs"], ctx.saved["y"]
        return (softmax_cross_entropy_backward(ctx.xp, gy, probs, y, self.weights), None), {}

    def onnx(self, g, step, inputs, params):
        weights = [] if self.weights is None else [g.const(self.weights)]
        return g.node("SoftmaxCrossEntropyLoss", [*inputs, *weights], reduction="mean")

    def torch(self, t, step, inputs):
        logits, y = inputs
        weights = "" if self.weights is None else f", weight={logits}.new_tensor({list(self.weights)})"
        return f"F.cross_entropy({logits}, {y}{weights})"


def _share(xp, y, weights, dtype):
    """Each position's share of the loss: 1/N, or w_y / sum(w_y) (B, 1, *S)."""
    if weights is None:
        return 1 / y.size
    w = xp.asarray(weights, dtype=dtype)[y[:, None]]
    return w / w.sum()


# below this many classes NumPy's max over the class axis of (B, C) logits pays per row
# (12 us for a batch of 128 digits' logits); over a transposed copy it is 3 us
FEW_CLASSES = 32


def _class_max(xp, logits):
    """The largest logit per position, (B, 1, *S): exact whichever way it is reduced."""
    if logits.ndim == 2 and logits.shape[1] < FEW_CLASSES:
        return xp.ascontiguousarray(logits.T).max(axis=0)[:, None]
    return logits.max(axis=1, keepdims=True)


def _picked(xp, x, y):
    """x's entry at each position's label, (B, 1, *S)."""
    if x.ndim == 2:  # an index pair: a third of take_along_axis's time on (128, 10)
        return x[xp.arange(len(y)), y][:, None]
    return xp.take_along_axis(x, y[:, None], axis=1)


@overridable
def softmax_cross_entropy(xp, logits, y, weights=None):
    """(loss as a 0-d array, probs): the mean of -log softmax(logits)_y over positions
    (weighted by the label's class weight, when given)."""
    shifted = logits - _class_max(xp, logits)
    picked = _picked(xp, shifted, y)
    probs = xp.exp(shifted, out=shifted)   # the labels' entries are read: exp in place
    total = probs.sum(axis=1, keepdims=True)
    probs /= total
    picked -= xp.log(total)  # log p_y
    return scalar(xp, -(picked * _share(xp, y, weights, logits.dtype)).sum()), probs


@overridable
def softmax_cross_entropy_backward(xp, gy, probs, y, weights=None):
    """dlogits = (probs - onehot(y)) * share * gy."""
    classes = xp.arange(probs.shape[1]).reshape((1, -1) + (1,) * (probs.ndim - 2))
    return (probs - (classes == y[:, None])) * (_share(xp, y, weights, probs.dtype) * gy)


@register("sigmoid_cross_entropy")
class SigmoidCrossEntropy(_Loss):
    r"""$L = -\sum_i t_i \log \sigma(z_i) + (1 - t_i) \log (1 - \sigma(z_i))$"""

    arity = (1, 2)
    args = (Arg("label", optional(number), None), REDUCTION)
    keeps = ("logits", "target")
    accuracy = "binary"
    target_range = (0.0, 1.0)

    def shape(self, logits: TensorType, target: TensorType | None = None) -> TensorType:
        expect_float(self, logits)
        usage = "sigmoid_cross_entropy(logits, y) or sigmoid_cross_entropy(logits, label=1)"
        if target is None and self.label is None:
            raise ShapeError("sigmoid_cross_entropy needs a target tensor or a label", usage)
        if target is not None and self.label is not None:
            raise ShapeError(
                "sigmoid_cross_entropy takes a target tensor or a label, not both", usage
            )
        if target is not None:
            expect_float(self, target, "for class labels use cross_entropy")
            self.same_dims(logits, target, "logits and target")
        return SCALAR

    def flops(self, y, logits, *target) -> int:
        return 5 * logits.size

    def forward(self, ctx, logits, target=None):
        xp = ctx.xp
        t = self.label if target is None else target
        # max(z, 0) - z t + log(1 + e^-|z|): no overflow for any z
        loss = xp.maximum(logits, 0) - logits * t + xp.log1p(xp.exp(-xp.abs(logits)))
        ctx.save(logits=logits, target=target)
        return scalar(xp, loss.sum() / self.divisor(logits))

    def backward(self, ctx, gy):
        logits, target = ctx.saved["logits"], ctx.saved["target"]
        scale = gy / self.divisor(logits)
        t = self.label if target is None else target
        dlogits = (sigmoid(ctx.xp, logits) - t) * scale
        if target is None:
            return (dlogits,), {}
        return (dlogits, logits * -scale), {}

    def onnx(self, g, step, inputs, params):
        z, t = Var("z"), Var("t")
        terms = E.maximum(z, 0) - z * t + E.log1p(E.exp(-E.absolute(z)))
        target = inputs[1] if len(inputs) > 1 else g.const(self.label)
        return self.onnx_reduce(g, g.formula(terms, {"z": inputs[0], "t": target}), inputs[0])

    def torch(self, t, step, inputs):
        z = inputs[0]
        target = inputs[1] if len(inputs) > 1 else f"torch.full_like({z}, {self.label!r})"
        if self.reduction == "mean":
            return f"F.binary_cross_entropy_with_logits({z}, {target})"
        return (f'F.binary_cross_entropy_with_logits({z}, {target}, reduction="sum") '
                f"/ {z}.shape[0]")


@register("kl_gaussian")
class KlGaussian(_Loss):
    r"""$L = -\frac{1}{2} \sum_i (1 + v_i - \mu_i^2 - e^{v_i})$ with $v = \log \sigma^2$"""

    keeps = ("mu", "logvar")

    def shape(self, mu: TensorType, logvar: TensorType) -> TensorType:
        expect_float(self, mu)
        expect_float(self, logvar)
        self.same_dims(mu, logvar, "mu and logvar")
        return SCALAR

    def flops(self, y, mu, logvar) -> int:
        return 5 * mu.size

    def forward(self, ctx, mu, logvar):
        ctx.save(mu=mu, logvar=logvar)
        terms = 1 + logvar - mu * mu - ctx.xp.exp(logvar)
        return scalar(ctx.xp, terms.sum() * (-0.5 / mu.shape[0]))  # summed per example

    def backward(self, ctx, gy):
        mu, logvar = ctx.saved["mu"], ctx.saved["logvar"]
        scale = gy / mu.shape[0]
        return (mu * scale, (ctx.xp.exp(logvar) - 1) * (0.5 * scale)), {}

    def onnx(self, g, step, inputs, params):
        mu, v = Var("mu"), Var("v")
        terms = g.formula(1 + v - mu * mu - E.exp(v), dict(zip(("mu", "v"), inputs)))
        total = g.node("Mul", [g.node("ReduceSum", [terms], keepdims=0), g.const(-0.5)])
        return g.node("Div", [total, g.count(inputs[0])])

    def torch(self, t, step, inputs):
        mu, v = inputs
        return f"-0.5 * (1 + {v} - {mu} * {mu} - torch.exp({v})).sum() / {mu}.shape[0]"


@register("hinge")
class Hinge(_Loss):
    r"""$L = \max(0, m - s \cdot (2y - 1))$"""

    args = (Arg("margin", number, 1.0),)
    keeps = ("score", "y")
    accuracy = "sign"

    def shape(self, score: TensorType, y: TensorType) -> TensorType:
        expect_float(self, score)
        if score.dims != (1,):
            raise ShapeError(f"hinge expects a score [1] but got {score}", "end with dense(1)")
        if y.classes != 2 or y.dims != ():
            raise ShapeError(
                f"hinge expects a class(2) target but got {y}",
                "declare `target y : class(2)`",
            )
        return SCALAR

    def forward(self, ctx, score, y):
        sign = (2 * y - 1).astype(score.dtype).reshape(score.shape)  # class 0/1 -> -1/+1
        ctx.save(score=score, y=y)
        return scalar(ctx.xp, ctx.xp.maximum(self.margin - score * sign, 0).mean())

    def backward(self, ctx, gy):
        score, y = ctx.saved["score"], ctx.saved["y"]
        sign = (2 * y - 1).astype(score.dtype).reshape(score.shape)
        active = self.margin - score * sign > 0
        return (active * sign * (-gy / score.shape[0]), None), {}

    def onnx(self, g, step, inputs, params):
        score, y = inputs
        sign = g.node("Cast", [y], to=g.float_type)
        sign = g.node("Unsqueeze", [g.formula(2 * Var("y") - 1, {"y": sign}), g.ints([1])])
        margins = g.formula(self.margin - Var("s") * Var("t"), {"s": score, "t": sign})
        return g.node("ReduceMean", [g.node("Relu", [margins])], keepdims=0)

    def torch(self, t, step, inputs):
        score, y = inputs
        sign = f"(2 * {y} - 1).to({score}.dtype).reshape({score}.shape)"
        return f"torch.clamp({self.margin!r} - {score} * {sign}, min=0).mean()"
