"""Normalisation and training-time noise: batchnorm, layernorm, dropout, gaussian_noise."""
from __future__ import annotations

from typing import NamedTuple

from netdsl.errors import ShapeError
from netdsl.ops.base import Arg, Op, number, probability, register
from netdsl.ops.channels import ChannelProgram, Stage, run_channels
from netdsl.ops.common import Pointwise, expect_float
from netdsl.ops.expr import Var, maximum, sqrt
from netdsl.ops.layouts import EITHER, NCHW_ONLY, NHWC, spatial_2d
from netdsl.ops.nhwc import BatchNormNHWC
from netdsl.ops.numeric import batch_norm, batch_norm_backward, constant
from netdsl.types import TensorType


def nonnegative(value) -> float:
    value = number(value)
    if value < 0:
        raise ValueError(f"expects a number >= 0, got {value:g}")
    return value


def fraction(value) -> float:
    value = number(value)
    if not 0 <= value <= 1:
        raise ValueError(f"expects a number in [0, 1], got {value:g}")
    return value


class BatchNormPrograms(NamedTuple):
    """Batch normalisation as per-channel programs (three passes over a channel in
    training forward, two backward)."""

    train: ChannelProgram     # batch statistics, running statistics and y
    eval: ChannelProgram      # y from the running statistics
    backward: ChannelProgram  # with batch statistics: dweight, dbias and dx
    backward_fixed: ChannelProgram  # with the running ones: dx = weight * inv_std * gy


def batch_norm_programs() -> BatchNormPrograms:
    """Batchnorm's formulas, from which the native target generates its kernels.

    They compute what ops.numeric.batch_norm and batch_norm_backward compute with NumPy:
    mean, then biased variance about it, per channel (sums in double precision),
    xhat = (x - mean) / sqrt(var + eps), y = weight * xhat + bias, the running statistics
    folded in with PyTorch's momentum and unbiased variance; backward
    dx = weight / std * (gy - mean(gy) - xhat * mean(gy * xhat)). Forward writes y alone
    and keeps x, the mean and 1/std: backward makes xhat again as it reads x, which
    costs less than writing and reading an xhat array.
    """
    x, gy = Var("x"), Var("gy")
    weight, bias, inv_std = Var("weight"), Var("bias"), Var("inv_std")
    running_mean, running_var = Var("running_mean"), Var("running_var")
    eps, momentum, count = Var("eps"), Var("momentum"), Var("count")
    mean, var, istd, h = Var("mean"), Var("var"), Var("istd"), Var("h")
    output = (("y", (x - mean) * Var("gain") + bias),)
    statistics = (("inv_std", istd), ("mean", mean))
    train = ChannelProgram(
        "batchnorm_train", ("x",), ("weight", "bias", "running_mean", "running_var"),
        ("eps", "momentum"),
        (Stage((("total", x),), (("mean", Var("total") / count),)),
         Stage((("squares", (x - mean) * (x - mean)),),
               (("var", Var("squares") / count), ("istd", 1 / sqrt(var + eps)),
                ("gain", istd * weight)))),
        (*statistics,
         ("new_running_mean", (1 - momentum) * running_mean + momentum * mean),
         ("new_running_var", (1 - momentum) * running_var
          + momentum * var * count / maximum(count - 1, 1))),
        (), output)
    evaluation = ChannelProgram(
        "batchnorm_eval", ("x",), ("weight", "bias", "running_mean", "running_var"),
        ("eps",), (Stage((), (("mean", running_mean), ("istd", 1 / sqrt(running_var + eps)),
                              ("gain", istd * weight))),),
        statistics, (), output)
    normalised = (x - mean) * inv_std
    sums = (("sum_g", gy), ("sum_gh", gy * normalised))
    gradients = (("dbias", Var("sum_g")), ("dweight", Var("sum_gh")))
    scale = ("scale", weight * inv_std)
    backward = ChannelProgram(
        "batchnorm_backward", ("gy", "x"), ("weight", "inv_std", "mean"), (),
        (Stage(sums, (scale, ("mean_g", Var("sum_g") / count),
                      ("mean_gh", Var("sum_gh") / count))),),
        gradients, (("h", normalised),),
        (("dx", Var("scale") * (gy - Var("mean_g") - h * Var("mean_gh"))),))
    fixed = ChannelProgram(
        "batchnorm_backward_fixed", ("gy", "x"), ("weight", "inv_std", "mean"), (),
        (Stage(sums, (scale,)),), gradients, (), (("dx", Var("scale") * gy),))
    return BatchNormPrograms(train, evaluation, backward, fixed)


