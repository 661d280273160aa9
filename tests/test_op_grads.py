"""Op kernels, from the registry: forward against PyTorch, backward against torch.autograd
and against float64 central differences, with inputs resampled away from kinks."""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netdsl.ops import OPS, bind
from netdsl.ops.base import Ctx, Op
from netdsl.types import TensorType, classes, floats

B, T = 3, 4  # batch, and steps for whole-sequence ops (which see time first: (T, B, ...))
EPS = 1e-6  # central-difference step; inputs stay 10 * EPS away from kinks
SCALAR = TensorType(())


def backends() -> list[str]:
    """numpy always; cupy only where it imports and sees a GPU, so CI skips it cleanly."""
    names = ["numpy"]
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            names.append("cupy")
    except Exception:  # noqa: BLE001  no cupy, or no device
        pass
    return names


@pytest.fixture(params=backends())
def xp(request):
    return importlib.import_module(request.param)


def host(a):
    """An xp array as a numpy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def is_float(t: TensorType) -> bool:
    return t.classes is None


# ---- cases


@dataclass
class Case:
    """One op call on per-example input types, and its PyTorch twin.

    ref(xs, p, aux) builds the twin's output from torch inputs xs and parameters p; aux
    holds `saved` (our ctx.saved as tensors), `extra` and `buffers`. draw(rng, shapes)
    replaces standard-normal inputs; kink(xs) is the distance to the nearest kink;
    extra(rng) gives keyword arrays for forward (maxunpool's indices).
    """

    name: str
    args: tuple
    kwargs: dict
    inputs: list
    ref: Callable
    draw: Callable | None = None
    kink: Callable | None = None
    extra: Callable | None = None
    buffers: Callable | None = None
    training: bool = True
    marks: list = field(default_factory=list)

    @property
    def id(self) -> str:
        words = [self.name, *map(str, self.args), *(f"{k}={v}" for k, v in self.kwargs.items())]
        return "-".join(words).replace(" ", "") + ("" if self.training else "-eval")

    def op(self):
        return bind(OPS[self.name], list(self.args), dict(self.kwargs))


def case(name, *args, inputs, ref, **options) -> Case:
    kwargs = {k: options.pop(k) for k in list(options) if k not in Case.__dataclass_fields__}
    return Case(name, args, kwargs, inputs, ref, **options)


def dot_attention(q, m, v=None):
    """q (B, d) over keys m (T, B, d) and values v (T, B, dv), scaled by sqrt(d)."""
    weights = torch.softmax(torch.einsum("bd,tbd->bt", q, m) / q.shape[-1] ** 0.5, dim=1)
    return torch.einsum("bt,tbd->bd", weights, m if v is None else v)


def additive_attention(q, m, p):
    hidden = torch.tanh(q @ p["query_weight"].T + m @ p["memory_weight"].T)  # (T, B, u)
    weights = torch.softmax(hidden @ p["score"], dim=0)                      # (T, B)
    return torch.einsum("tb,tbd->bd", weights, m)


def multihead_attention(q, m, p, heads, v=None):
    """torch's functional multi-head attention: q (B, d) over m (T, B, dk), values v."""
    out, _ = F.multi_head_attention_forward(
        q[None], m, m if v is None else v, q.shape[-1], heads, None,
        torch.cat([p["query_bias"], p["key_bias"], p["value_bias"]]), None, None, False, 0.0,
        p["out_weight"], p["out_bias"], need_weights=False, use_separate_proj_weight=True,
        q_proj_weight=p["query_weight"], k_proj_weight=p["key_weight"],
        v_proj_weight=p["value_weight"])
    return out[0]


def on_x(fn):
    """A twin that reads only the first input."""
    return lambda xs, p, aux: fn(xs[0])


def abs_min(*which):
    """Kink distance for ops with a kink at 0 in the given inputs."""
    return lambda xs: min(np.abs(xs[i]).min() for i in which)


def gaps(i=0):
    """Kink distance for max-like ops: the smallest gap between two values of input i."""
    return lambda xs: np.diff(np.sort(xs[i], axis=None)).min()


def positive(rng, shapes):
    return [0.5 + rng.random(s) for s in shapes]


def away_from_zero(rng, shapes):
    """Standard normal inputs, except the last, which is kept at least 0.5 from zero."""
    *first, last = shapes
    signs = np.where(rng.random(last) < 0.5, -1, 1)
    return [rng.standard_normal(s) for s in first] + [signs * (0.5 + rng.random(last))]


def probabilities(rng, shapes):
    """Logits, then targets in [0, 1]."""
    return [rng.standard_normal(shapes[0])] + [rng.random(s) for s in shapes[1:]]


def per_example(b, rank):
    """Insert ones after the batch axis, as the netdsl broadcasting rule aligns dims."""
    return b.reshape(b.shape[:1] + (1,) * (rank - b.dim()) + tuple(b.shape[1:]))


def binary(fn):
    def ref(xs, p, aux):
        rank = max(x.dim() for x in xs)
        return fn(*(per_example(x, rank) for x in xs))

    return ref


def conv_ref(stride=1, padding=0, dilation=1, groups=1):
    def ref(xs, p, aux):
        fn = {3: F.conv1d, 4: F.conv2d}[xs[0].dim()]
        return fn(xs[0], p["weight"], p.get("bias"), stride, padding, dilation, groups)

    return ref


def deconv_ref(stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    def ref(xs, p, aux):
        fn = {3: F.conv_transpose1d, 4: F.conv_transpose2d}[xs[0].dim()]
        return fn(xs[0], p["weight"], p.get("bias"), stride, padding, output_padding, groups,
                  dilation)

    return ref


def maxpool_ref(k, s=None, pad=0, ceil=False):
    def ref(xs, p, aux):
        fn = {3: F.max_pool1d, 4: F.max_pool2d}[xs[0].dim()]
        y, indices = fn(xs[0], k, s, pad, ceil_mode=ceil, return_indices=True)
        # the indices a maxunpool will borrow are PyTorch's (ours are int32)
        assert aux.saved["indices"].dtype == torch.int32
        assert torch.equal(aux.saved["indices"].long(), indices)
        return y

    return ref


def avgpool_ref(k, s=None, pad=0, ceil=False):
    def ref(xs, p, aux):
        fn = {3: F.avg_pool1d, 4: F.avg_pool2d}[xs[0].dim()]
        return fn(xs[0], k, s, pad, ceil_mode=ceil, count_include_pad=True)

    return ref


def pooled_indices(k, s, pad, dims):
    """Extra input for maxunpool: the indices our maxpool finds on a random input."""

    def extra(rng):
        op = bind(OPS["maxpool"], [k], {"stride": s, "pad": pad})
        ctx = Ctx(np)
        op.forward(ctx, rng.standard_normal((B, *dims)))
        return {"indices": ctx.saved["indices"]}

    return extra


def unpool_ref(k, s=None, pad=0):
    def ref(xs, p, aux):
        fn = {3: F.max_unpool1d, 4: F.max_unpool2d}[xs[0].dim()]
        return fn(xs[0], aux.extra["indices"].long(), k, s, pad)

    return ref


def bed_of_nails(scale):
    def ref(xs, p, aux):
        x = xs[0]
        y = x.new_zeros(x.shape[:2] + tuple(n * s for n, s in zip(x.shape[2:], scale)))
        y[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in scale)] = x
        return y

    return ref


def centre_crop(xs, p, aux):
    x, like = xs
    tops = [(n - m) // 2 for n, m in zip(x.shape[2:], like.shape[2:])]
    index = tuple(slice(top, top + m) for top, m in zip(tops, like.shape[2:]))
    return x[(slice(None), slice(None)) + index]


def batchnorm_ref(xs, p, aux):
    x = xs[0]
    if aux.training:
        return F.batch_norm(x, None, None, p["weight"], p["bias"], True, 0.1, 1e-5)
    return F.batch_norm(x, aux.buffers["running_mean"], aux.buffers["running_var"],
                        p["weight"], p["bias"], False, 0.1, 1e-5)


def running_stats(rng):
    return {"running_mean": rng.standard_normal(4), "running_var": 0.5 + rng.random(4)}


def project_ref(stride):
    def ref(xs, p, aux):
        z = F.conv2d(xs[0], p["weight"], None, stride)
        stats = (None, None) if aux.training else \
            (aux.buffers["running_mean"], aux.buffers["running_var"])
        return F.batch_norm(z, *stats, p["bn_weight"], p["bn_bias"], aux.training, 0.1, 1e-5)

    return ref


def noise_ref(std):
    def ref(xs, p, aux):
        x = xs[0]
        noise = aux.rng().standard_normal(tuple(x.shape), dtype=aux.dtype)
        return x + std * torch.as_tensor(host(noise))

    return ref


def normal_ref(xs, p, aux):
    return torch.as_tensor(host(aux.rng().standard_normal((B, 3), dtype=aux.dtype)))


def kl_ref(xs, p, aux):
    mu, logvar = xs
    return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(dim=1)).mean()


def hinge_ref(margin):
    def ref(xs, p, aux):
        score, y = xs
        return F.relu(margin - score * (2 * y - 1).to(score.dtype)[:, None]).mean()

    return ref


def hinge_kink(margin):
    return lambda xs: np.abs(margin - xs[0][:, 0] * (2 * xs[1] - 1)).min()


CASES = [
    # activations
    case("sigmoid", inputs=[floats(10)], ref=on_x(torch.sigmoid)),
    case("tanh", inputs=[floats(3, 4)], ref=on_x(torch.tanh)),
    case("relu", inputs=[floats(4, 3, 3)], ref=on_x(F.relu), kink=abs_min(0)),
    case("leaky_relu", 0.2, inputs=[floats(5)], ref=on_x(lambda x: F.leaky_relu(x, 0.2)),
         kink=abs_min(0)),
    case("leaky_relu", -0.5, inputs=[floats(5)], ref=on_x(lambda x: F.leaky_relu(x, -0.5)),
         kink=abs_min(0)),
    case("prelu", inputs=[floats(5)], ref=lambda xs, p, aux: F.prelu(xs[0], p["weight"]),
         kink=abs_min(0)),
    case("prelu", channels=4, inputs=[floats(4, 3, 2)],
         ref=lambda xs, p, aux: F.prelu(xs[0], p["weight"]), kink=abs_min(0)),
    case("elu", alpha=0.5, inputs=[floats(7)], ref=on_x(lambda x: F.elu(x, 0.5)),
         kink=abs_min(0)),
    case("softplus", inputs=[floats(7)], ref=on_x(F.softplus)),
    case("gelu", inputs=[floats(3, 4)], ref=on_x(lambda x: F.gelu(x, approximate="tanh"))),
    case("softmax", inputs=[floats(10)], ref=on_x(lambda x: F.softmax(x, -1))),
    case("softmax", 0, inputs=[floats(4, 3)], ref=on_x(lambda x: F.softmax(x, 1))),
    case("log_softmax", axis=0, inputs=[floats(5, 3)], ref=on_x(lambda x: F.log_softmax(x, 1))),
    case("log_softmax", inputs=[floats(2, 5)], ref=on_x(lambda x: F.log_softmax(x, -1))),
    case("identity", inputs=[floats(2, 2)], ref=on_x(lambda x: x)),
    case("identity", inputs=[classes(4, 2)], ref=on_x(lambda x: x)),
    case("exp", inputs=[floats(4)], ref=on_x(torch.exp)),
    case("log", inputs=[floats(4)], ref=on_x(torch.log), draw=positive),
    case("stop_gradient", inputs=[floats(4)], ref=on_x(lambda x: x.detach())),
    # dense layers and embeddings
    case("dense", 5, inputs=[floats(6)],
         ref=lambda xs, p, aux: F.linear(xs[0], p["weight"], p["bias"])),
    case("dense", 5, False, inputs=[floats(6)],
         ref=lambda xs, p, aux: F.linear(xs[0], p["weight"])),
    case("embedding", 4, inputs=[classes(7)],
         ref=lambda xs, p, aux: F.embedding(xs[0], p["weight"])),
    case("embedding", 4, 9, inputs=[classes(3, 5)],
         ref=lambda xs, p, aux: F.embedding(xs[0], p["weight"])),
    # convolutions
    case("conv", 4, 3, pad=1, inputs=[floats(2, 5, 5)], ref=conv_ref(padding=1)),
    case("conv", 4, [3, 2], stride=2, pad=[1, 0], inputs=[floats(2, 6, 5)],
         ref=conv_ref(2, (1, 0))),
    case("conv", 4, 2, dilation=2, groups=2, bias=False, inputs=[floats(4, 6, 5)],
         ref=conv_ref(dilation=2, groups=2)),
    case("conv", 3, 4, pad="same", inputs=[floats(2, 6, 5)], ref=conv_ref(padding="same"),
         marks=[pytest.mark.filterwarnings("ignore:Using padding='same'")]),
    case("conv", 2, 3, stride=[1, 2], pad=[2, 1], dilation=[2, 1], inputs=[floats(3, 5, 6)],
         ref=conv_ref((1, 2), (2, 1), (2, 1))),
    case("conv1d", 3, 3, stride=2, pad=1, inputs=[floats(2, 9)], ref=conv_ref(2, 1)),
    case("conv2d", 3, 3, pad="valid", dilation=[1, 2], inputs=[floats(2, 5, 6)],
         ref=conv_ref(dilation=(1, 2))),
    case("conv_transpose", 4, 3, stride=2, pad=1, output_pad=1, groups=2,
         inputs=[floats(4, 3, 3)], ref=deconv_ref(2, 1, 1, 2)),
    case("conv_transpose", 2, 3, dilation=2, output_pad=1, bias=False, inputs=[floats(2, 3, 4)],
         ref=deconv_ref(1, 0, 1, 1, 2)),
    case("conv_transpose", 2, [2, 3], stride=[2, 1], pad=[0, 1], inputs=[floats(3, 3, 3)],
         ref=deconv_ref((2, 1), (0, 1))),
    case("deconv", 2, 4, stride=2, pad=1, inputs=[floats(3, 5)], ref=deconv_ref(2, 1)),
    case("project", 6, 2, inputs=[floats(4, 5, 5)], ref=project_ref(2)),
    case("project", 6, inputs=[floats(4, 3, 3)], ref=project_ref(1), training=False,
         buffers=lambda rng: {"running_mean": rng.standard_normal(6),
                              "running_var": 0.5 + rng.random(6)}),
    case("project", 4, inputs=[floats(4, 3, 3)], ref=on_x(lambda x: x)),
    # pooling and upsampling
    case("maxpool", 2, inputs=[floats(2, 4, 4)], ref=maxpool_ref(2), kink=gaps()),
    case("maxpool", 3, stride=2, pad=1, inputs=[floats(2, 5, 6)], ref=maxpool_ref(3, 2, 1),
         kink=gaps()),
    case("maxpool", 2, ceil=True, inputs=[floats(2, 5, 5)], ref=maxpool_ref(2, ceil=True),
         kink=gaps()),
    case("maxpool", [2, 3], stride=[1, 2], inputs=[floats(1, 4, 7)],
         ref=maxpool_ref((2, 3), (1, 2)), kink=gaps()),
    case("maxpool", 3, 2, 1, True, inputs=[floats(2, 8)], ref=maxpool_ref(3, 2, 1, True),
         kink=gaps()),
    case("avgpool", 3, stride=2, pad=1, inputs=[floats(2, 5)], ref=avgpool_ref(3, 2, 1)),
    case("avgpool", 2, inputs=[floats(2, 4, 5)], ref=avgpool_ref(2)),
    case("avgpool", 2, ceil=True, inputs=[floats(2, 5, 5)], ref=avgpool_ref(2, ceil=True)),
    case("avgpool", 3, 2, 1, True, inputs=[floats(2, 6, 6)], ref=avgpool_ref(3, 2, 1, True)),
    case("global_avgpool", inputs=[floats(3, 4, 4)], ref=on_x(lambda x: x.mean((2, 3)))),
    case("gap", inputs=[floats(3, 5)], ref=on_x(lambda x: x.mean(2))),
    case("global_maxpool", inputs=[floats(3, 4, 4)], ref=on_x(lambda x: x.amax((2, 3))),
         kink=gaps()),
    case("global_maxpool", inputs=[floats(2, 5)], ref=on_x(lambda x: x.amax(2)), kink=gaps()),
    case("maxunpool", 2, inputs=[floats(2, 3, 3), floats(2, 3, 3)], ref=unpool_ref(2),
         extra=pooled_indices(2, None, 0, (2, 6, 6))),
    case("maxunpool", [2, 3], inputs=[floats(2, 2, 2), floats(2, 2, 2)],
         ref=unpool_ref((2, 3)), extra=pooled_indices([2, 3], None, 0, (2, 4, 6))),
    case("maxunpool", 3, inputs=[floats(2, 3), floats(2, 3)], ref=unpool_ref(3),
         extra=pooled_indices(3, None, 0, (2, 9))),
    case("upsample", inputs=[floats(2, 3, 3)],
         ref=on_x(lambda x: F.interpolate(x, scale_factor=2, mode="nearest"))),
    case("upsample", [2, 3], inputs=[floats(2, 2, 3)],
         ref=on_x(lambda x: F.interpolate(x, scale_factor=(2, 3), mode="nearest"))),
    case("upsample", 3, inputs=[floats(2, 4)],
         ref=on_x(lambda x: F.interpolate(x, scale_factor=3, mode="nearest"))),
    case("upsample", mode="bed_of_nails", inputs=[floats(2, 3, 3)], ref=bed_of_nails((2, 2))),
    case("upsample", [3, 2], "bed_of_nails", inputs=[floats(2, 2, 3)], ref=bed_of_nails((3, 2))),
    # moving elements
    case("flatten", inputs=[floats(2, 3, 3)], ref=on_x(lambda x: x.flatten(1))),
    case("reshape", [3, -1], inputs=[floats(2, 6)], ref=on_x(lambda x: x.reshape(B, 3, -1))),
    case("concat", inputs=[floats(2, 3, 3), floats(3, 3, 3)],
         ref=lambda xs, p, aux: torch.cat(xs, 1)),
    case("concat", axis=-1, inputs=[floats(2, 3), floats(2, 5), floats(2, 1)],
         ref=lambda xs, p, aux: torch.cat(xs, -1)),
    case("split", 4, index=3, inputs=[floats(8)], ref=on_x(lambda x: x.chunk(4, 1)[3])),
    case("split", 2, 1, 0, inputs=[floats(3, 4, 2)], ref=on_x(lambda x: x.chunk(2, 2)[0])),
    case("crop", inputs=[floats(2, 7, 6), floats(5, 4, 3)], ref=centre_crop),
    # arithmetic
    case("add", inputs=[floats(4, 3, 3), floats(4, 3, 3)], ref=binary(torch.add)),
    case("add", inputs=[floats(4, 1, 3), floats(2, 1)], ref=binary(torch.add)),
    case("sub", inputs=[floats(4, 3, 3), floats(3)], ref=binary(torch.sub)),
    case("sub", inputs=[floats(2, 3), floats(2, 3)], ref=binary(torch.sub)),
    case("mul", inputs=[floats(2, 3), floats(2, 3)], ref=binary(torch.mul)),
    case("div", inputs=[floats(2, 3), floats(2, 3)], ref=binary(torch.div), draw=away_from_zero),
    case("mul", inputs=[floats(4, 1, 1), floats(4, 3, 3)], ref=binary(torch.mul)),
    case("mul", inputs=[floats(3), floats(2, 3)], ref=binary(torch.mul)),
    case("div", inputs=[floats(3), SCALAR], ref=binary(torch.div), draw=away_from_zero),
    case("div", inputs=[floats(2, 3), floats(2, 1)], ref=binary(torch.div), draw=away_from_zero),
    case("scale", 0.5, 1, inputs=[floats(3)], ref=on_x(lambda x: 0.5 * x + 1)),
    # normalisation and noise
    case("batchnorm", inputs=[floats(4, 3, 3)], ref=batchnorm_ref),
    case("batchnorm", inputs=[floats(4)], ref=batchnorm_ref),
    case("batchnorm", inputs=[floats(4, 5)], ref=batchnorm_ref, training=False,
         buffers=running_stats),
    case("layernorm", inputs=[floats(3, 6)],
         ref=lambda xs, p, aux: F.layer_norm(xs[0], (6,), p["weight"], p["bias"])),
    case("layernorm", eps=0.1, inputs=[floats(5)],
         ref=lambda xs, p, aux: F.layer_norm(xs[0], (5,), p["weight"], p["bias"], 0.1)),
    case("dropout", 0.3, inputs=[floats(20)],
         ref=lambda xs, p, aux: xs[0] * aux.saved["mask"]),
    case("dropout", 0.3, inputs=[floats(4)], ref=on_x(lambda x: x), training=False),
    case("gaussian_noise", 0.1, inputs=[floats(6)], ref=noise_ref(0.1)),
    case("gaussian_noise", 0.1, inputs=[floats(6)], ref=on_x(lambda x: x), training=False),
    case("normal", [3], inputs=[], ref=normal_ref),
    # losses
    case("mse", inputs=[floats(6), floats(6)], ref=lambda xs, p, aux: F.mse_loss(*xs)),
    case("cross_entropy", inputs=[floats(5), classes(5)],
         ref=lambda xs, p, aux: F.cross_entropy(*xs)),
    case("cross_entropy", inputs=[floats(3, 2, 2), classes(3, 2, 2)],
         ref=lambda xs, p, aux: F.cross_entropy(*xs)),
    case("cross_entropy", weights=[1, 2, 0.5], inputs=[floats(3, 2, 2), classes(3, 2, 2)],
         ref=lambda xs, p, aux: F.cross_entropy(*xs, weight=torch.tensor([1, 2, 0.5],
                                                                         dtype=torch.float64))),
    case("sigmoid_cross_entropy", inputs=[floats(5), floats(5)], draw=probabilities,
         ref=lambda xs, p, aux: F.binary_cross_entropy_with_logits(*xs)),
    case("sigmoid_cross_entropy", label=1, inputs=[floats(1)],
         ref=on_x(lambda z: F.binary_cross_entropy_with_logits(z, torch.ones_like(z)))),
    case("sigmoid_cross_entropy", label=0, inputs=[floats(2, 2)],
         ref=on_x(lambda z: F.binary_cross_entropy_with_logits(z, torch.zeros_like(z)))),
    # reduction='sum': the total over an example's elements, averaged over the batch
    case("mse", reduction="sum", inputs=[floats(2, 3), floats(2, 3)],
         ref=lambda xs, p, aux: F.mse_loss(*xs, reduction="sum") / B),
    case("sigmoid_cross_entropy", reduction="sum", inputs=[floats(6), floats(6)],
         draw=probabilities,
         ref=lambda xs, p, aux: F.binary_cross_entropy_with_logits(*xs, reduction="sum") / B),
    case("sigmoid_cross_entropy", label=1, reduction="sum", inputs=[floats(2, 2)],
         ref=on_x(lambda z: F.binary_cross_entropy_with_logits(
             z, torch.ones_like(z), reduction="sum") / B)),
    case("kl_gaussian", inputs=[floats(4), floats(4)], ref=kl_ref),
    case("hinge", inputs=[floats(1), classes(2)], ref=hinge_ref(1.0), kink=hinge_kink(1.0)),
    case("hinge", margin=0, inputs=[floats(1), classes(2)], ref=hinge_ref(0.0),
         kink=hinge_kink(0.0)),
    # whole sequences
    case("attention", inputs=[floats(4), floats(4, seq=True)], ref=lambda xs, p, aux: dot_attention(*xs)),
    case("attention", inputs=[floats(4), floats(4, seq=True), floats(3, seq=True)],
         ref=lambda xs, p, aux: dot_attention(*xs)),
    case("multihead_attention", 2, inputs=[floats(4), floats(3, seq=True)],
         ref=lambda xs, p, aux: multihead_attention(*xs, p, 2)),
    case("multihead_attention", 2, inputs=[floats(4), floats(3, seq=True), floats(5, seq=True)],
         ref=lambda xs, p, aux: multihead_attention(xs[0], xs[1], p, 2, xs[2])),
    case("additive_attention", 5, inputs=[floats(3), floats(4, seq=True)],
         ref=lambda xs, p, aux: additive_attention(*xs, p)),
    case("last", inputs=[floats(4, seq=True)], ref=on_x(lambda x: x[-1])),
    case("first", inputs=[floats(2, 2, seq=True)], ref=on_x(lambda x: x[0])),
    case("mean", inputs=[floats(3, seq=True)], ref=on_x(lambda x: x.mean(0))),
    case("reverse", inputs=[floats(3, seq=True)], ref=on_x(lambda x: x.flip(0))),
    case("reverse", inputs=[classes(50, seq=True)], ref=on_x(lambda x: x.flip(0))),
]

PARAMS = [pytest.param(c, id=c.id, marks=c.marks) for c in CASES]


# ---- the helper: one case, three checks


class Run:
    """A case made concrete: the op, random inputs and parameters, and our forward."""

    def __init__(self, c: Case, xp, dtype="float64", seed=0):
        self.case, self.xp, self.dtype = c, xp, dtype
        self.op = c.op()
        self.out_type = self.op.shape(*c.inputs)
        rng = np.random.default_rng(seed)
        self.xs = self.draw(rng)
        shapes = self.op.params(*c.inputs)
        self.params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        self.extra = c.extra(rng) if c.extra else {}
        self.buffers = c.buffers(rng) if c.buffers else {}
        self.seed = seed

    def shape_of(self, t: TensorType) -> tuple:
        lead = (T, B) if t.seq else (B,)  # whole sequences arrive time-major
        return (*lead, *t.dims)

    def draw(self, rng):
        """Inputs away from kinks: resampled until the case's kink distance allows a step."""
        c = self.case
        shapes = [self.shape_of(t) for t in c.inputs]
        for _ in range(200):
            if c.draw:
                xs = c.draw(rng, shapes)
            else:
                xs = [rng.standard_normal(s) if is_float(t) else rng.integers(0, t.classes, s)
                      for t, s in zip(c.inputs, shapes)]
            if c.kink is None or c.kink(xs) > 10 * EPS:
                return [x.astype(self.dtype) if x.dtype.kind == "f" else x for x in xs]
        raise AssertionError(f"{c.id}: no draw away from the kinks")

    def ctx(self):
        xp = self.xp
        buffers = {k: xp.asarray(v.astype(self.dtype)) for k, v in self.buffers.items()}
        return Ctx(xp, training=self.case.training, rng=xp.random.default_rng(self.seed),
                   buffers=buffers, batch=B, dtype=self.dtype)

    def forward(self, xs=None, params=None):
        """Our output for the given (numpy) inputs and parameters; a fresh ctx each time,
        so random ops draw the same mask or noise."""
        xp, ctx = self.xp, self.ctx()
        xs = self.xs if xs is None else xs
        params = self.params if params is None else params
        keywords = {k: xp.asarray(v) for k, v in {**params, **self.extra}.items()}
        y = self.op.forward(ctx, *[xp.asarray(x) for x in xs], **keywords)
        return ctx, y

    def objective(self, gy):
        """f(xs, params) = sum(y * gy), whose gradient backward(gy) gives."""
        return lambda xs, params: float((host(self.forward(xs, params)[1]) * gy).sum())

    def torch_twin(self, ctx):
        """The reference output, and the torch inputs and parameters it was built from."""
        c = self.case
        xs = [torch.tensor(x, requires_grad=is_float(t)) for x, t in zip(self.xs, c.inputs)]
        params = {k: torch.tensor(v, requires_grad=True) for k, v in self.params.items()}
        aux = SimpleNamespace(
            saved={k: torch.as_tensor(host(v)) for k, v in ctx.saved.items()
                   if isinstance(v, self.xp.ndarray)},
            extra={k: torch.as_tensor(v) for k, v in self.extra.items()},
            buffers={k: torch.as_tensor(v) for k, v in self.buffers.items()},
            training=c.training, dtype=self.dtype,
            rng=lambda: self.xp.random.default_rng(self.seed),
        )
        return c.ref(xs, params, aux), xs, params


def numeric_grad(f, xs, params, array):
    """Central differences of f with respect to every element of `array` (one of xs or
    params, perturbed in place and restored)."""
    grad = np.zeros(array.shape)
    flat, out = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        up = f(xs, params)
        flat[i] = old - EPS
        down = f(xs, params)
        flat[i] = old
        out[i] = (up - down) / (2 * EPS)
    return grad


def close(ours, theirs, rtol=1e-9, atol=1e-11):
    np.testing.assert_allclose(host(ours), np.asarray(theirs), rtol=rtol, atol=atol)


def floats_out(run: Run) -> bool:
    return run.out_type.classes is None


class TestRegistry:
    def test_every_op_has_a_case(self):
        assert set(OPS) - {c.name for c in CASES} == set()

    @pytest.mark.parametrize("name", sorted(OPS))
    def test_every_op_has_kernels(self, name):
        assert OPS[name].forward is not Op.forward and OPS[name].backward is not Op.backward


@pytest.mark.parametrize("c", PARAMS)
class TestAgainstTorch:
    def test_forward(self, c, xp):
        run = Run(c, xp)
        ctx, y = run.forward()
        expected, _, _ = run.torch_twin(ctx)
        assert isinstance(y, xp.ndarray)
        lead = (T, B) if run.out_type.seq and not run.op.per_step else (B,)
        shape = () if run.op.is_loss else (*lead, *run.out_type.dims)
        assert y.shape == shape
        close(y, expected.detach().numpy())

    def test_backward(self, c, xp):
        run = Run(c, xp)
        if not floats_out(run):
            pytest.skip("no gradient flows through class labels")
        ctx, y = run.forward()
        expected, xs, params = run.torch_twin(ctx)
        gy = np.random.default_rng(1).standard_normal(y.shape)
        input_grads, param_grads = run.op.backward(ctx, xp.asarray(gy))
        if expected.requires_grad:  # not so for stop_gradient, eval dropout or normal
            expected.backward(torch.tensor(gy))
        assert len(input_grads) == len(c.inputs)
        for t, x, grad in zip(c.inputs, xs, input_grads):
            if not is_float(t) or x.grad is None:
                assert grad is None
            else:
                assert grad.shape == tuple(x.shape)
                close(grad, x.grad.numpy())
        assert set(param_grads) == set(params)
        for name, grad in param_grads.items():
            close(grad, params[name].grad.numpy())

    def test_central_differences(self, c, xp):
        run = Run(c, xp)
        if not floats_out(run):
            pytest.skip("no gradient flows through class labels")
        ctx, y = run.forward()
        gy = np.random.default_rng(1).standard_normal(y.shape)
        input_grads, param_grads = run.op.backward(ctx, xp.asarray(gy))
        f = run.objective(gy)
        for t, x, grad in zip(c.inputs, run.xs, input_grads):
            if is_float(t) and grad is not None:
                close(grad, numeric_grad(f, run.xs, run.params, x), rtol=1e-5, atol=1e-6)
        for name, grad in param_grads.items():
            numeric = numeric_grad(f, run.xs, run.params, run.params[name])
            close(grad, numeric, rtol=1e-5, atol=1e-6)

    def test_saves_only_what_it_keeps(self, c, xp):
        """`keeps` is what the planner reads for buffer lifetimes: it must name every array
        forward saves (small Python values such as shapes are free)."""
        run = Run(c, xp)
        ctx, _ = run.forward()
        arrays = {k for k, v in ctx.saved.items() if isinstance(v, xp.ndarray)}
        assert arrays <= set(run.op.keeps)

    def test_float32_stays_float32(self, c, xp):
        """A stray float64 constant would double the memory traffic of every kernel."""
        run = Run(c, xp, dtype="float32")
        ctx, y = run.forward()
        if floats_out(run):
            assert y.dtype == np.float32
            input_grads, param_grads = run.op.backward(ctx, xp.ones(y.shape, dtype=y.dtype))
            grads = [g for g in input_grads if g is not None] + list(param_grads.values())
            assert all(g.dtype == np.float32 for g in grads)


# ---- contracts beyond one call: initialisation, state, randomness, borrowed indices


def make(name, *args, **kwargs):
    return bind(OPS[name], list(args), kwargs)


# (op call, input types, PyTorch's bound for U(-b, b) weights and biases)
INIT_CASES = [
    (("dense", 300), [floats(400)], 1 / math.sqrt(400)),
    (("conv", 32, 3, 1, 0, 1, 2), [floats(16, 8, 8)], 1 / math.sqrt(8 * 9)),
    (("conv1d", 8, 5), [floats(4, 20)], 1 / math.sqrt(4 * 5)),
    # PyTorch's fan_in for a transposed conv is weight.shape[1] * kernel: out/groups * k
    (("conv_transpose", 16, 4, 2, 1, 0, 1, 2), [floats(32, 8, 8)], 1 / math.sqrt(8 * 16)),
]


class TestInit:
    @pytest.mark.parametrize("name", sorted(OPS))
    def test_init_matches_params(self, name):
        c = next(c for c in CASES if c.name == name)
        op = c.op()
        values = op.init(np.random.default_rng(0), *c.inputs)
        shapes = op.params(*c.inputs)
        assert {k: v.shape for k, v in values.items()} == shapes
        assert all(v.dtype == np.float32 for v in values.values())

    @pytest.mark.parametrize("call, inputs, bound", INIT_CASES, ids=lambda v: str(v))
    def test_weights_and_biases_fill_pytorchs_range(self, call, inputs, bound):
        values = make(*call).init(np.random.default_rng(0), *inputs)
        assert all(np.abs(v).max() <= bound for v in values.values())
        assert np.abs(values["weight"]).max() > 0.9 * bound  # and use most of it

    def test_constant_inits(self):
        rng = np.random.default_rng(0)
        bn = make("batchnorm").init(rng, floats(4, 3, 3))
        ln = make("layernorm").init(rng, floats(3, 6))
        assert (bn["weight"] == 1).all() and (bn["bias"] == 0).all()
        assert (ln["weight"] == 1).all() and (ln["bias"] == 0).all() and ln["weight"].shape == (6,)
        assert (make("prelu", 4).init(rng, floats(4, 2))["weight"] == 0.25).all()
        project = make("project", 8, 2).init(rng, floats(4, 5, 5))
        assert (project["bn_weight"] == 1).all() and (project["bn_bias"] == 0).all()

    def test_embedding_is_standard_normal(self):
        w = make("embedding", 64).init(np.random.default_rng(0), classes(1000))["weight"]
        assert abs(w.mean()) < 0.01 and abs(w.std() - 1) < 0.01

    def test_ops_without_params_init_nothing(self):
        assert make("relu").init(np.random.default_rng(0), floats(3)) == {}
        assert make("project", 4).init(np.random.default_rng(0), floats(4, 3, 3)) == {}


class TestCtx:
    def test_defaults(self):
        ctx = Ctx(np)
        assert (ctx.training, ctx.saved, ctx.buffers) == (False, {}, {})
        assert isinstance(ctx.rng, np.random.Generator)

    def test_save_adds_to_saved(self):
        ctx = Ctx(np)
        ctx.save(a=1)
        ctx.save(b=2)
        assert ctx.saved == {"a": 1, "b": 2}

    def test_missing_rules_fail_by_name(self):
        with pytest.raises(NotImplementedError, match="no gradient rule for `custom`"):
            type("Custom", (Op,), {"name": "custom"})().backward(Ctx(np), None)


class TestBatchNormState:
    def test_running_statistics_follow_pytorch(self, xp):
        """Two training steps fold batch statistics in with momentum and the unbiased
        variance; eval then normalises with them."""
        rng = np.random.default_rng(0)
        op = make("batchnorm", momentum=0.3)
        w, b = rng.standard_normal(4), rng.standard_normal(4)
        mean, var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        buffers = {}
        for _ in range(2):
            x = rng.standard_normal((5, 4, 3, 3)) * 3 + 1
            op.forward(Ctx(xp, training=True, buffers=buffers), xp.asarray(x), xp.asarray(w),
                       xp.asarray(b))
            F.batch_norm(torch.tensor(x), mean, var, training=True, momentum=0.3)
        close(buffers["running_mean"], mean.numpy())
        close(buffers["running_var"], var.numpy())
        x = rng.standard_normal((2, 4, 3, 3))
        y = op.forward(Ctx(xp, buffers=buffers), xp.asarray(x), xp.asarray(w), xp.asarray(b))
        expected = F.batch_norm(torch.tensor(x), mean, var, torch.tensor(w), torch.tensor(b))
        close(y, expected.numpy())

    def test_buffers_are_made_on_first_use(self, xp):
        ctx = Ctx(xp)
        make("batchnorm").forward(ctx, xp.ones((2, 3)), xp.ones(3), xp.zeros(3))
        assert set(ctx.buffers) == {"running_mean", "running_var"}

    def test_project_keeps_its_own_statistics(self, xp):
        ctx = Ctx(xp, training=True)
        x = xp.asarray(np.random.default_rng(0).standard_normal((4, 2, 4, 4)))
        make("project", 3, 2).forward(ctx, x, xp.ones((3, 2, 1, 1)), xp.ones(3), xp.zeros(3))
        assert ctx.buffers["running_mean"].shape == (3,)


class TestRandomOps:
    def test_dropout_mask_is_inverted_and_drops_about_p(self, xp):
        ctx = Ctx(xp, training=True, rng=xp.random.default_rng(0))
        x = xp.ones((100, 100), dtype=xp.float32)
        y = host(make("dropout", 0.25).forward(ctx, x))
        assert set(np.unique(y)) == {0, np.float32(1 / 0.75)}
        assert abs((y == 0).mean() - 0.25) < 0.02

    @pytest.mark.parametrize("call", [("dropout", 0.5), ("gaussian_noise", 1.0)])
    def test_identity_in_eval(self, xp, call):
        x = xp.asarray(np.random.default_rng(0).standard_normal((4, 5)))
        ctx = Ctx(xp, training=False)
        op = make(*call)
        assert op.forward(ctx, x) is x
        assert op.backward(ctx, x)[0][0] is x

    def test_noise_has_the_given_std(self, xp):
        ctx = Ctx(xp, training=True, rng=xp.random.default_rng(0))
        y = host(make("gaussian_noise", 0.5).forward(ctx, xp.zeros((200, 200))))
        assert abs(y.std() - 0.5) < 0.01

    def test_normal_takes_batch_and_dtype_from_ctx(self, xp):
        ctx = Ctx(xp, rng=xp.random.default_rng(0), batch=7, dtype="float32")
        y = make("normal", [2, 3]).forward(ctx)
        assert y.shape == (7, 2, 3) and y.dtype == np.float32


class TestMaxUnpool:
    def test_borrows_the_maxpool_indices(self):
        assert OPS["maxunpool"].borrows == {"indices": ("pooled", "indices")}
        assert "indices" in OPS["maxpool"].keeps and "indices" in OPS["maxunpool"].keeps

    # sizes that unpooling restores, so the plane indices mean the same cells
    @pytest.mark.parametrize("k, s, p, size", [(2, 2, 0, (6, 8)), (3, 3, 0, (6, 9)),
                                               ([2, 3], [2, 3], [1, 1], (6, 7))])
    def test_unpool_of_pool_matches_pytorch(self, xp, k, s, p, size):
        """The executor's hand-over: maxpool's saved indices become maxunpool's keyword."""
        x = np.random.default_rng(0).standard_normal((2, 3, *size))
        pool_ctx, unpool_ctx = Ctx(xp), Ctx(xp)
        pooled = make("maxpool", k, s, p).forward(pool_ctx, xp.asarray(x))
        y = make("maxunpool", k, s, p).forward(unpool_ctx, pooled, pooled,
                                               indices=pool_ctx.saved["indices"])
        t_pooled, t_indices = F.max_pool2d(torch.tensor(x), k, s, p, return_indices=True)
        expected = F.max_unpool2d(t_pooled, t_indices, k, s, p)
        assert y.shape == expected.shape == x.shape
        close(y, expected.numpy())


class TestAtScale:
    """Layouts that small shapes could hide: float32 at typical sizes, against PyTorch."""

    @pytest.mark.parametrize("stride, groups", [(1, 1), (2, 4)])
    def test_conv(self, xp, stride, groups):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 16, 20, 20)).astype(np.float32)
        w = rng.standard_normal((32, 16 // groups, 3, 3)).astype(np.float32) * 0.1
        b = rng.standard_normal(32).astype(np.float32)
        op, ctx = make("conv", 32, 3, stride=stride, pad=1, groups=groups), Ctx(xp)
        y = op.forward(ctx, xp.asarray(x), xp.asarray(w), xp.asarray(b))
        xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        yt = F.conv2d(xt, wt, torch.tensor(b), stride, 1, 1, groups)
        close(y, yt.detach().numpy(), rtol=1e-4, atol=1e-4)
        gy = rng.standard_normal(yt.shape).astype(np.float32)
        (dx,), grads = op.backward(ctx, xp.asarray(gy))
        yt.backward(torch.tensor(gy))
        close(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
        close(grads["weight"], wt.grad.numpy(), rtol=1e-4, atol=1e-3)


class TestHostSlabs:
    """On the host, conv, batchnorm, max-pooling and relu split their work over threads
    (one slab of the batch or of the channels each): the same results as in one piece."""

    CALLS = [
        (("conv", 8, 3), {"pad": 1}, (6, 5, 9, 9)),
        (("conv", 8, 3), {"stride": 2, "pad": 1}, (6, 5, 9, 9)),
        (("conv", 20, 3), {"pad": 1}, (6, 18, 7, 7)),      # dx as a convolution
        (("conv", 8, 1), {}, (6, 5, 9, 9)),                # pointwise
        (("batchnorm",), {}, (6, 5, 4, 4)),
        (("maxpool", 3), {"stride": 1, "pad": 1}, (6, 5, 9, 9)),
        (("maxpool", 2), {}, (6, 5, 9, 9)),
        (("relu",), {}, (6, 5, 4, 4)),
    ]

    @staticmethod
    def run(call, kwargs, shape, threads, monkeypatch):
        from netdsl.runtime import host  # importing it lends the ops its threads

        monkeypatch.setattr(host, "host_threads", lambda: threads)
        monkeypatch.setattr(host, "MIN_SPLIT_BYTES", 0)
        rng = np.random.default_rng(0)
        op = make(*call, **kwargs)
        params = op.init(rng, floats(*shape[1:]))
        x = rng.standard_normal(shape).astype(np.float32)
        ctx = Ctx(np, training=True)
        y = op.forward(ctx, x, **params)
        (dx,), grads = op.backward(ctx, rng.standard_normal(y.shape).astype(np.float32))
        return [y, dx, *grads.values()]

    def test_slabs_run_at_once_and_a_helper_s_failure_reaches_the_caller(self, monkeypatch):
        import threading

        from netdsl.ops import parallel
        from netdsl.runtime import host  # importing it lends the ops its threads

        monkeypatch.setattr(host, "host_threads", lambda: 2)
        meet = threading.Barrier(2, timeout=10)  # broken unless both slabs run at once

        def both(part):
            meet.wait()
            return threading.get_ident()

        def helper_fails(part):
            meet.wait()
            if threading.current_thread() is not threading.main_thread():
                raise ValueError("slab failed")

        idents = parallel.slab_map(np, both, 2, 1 << 30)
        assert len(set(idents)) == 2
        with pytest.raises(ValueError, match="slab failed"):
            parallel.slab_map(np, helper_fails, 2, 1 << 30)
        assert parallel.slab_map(np, lambda part: (part.start, part.stop), 4, 1 << 30) \
            == [(0, 1), (1, 2), (2, 3), (3, 4)]

    def test_the_threads_keep_nothing_of_a_hand_over(self, monkeypatch):
        import gc
        import weakref

        from netdsl.ops import parallel
        from netdsl.runtime import host

        monkeypatch.setattr(host, "host_threads", lambda: 2)

        class Step:  # stands for a step's arrays, reachable only through the slabs' closure
            pass

        held = Step()
        gone = weakref.ref(held)
        parallel.slab_map(np, lambda part: held, 2, 1 << 30)
        del held
        gc.collect()
        assert gone() is None

    @pytest.mark.parametrize("call, kwargs, shape", CALLS)
    def test_slabs_match_one_piece(self, call, kwargs, shape, monkeypatch):
        whole = self.run(call, kwargs, shape, 1, monkeypatch)
        for ours, theirs in zip(self.run(call, kwargs, shape, 4, monkeypatch), whole):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)  # sum order