BATCH_NORM = batch_norm_programs()

# an array's dtype -> its name: str(dtype) takes 3-6 us, and batchnorm's calls are many
_DTYPE_NAMES: dict = {}


def _dtype_name(dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


def normalise(ctx, x, weight, bias, eps: float, momentum: float, programs=BATCH_NORM,
              reads: dict | None = None):
    """Batchnorm's forward for an op's ctx: (y, what its backward reads, for ctx.save).
    The generated programs where the target compiled them (`ctx.compiled`: x, the mean
    and 1/std are kept), else ops.numeric.batch_norm (xhat and 1/std). `programs` may be
    batchnorm's with an elementwise chain after it absorbed (netdsl.lower.fuse), which
    reads the chain's other inputs from `reads`; those run as programs always (the
    caller checks `programs_run` first)."""
    out = ctx.out
    if not programs_run(ctx):
        # a runtime's own routine (the GPU's, synchronised statistics) makes y, which goes
        # where the executor placed it after
        own = batch_norm.provided.get(ctx.xp.__name__) is not None
        y, xhat, inv_std = batch_norm(ctx.xp, x, weight, bias, eps, momentum, ctx.buffers,
                                      ctx.training, **({} if own or out is None
                                                       else {"out": out}))
        if out is not None and y is not out:
            out[...] = y
            y = out
        return y, {"xhat": xhat, "inv_std": inv_std}
    buffers = ctx.buffers
    if "running_mean" not in buffers:
        channels = x.shape[1]
        buffers["running_mean"] = ctx.xp.zeros(channels, dtype=x.dtype)
        buffers["running_var"] = ctx.xp.ones(channels, dtype=x.dtype)
    arrays = {"x": x, "weight": weight, "bias": bias, "running_mean": buffers["running_mean"],
              "running_var": buffers["running_var"], **(reads or {})}
    program = programs.train if ctx.training else programs.eval
    made = run_channels(ctx.xp, program, arrays, {"eps": eps, "momentum": momentum},
                        _dtype_name(x.dtype), None if out is None else {"y": out})
    if ctx.training:   # new arrays: a state_dict taken before keeps its values
        buffers["running_mean"] = made["new_running_mean"]
        buffers["running_var"] = made["new_running_var"]
    return made["y"], {"normalised": x, "mean": made["mean"], "inv_std": made["inv_std"]}


def programs_run(ctx) -> bool:
    """Whether batchnorm runs as its per-channel programs here: the target compiled them,
    and no runtime provides batch_norm itself (data-parallel training's synchronised
    statistics, runtime.sync_bn, keep theirs)."""
    return ctx.compiled and batch_norm.provided.get(ctx.xp.__name__) is None


def normalise_backward(ctx, gy, saved: dict, weight, batch_stats: bool):
    """Batchnorm's backward for an op's ctx, from what `normalise` kept in `saved`:
    (dx, dweight, dbias)."""
    if "normalised" not in saved:
        return batch_norm_backward(ctx.xp, gy, saved["xhat"], saved["inv_std"], weight,
                                   batch_stats)
    made = backward_programs(ctx, gy, saved, weight, batch_stats)
    return made["dx"], made["dweight"], made["dbias"]


def backward_programs(ctx, gy, saved: dict, weight, batch_stats: bool, programs=BATCH_NORM,
                      reads: dict | None = None) -> dict:
    """Every array batchnorm's backward program wrote, by name (dx, dweight, dbias; an
    absorbed chain's other inputs' gradients too), from what `normalise` kept with its
    programs in `saved`."""
    program = programs.backward if batch_stats else programs.backward_fixed
    x = saved["normalised"]
    arrays = {"gy": gy, "x": x, "weight": weight, "inv_std": saved["inv_std"],
              "mean": saved["mean"], **(reads or {})}
    return run_channels(ctx.xp, program, arrays, {}, _dtype_name(x.dtype))


@register("batchnorm")
class BatchNorm(Op):
    r"""$y = \gamma_c (x - \mu_c) / \sqrt{\sigma_c^2 + \epsilon} + \beta_c$ over batch and space"""

    args = (Arg("eps", nonnegative, 1e-5), Arg("momentum", fraction, 0.1))
    # xhat replaces x (on the native target x itself, and its mean); inv_std is one per
    # channel
    keeps = ("xhat", "inv_std", "weight")
    host_split = True  # see runtime.host.one_blas_thread
    fresh = True
    fills_out = True
    init_transparent = True
    programs = BATCH_NORM

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if x.rank == 0:
            raise ShapeError(f"batchnorm expects channels in dim 0, [C] or [C,...], but got {x}")
        return x

    def params(self, x):
        # running mean and variance are statistics, not learned parameters
        return {"weight": x.dims[:1], "bias": x.dims[:1]}

    def flops(self, y, x) -> int:
        return 4 * y.size  # statistics, then subtract, scale and shift

    def init(self, rng, x):
        return {"weight": constant(x.dims[:1], 1.0), "bias": constant(x.dims[:1], 0.0)}

    def buffers(self, x):
        return running_statistics(x.dims[0])

    def layouts(self, x: TensorType) -> frozenset[str]:
        return EITHER if spatial_2d(x) else NCHW_ONLY

    def in_layout(self, layout: str, *xs: TensorType) -> Op:
        return BatchNormNHWC(self) if layout == NHWC else self

    def forward(self, ctx, x, weight, bias):
        return self.forward_with(ctx, self.programs, x, {}, weight, bias)

    def backward(self, ctx, gy):
        saved = ctx.saved
        dx, dweight, dbias = normalise_backward(ctx, gy, saved, saved["weight"],
                                                saved["batch_stats"])
        return (dx,), {"weight": dweight, "bias": dbias}

    # an elementwise chain after a batchnorm runs inside its programs (netdsl.lower.fuse
    # absorbs it): the fused step calls these with the programs that include it

    def programs_run(self, ctx) -> bool:
        """Whether `forward_with` runs the programs it is given here (else the op's NumPy
        path, and a fused step runs its chain apart)."""
        return programs_run(ctx)

    def forward_with(self, ctx, programs, x, reads: dict, weight, bias):
        """y of `programs` (batchnorm's, or with a chain absorbed: its extra inputs in
        `reads`)."""
        # running_mean and running_var live in ctx.buffers, made on first use
        y, kept = normalise(ctx, x, weight, bias, self.eps, self.momentum, programs, reads)
        ctx.save(**kept, weight=weight, batch_stats=ctx.training)
        return y

    def backward_with(self, ctx, programs, gy, reads: dict):
        """((dx,), parameter gradients, every array the backward program wrote), after
        `forward_with` ran its programs."""
        saved = ctx.saved
        made = backward_programs(ctx, gy, saved, saved["weight"], saved["batch_stats"],
                                 programs, reads)
        return (made["dx"],), {"weight": made["dweight"], "bias": made["dbias"]}, made

    def onnx(self, g, step, inputs, params):
        return g.batch_norm(inputs[0], params["weight"], params["bias"],
                            g.buffer(step, "running_mean"), g.buffer(step, "running_var"),
                            self.eps, step.input_types[0].rank + 1)

    def torch(self, t, step, inputs):
        x = step.input_types[0]
        # torch's layers stop at 3 spatial dims; past them BatchNorm1d over the spatial
        # dims flattened into one normalises the same cells per channel
        kind = {1: "1d", 2: "1d", 3: "2d", 4: "3d"}.get(x.rank, "1d")
        layer = t.layer(step, f"nn.BatchNorm{kind}({x.dims[0]}, eps={self.eps!r}, "
                              f"momentum={self.momentum!r})",
                        state={"num_batches_tracked": 0})
        if x.rank > 4:
            return f"{layer}({inputs[0]}.flatten(2)).view_as({inputs[0]})"
        return f"{layer}({inputs[0]})"


def running_statistics(channels: int) -> dict:
    """Batchnorm's running mean and variance as they start (ops.numeric.batch_norm)."""
    return {"running_mean": constant((channels,), 0.0), "running_var": constant((channels,), 1.0)}


@register("layernorm")
class LayerNorm(Op):
    r"""$y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta$ over the last dim"""

    args = (Arg("eps", nonnegative, 1e-5),)
    keeps = ("xhat", "inv_std", "weight")
    fresh = True
    init_transparent = True

    def shape(self, x: TensorType) -> TensorType:
        expect_float(self, x)
        if x.rank == 0:
            raise ShapeError(f"layernorm expects at least one dim but got {x}")
        return x

    def params(self, x):
        return {"weight": x.dims[-1:], "bias": x.dims[-1:]}

    def flops(self, y, x) -> int:
        return 5 * y.size  # mean, variance, subtract, scale and shift

    def init(self, rng, x):
        return {"weight": constant(x.dims[-1:], 1.0), "bias": constant(x.dims[-1:], 0.0)}

    def forward(self, ctx, x, weight, bias):
        centred = x - x.mean(axis=-1, keepdims=True)
        inv_std = 1 / ctx.xp.sqrt((centred * centred).mean(axis=-1, keepdims=True) + self.eps)
        xhat = centred * inv_std
        ctx.save(xhat=xhat, inv_std=inv_std, weight=weight)
        return xhat * weight + bias

    def backward(self, ctx, gy):
        xhat, inv_std, weight = ctx.saved["xhat"], ctx.saved["inv_std"], ctx.saved["weight"]
        rows = tuple(range(gy.ndim - 1))
        g = gy * weight
        dx = inv_std * (g - g.mean(axis=-1, keepdims=True)
                        - xhat * (g * xhat).mean(axis=-1, keepdims=True))
        return (dx,), {"weight": (gy * xhat).sum(axis=rows), "bias": gy.sum(axis=rows)}

    def onnx(self, g, step, inputs, params):
        return g.node("LayerNormalization", [inputs[0], params["weight"], params["bias"]],
                      axis=-1, epsilon=self.eps)

    def torch(self, t, step, inputs):
        n = step.input_types[0].dims[-1]
        return f"{t.layer(step, f'nn.LayerNorm({n}, eps={self.eps!r})')}({inputs[0]})"


@register("dropout")
class Dropout(Pointwise):
    r"""$y = m \odot x / (1 - p)$, $m_i \sim \mathrm{Bernoulli}(1 - p)$ in training; else $y = x$"""

    draws = True
    args = (Arg("p", probability, 0.5),)
    keeps = ("mask",)  # backward needs the sampled mask, neither x nor y
    cost = 2
    inplace = True
    init_transparent = True

    def forward(self, ctx, x):
        if not ctx.training or self.p == 0:
            return x
        # inverted dropout: the mask holds 0 or 1/(1-p), so eval needs no rescaling
        mask = (ctx.rng.random(x.shape, dtype=x.dtype) >= self.p).astype(x.dtype)
        mask *= 1 / (1 - self.p)
        ctx.save(mask=mask)
        return ctx.xp.multiply(x, mask, out=ctx.out)

    def backward(self, ctx, gy):
        mask = ctx.saved.get("mask")
        return (gy if mask is None else gy * mask,), {}

    def onnx(self, g, step, inputs, params):
        if not g.training or self.p == 0:
            return inputs[0]
        return g.node("Dropout", [inputs[0], g.const(self.p), g.const(True)])

    def torch(self, t, step, inputs):
        return f"F.dropout({inputs[0]}, {self.p!r}, self.training)"


@register("gaussian_noise")
class GaussianNoise(Pointwise):
    r"""$y = x + \epsilon$, $\epsilon \sim N(0, \mathrm{std}^2)$ in training; else $y = x$"""

    draws = True
    args = (Arg("std", nonnegative),)
    keeps = ()  # the gradient passes through unchanged
    init_transparent = True

    def forward(self, ctx, x):
        if not ctx.training or self.std == 0:
            return x
        return x + self.std * ctx.rng.standard_normal(x.shape, dtype=x.dtype)

    def backward(self, ctx, gy):
        return (gy,), {}

    def onnx(self, g, step, inputs, params):
        if not g.training or self.std == 0:
            return inputs[0]
        noise = g.node("RandomNormalLike", inputs, scale=self.std)
        return g.node("Add", [inputs[0], noise])

    def torch(self, t, step, inputs):
        x = inputs[0]
        return f"{x} + {self.std!r} * torch.randn_like({x}) if self.training else {x}"
