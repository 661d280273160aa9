"""The op library: shape rules, parameters and FLOPs, checked against PyTorch and by hand."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from netdsl.errors import ShapeError
from netdsl.ops import ELEMENTWISE, LOSSES, OPS, ArgError, bind
from netdsl.types import TensorType, classes, floats

SCALAR = TensorType(())


def make(name, *args, **kwargs):
    """Bind an op as a spec call would: `make("conv", 64, 3, pad=1)`."""
    return bind(OPS[name], list(args), kwargs)


def ours(name, dims, *args, **kwargs):
    """Our output dims for a float input, or None where the op rejects the settings."""
    try:
        return make(name, *args, **kwargs).shape(floats(*dims)).dims
    except (ShapeError, ArgError):
        return None


def theirs(build, dims):
    """PyTorch's output dims on a zero tensor, or None where PyTorch rejects the settings."""
    try:
        with torch.no_grad():
            return tuple(build()(torch.zeros(1, *dims)).shape[1:])
    except (RuntimeError, ValueError):
        return None


def param_count(op, *xs) -> int:
    return sum(math.prod(shape) for shape in op.params(*xs).values())


def torch_params(module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def raises(name, inputs, *args, error=ShapeError, **kwargs):
    """The error an op raises on binding or on its shape rule."""
    with pytest.raises(error) as info:
        make(name, *args, **kwargs).shape(*inputs)
    return info.value


# (op, positional args, keyword args, inputs, output)
SHAPE_CASES = [
    ("sigmoid", (), {}, [floats(10)], floats(10)),
    ("tanh", (), {}, [floats(3, 4)], floats(3, 4)),
    ("relu", (), {}, [floats(64, 8, 8)], floats(64, 8, 8)),
    ("leaky_relu", (0.2,), {}, [floats(5)], floats(5)),
    ("prelu", (), {"channels": 16}, [floats(16, 4, 4)], floats(16, 4, 4)),
    ("elu", (), {"alpha": 0.5}, [floats(7)], floats(7)),
    ("softplus", (), {}, [floats(7)], floats(7)),
    ("softmax", (), {}, [floats(10)], floats(10)),
    ("log_softmax", (), {"axis": 0}, [floats(10, 3)], floats(10, 3)),
    ("identity", (), {}, [floats(2, 2)], floats(2, 2)),
    ("exp", (), {}, [floats(4)], floats(4)),
    ("log", (), {}, [floats(4)], floats(4)),
    ("stop_gradient", (), {}, [floats(4)], floats(4)),
    ("dense", (256,), {}, [floats(64)], floats(256)),
    ("embedding", (32,), {}, [classes(5000)], floats(32)),
    ("conv", (64, 3), {"pad": 1}, [floats(3, 32, 32)], floats(64, 32, 32)),
    ("conv1d", (8, 5), {}, [floats(4, 100)], floats(8, 96)),
    ("conv2d", (6, 5), {}, [floats(1, 32, 32)], floats(6, 28, 28)),
    ("conv_transpose", (32, 2), {"stride": 2}, [floats(64, 14, 14)], floats(32, 28, 28)),
    ("deconv", (3, 4), {"stride": 2, "pad": 1}, [floats(8, 16)], floats(3, 32)),
    ("project", (128, 2), {}, [floats(64, 32, 32)], floats(128, 16, 16)),
    ("maxpool", (2,), {}, [floats(6, 28, 28)], floats(6, 14, 14)),
    ("avgpool", (3,), {"stride": 2, "pad": 1}, [floats(8, 9)], floats(8, 5)),
    ("global_avgpool", (), {}, [floats(512, 7, 7)], floats(512)),
    ("gap", (), {}, [floats(10, 4)], floats(10)),
    ("global_maxpool", (), {}, [floats(10, 4, 4)], floats(10)),
    ("maxunpool", (2,), {}, [floats(64, 16, 16), floats(64, 16, 16)], floats(64, 32, 32)),
    ("upsample", (), {}, [floats(64, 16, 16)], floats(64, 32, 32)),
    ("flatten", (), {}, [floats(64, 7, 7)], floats(3136)),
    ("reshape", ([16, -1],), {}, [floats(64, 4)], floats(16, 16)),
    ("concat", (), {}, [floats(16, 8, 8), floats(32, 8, 8)], floats(48, 8, 8)),
    ("split", (4,), {"index": 3}, [floats(256)], floats(64)),
    ("crop", (), {}, [floats(64, 136, 136), floats(128, 104, 104)], floats(64, 104, 104)),
    ("add", (), {}, [floats(64, 8, 8), floats(64, 8, 8)], floats(64, 8, 8)),
    ("sub", (), {}, [floats(64, 8, 8), floats(8)], floats(64, 8, 8)),
    ("mul", (), {}, [floats(64, 1, 1), floats(64, 8, 8)], floats(64, 8, 8)),
    ("div", (), {}, [floats(3), SCALAR], floats(3)),
    ("scale", (0.5, 1), {}, [floats(3)], floats(3)),
    ("batchnorm", (), {}, [floats(64, 8, 8)], floats(64, 8, 8)),
    ("layernorm", (), {}, [floats(10, 512)], floats(10, 512)),
    ("dropout", (0.2,), {}, [floats(256)], floats(256)),
    ("gaussian_noise", (0.1,), {}, [floats(64)], floats(64)),
    ("normal", ([20],), {}, [], floats(20)),
    ("mse", (), {}, [floats(64), floats(64)], SCALAR),
    ("cross_entropy", (), {}, [floats(10), classes(10)], SCALAR),
    ("sigmoid_cross_entropy", (), {}, [floats(5), floats(5)], SCALAR),
    ("kl_gaussian", (), {}, [floats(20), floats(20)], SCALAR),
    ("hinge", (), {"margin": 0}, [floats(1), classes(2)], SCALAR),
    ("last", (), {}, [floats(64, seq=True)], floats(64)),
    ("first", (), {}, [floats(64, seq=True)], floats(64)),
    ("reverse", (), {}, [classes(50, seq=True)], classes(50, seq=True)),
    ("mean", (), {}, [floats(64, seq=True)], floats(64)),
    ("attention", (), {}, [floats(32), floats(32, seq=True)], floats(32)),
    ("additive_attention", (16,), {}, [floats(8), floats(32, seq=True)], floats(32)),
    ("multihead_attention", (4,), {}, [floats(8), floats(32, seq=True)], floats(8)),
]


class TestRegistry:
    # every op's shape rule is checked on its cases in test_op_grads (against the shape
    # forward makes); these are worked examples across the families
    @pytest.mark.parametrize("name, args, kwargs, inputs, expected", SHAPE_CASES,
                             ids=[case[0] for case in SHAPE_CASES])
    def test_shape_case(self, name, args, kwargs, inputs, expected):
        assert make(name, *args, **kwargs).shape(*inputs) == expected

    @pytest.mark.parametrize("name", sorted(OPS))
    def test_docstring_is_one_line_of_maths(self, name):
        doc = OPS[name].__doc__
        assert doc and "\n" not in doc.strip() and "$" in doc

    def test_aliases_share_the_class(self):
        assert OPS["gap"] is OPS["global_avgpool"] and OPS["deconv"] is OPS["conv_transpose"]

    def test_elementwise_group(self):
        assert {"relu", "sigmoid", "add", "mul", "scale"} <= ELEMENTWISE
        assert not {"softmax", "conv", "dense", "batchnorm"} & ELEMENTWISE

    def test_losses_group(self):
        assert LOSSES == {"mse", "cross_entropy", "sigmoid_cross_entropy", "kl_gaussian", "hinge"}

    @pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax"])
    def test_keeps_output_not_input(self, name):
        assert OPS[name].keeps == ("y",)

    def test_whole_sequence_ops_are_not_per_step(self):
        assert [OPS[n].per_step for n in ("last", "first", "reverse")] == [False] * 3


class TestBind:
    def test_misspelt_keyword_suggests_the_close_name(self):
        with pytest.raises(ArgError) as info:
            make("conv", 64, 3, strid=2)
        assert info.value.hint == "did you mean 'stride'?" and info.value.where == "strid"

    def test_missing_required_argument(self):
        with pytest.raises(ArgError, match="conv needs argument 'kernel'"):
            make("conv", 64)

    def test_wrong_type(self):
        with pytest.raises(ArgError, match="expects a whole number, got 'x'"):
            make("dense", "x")

    def test_too_many_positional(self):
        with pytest.raises(ArgError, match="at most 2 argument"):
            make("dense", 10, True, 3)

    def test_given_twice(self):
        with pytest.raises(ArgError, match="given twice"):
            make("dense", 10, units=10)

    def test_defaults_fill_in(self):
        op = make("maxpool", 2)
        assert (op.stride, op.pad, op.ceil) == (None, (0,), False)

    def test_pad_word_must_be_known(self):
        with pytest.raises(ArgError, match="'same', 'valid'"):
            make("conv", 8, 3, pad="full")

    def test_reshape_allows_one_inferred_dim(self):
        with pytest.raises(ArgError, match="at most one -1"):
            make("reshape", [-1, -1])

    def test_dropout_rate_is_a_probability(self):
        with pytest.raises(ArgError, match=r"probability in \[0, 1\)"):
            make("dropout", 1.5)


def conv_grid(kernels, strides, pads, dilations, groups):
    return list(itertools.product(kernels, strides, pads, dilations, groups))


# PyTorch warns that even kernels with pad='same' copy the input; the shapes are what matter
@pytest.mark.filterwarnings("ignore:Using padding='same'")
class TestConvAgainstTorch:
    @pytest.mark.parametrize("k, s, p, d, g", conv_grid([1, 2, 3], [1, 2, 3],
                                                        [0, 1, 2, "same", "valid"], [1, 2], [1, 2]))
    @pytest.mark.parametrize("dims", [(4, 9, 8), (4, 3, 5)])
    def test_conv2d(self, dims, k, s, p, d, g):
        build = lambda: nn.Conv2d(4, 6, k, s, p, d, g)  # noqa: E731
        assert ours("conv", dims, 6, k, stride=s, pad=p, dilation=d, groups=g) == \
            theirs(build, dims)

    @pytest.mark.parametrize("k, s, p, d, g", conv_grid([1, 3, 5], [1, 2],
                                                        [0, 2, "same", "valid"], [1, 3], [1, 2]))
    @pytest.mark.parametrize("name", ["conv", "conv1d"])
    def test_conv1d(self, name, k, s, p, d, g):
        build = lambda: nn.Conv1d(2, 4, k, s, p, d, g)  # noqa: E731
        assert ours(name, (2, 11), 4, k, stride=s, pad=p, dilation=d, groups=g) == \
            theirs(build, (2, 11))

    @pytest.mark.parametrize("k, s, p", [([1, 3], [2, 1], [0, 1]), ([3, 5], 1, "same"),
                                         ([5, 2], [1, 3], [2, 0])])
    def test_per_dimension_settings(self, k, s, p):
        build = lambda: nn.Conv2d(3, 5, k, s, p)  # noqa: E731
        assert ours("conv", (3, 10, 12), 5, k, stride=s, pad=p) == theirs(build, (3, 10, 12))

    @pytest.mark.parametrize("k, s, p, op, d, g", list(itertools.product(
        [1, 3], [1, 2, 3], [0, 1], [0, 1, 2], [1, 2], [1, 2])))
    def test_conv_transpose2d(self, k, s, p, op, d, g):
        build = lambda: nn.ConvTranspose2d(4, 6, k, s, p, op, g, dilation=d)  # noqa: E731
        got = ours("conv_transpose", (4, 5, 3), 6, k, stride=s, pad=p, output_pad=op,
                   dilation=d, groups=g)
        assert got == theirs(build, (4, 5, 3))

    @pytest.mark.parametrize("k, s, p, op", list(itertools.product([2, 4], [1, 2], [0, 1, 2],
                                                                  [0, 1])))
    def test_conv_transpose1d(self, k, s, p, op):
        build = lambda: nn.ConvTranspose1d(3, 2, k, s, p, op)  # noqa: E731
        got = ours("deconv", (3, 2), 2, k, stride=s, pad=p, output_pad=op)
        assert got == theirs(build, (3, 2))

    def test_grid_covers_rejections(self):
        # the comparisons above are only meaningful if both sides also reject some settings
        assert theirs(lambda: nn.Conv2d(4, 6, 3, dilation=2), (4, 3, 5)) is None
        assert ours("conv", (4, 3, 5), 6, 3, dilation=2) is None


class TestPoolAgainstTorch:
    POOLS = {"maxpool": (nn.MaxPool1d, nn.MaxPool2d), "avgpool": (nn.AvgPool1d, nn.AvgPool2d)}

    @pytest.mark.parametrize("k, s, p, ceil", list(itertools.product(
        [1, 2, 3], [None, 1, 2, 3], [0, 1], [False, True])))
    @pytest.mark.parametrize("dims", [(2, 4, 5), (2, 7, 7), (2, 6)])
    @pytest.mark.parametrize("name", ["maxpool", "avgpool"])
    def test_pool(self, name, dims, k, s, p, ceil):
        module = self.POOLS[name][len(dims) - 2]
        build = lambda: module(k, s, p, ceil_mode=ceil)  # noqa: E731
        assert ours(name, dims, k, stride=s, pad=p, ceil=ceil) == theirs(build, dims)

    def test_ceil_drops_a_window_starting_in_right_padding(self):
        # floor((5 + 2 - 2 + 1) / 2) + 1 = 4 windows, but the 4th would start at 6 >= 5 + 1
        assert ours("maxpool", (1, 5), 2, pad=1, ceil=True) == (1, 3)
        assert theirs(lambda: nn.MaxPool1d(2, padding=1, ceil_mode=True), (1, 5)) == (1, 3)

    @pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (3, 3, 0), ([2, 3], [2, 1], [1, 0])])
    def test_maxunpool(self, k, s, p):
        pooled, indices = nn.MaxPool2d(k, s, p, return_indices=True)(torch.zeros(1, 3, 9, 10))
        expected = tuple(nn.MaxUnpool2d(k, s, p)(pooled, indices).shape[1:])
        x = floats(*pooled.shape[1:])
        assert make("maxunpool", k, s, p).shape(x, x).dims == expected

    @pytest.mark.parametrize("scale", [2, 3, [2, 1]])
    def test_upsample(self, scale):
        factor = tuple(scale) if isinstance(scale, list) else scale
        build = lambda: nn.Upsample(scale_factor=factor, mode="nearest")  # noqa: E731
        assert ours("upsample", (3, 5, 4), scale) == theirs(build, (3, 5, 4))


# (op call, input, torch module with the same parameters)
PARAM_CASES = [
    (("dense", 10), floats(64), lambda: nn.Linear(64, 10)),
    (("dense", 10, False), floats(64), lambda: nn.Linear(64, 10, bias=False)),
    (("conv1d", 8, 5), floats(4, 100), lambda: nn.Conv1d(4, 8, 5)),
    (("conv", 64, 3), floats(32, 8, 8), lambda: nn.Conv2d(32, 64, 3)),
    (("conv", 64, [3, 1], 1, 0, 1, 4, False), floats(32, 8, 8),
     lambda: nn.Conv2d(32, 64, (3, 1), groups=4, bias=False)),
    (("conv_transpose", 16, 4, 2), floats(32, 8, 8), lambda: nn.ConvTranspose2d(32, 16, 4, 2)),
    (("conv_transpose", 16, 4, 2, 1, 0, 1, 2), floats(32, 8, 8),
     lambda: nn.ConvTranspose2d(32, 16, 4, 2, 1, groups=2)),
    (("batchnorm",), floats(64, 8, 8), lambda: nn.BatchNorm2d(64)),
    (("layernorm",), floats(10, 512), lambda: nn.LayerNorm(512)),
    (("embedding", 32), classes(5000), lambda: nn.Embedding(5000, 32)),
    (("embedding", 32, 6000), classes(5000), lambda: nn.Embedding(6000, 32)),
    (("prelu",), floats(16, 4), lambda: nn.PReLU()),
    (("prelu", 16), floats(16, 4), lambda: nn.PReLU(16)),
]
PARAM_IDS = ["-".join(map(str, call)) for call, _, _ in PARAM_CASES]


class TestParams:
    @pytest.mark.parametrize("call, x, module", PARAM_CASES, ids=PARAM_IDS)
    def test_counts_match_torch(self, call, x, module):
        expected = sum(p.numel() for p in module().parameters())
        assert param_count(make(*call), x) == expected

    @pytest.mark.parametrize("call, x, module", PARAM_CASES, ids=PARAM_IDS)
    def test_layout_matches_torch(self, call, x, module):
        assert make(*call).params(x) == torch_params(module())

    def test_project_is_a_1x1_conv_and_batchnorm(self):
        x = floats(64, 32, 32)
        expected = sum(p.numel() for m in (nn.Conv2d(64, 128, 1, 2, bias=False),
                                           nn.BatchNorm2d(128)) for p in m.parameters())
        assert param_count(make("project", 128, 2), x) == expected

    def test_project_is_identity_when_shapes_agree(self):
        op, x = make("project", 64), floats(64, 8, 8)
        assert (op.shape(x), op.params(x), op.flops(x, x)) == (x, {}, 0)

    def test_project_still_projects_on_stride(self):
        x = floats(64, 8, 8)
        assert make("project", 64, 2).params(x)["weight"] == (64, 64, 1, 1)

    def test_ops_without_weights_have_no_params(self):
        assert make("relu").params(floats(3)) == make("maxpool", 2).params(floats(3, 4)) == {}


class TestFlops:
    def test_dense(self):
        op, x = make("dense", 10), floats(64)
        assert op.flops(op.shape(x), x) == 2 * 64 * 10 + 10

    def test_conv_counts_a_multiply_add_as_two(self):
        op, x = make("conv", 16, 3, groups=2, bias=False), floats(8, 10, 10)
        assert op.flops(op.shape(x), x) == 2 * (8 // 2) * 9 * 16 * 8 * 8

    def test_conv_bias_adds_one_per_output(self):
        op, x = make("conv", 16, 3), floats(8, 10, 10)
        assert op.flops(op.shape(x), x) == 2 * 8 * 9 * 16 * 64 + 16 * 64

    def test_pool_counts_window_elements(self):
        op, x = make("maxpool", 2), floats(6, 28, 28)
        assert op.flops(op.shape(x), x) == 4 * 6 * 14 * 14

    def test_softmax_costs_a_few_per_element(self):
        op, x = make("softmax"), floats(10)
        assert op.flops(x, x) == 5 * 10

    def test_movement_is_free(self):
        assert make("flatten").flops(floats(12), floats(3, 4)) == 0

    @pytest.mark.parametrize("name, args, kwargs, inputs, expected", SHAPE_CASES,
                             ids=[case[0] for case in SHAPE_CASES])
    def test_every_op_counts_whole_flops(self, name, args, kwargs, inputs, expected):
        count = make(name, *args, **kwargs).flops(expected, *inputs)
        assert isinstance(count, int) and count >= 0


class TestActivationErrors:
    def test_prelu_channels_must_match(self):
        err = raises("prelu", [floats(8, 4)], channels=16)
        assert "needs 16 channels" in err.message and "[8,4]" in err.message

    def test_softmax_axis_in_range(self):
        assert "axis 1 is out of range for [10]" in raises("softmax", [floats(10)], 1).message

    def test_class_input_hints_embedding(self):
        assert "embedding" in raises("relu", [classes(10)]).hint

    def test_identity_passes_class_labels(self):
        assert make("identity").shape(classes(10)) == classes(10)


class TestLinearErrors:
    def test_dense_needs_a_vector(self):
        err = raises("dense", [floats(64, 7, 7)], 10)
        assert err.message == "dense expects a vector [N] but got [64,7,7]"
        assert err.hint == "flatten it first: -> flatten -> dense(...)"

    def test_embedding_needs_class_indices(self):
        assert "expects class indices" in raises("embedding", [floats(10)], 8).message

    def test_embedding_vocab_must_cover_the_classes(self):
        err = raises("embedding", [classes(5000)], 8, vocab=100)
        assert "vocab=100 is smaller than the input's 5000 classes" in err.message


class TestConvErrors:
    def test_conv_on_a_vector_suggests_dense(self):
        err = raises("conv", [floats(256)], 64, 3)
        assert err.message == "conv expects [C,L] or [C,H,W] but got [256]"
        assert err.hint == "did you mean dense?"

    def test_conv1d_needs_a_signal(self):
        assert raises("conv1d", [floats(3, 8, 8)], 4, 3).message == \
            "conv1d expects [C,L] but got [3,8,8]"

    def test_conv2d_needs_an_image(self):
        assert raises("conv2d", [floats(3, 8)], 4, 3).message == \
            "conv2d expects [C,H,W] but got [3,8]"

    def test_same_pad_needs_stride_one(self):
        err = raises("conv", [], 8, 3, error=ArgError, stride=2, pad="same")
        assert "pad='same' needs stride 1" in err.message and err.where == "pad"

    def test_groups_must_divide_output_channels(self):
        err = raises("conv", [], 6, 3, error=ArgError, groups=4)
        assert "groups=4 must divide channels=6" in err.message

    def test_groups_must_divide_input_channels(self):
        err = raises("conv", [floats(6, 8, 8)], 8, 3, groups=4)
        assert "groups=4 must divide the 6 input channels" in err.message

    def test_empty_output_names_the_sizes(self):
        err = raises("conv", [floats(3, 4, 4)], 8, 5)
        assert "empty" in err.message and "[4,4]" in err.message and "kernel [5,5]" in err.message

    def test_setting_per_dim_must_fit_the_rank(self):
        err = raises("conv", [floats(3, 8, 8)], 8, [3, 3, 3])
        assert "conv kernel has 3 values but the input has 2 spatial dims" in err.message

    def test_output_pad_below_stride_or_dilation(self):
        err = raises("conv_transpose", [floats(3, 8, 8)], 8, 3, stride=2, output_pad=2)
        assert "output_pad [2,2] must be smaller than stride [2,2]" in err.message

    def test_project_needs_an_image(self):
        assert "project expects" in raises("project", [floats(64)], 64).message


class TestPoolErrors:
    def test_pad_at_most_half_the_kernel(self):
        err = raises("maxpool", [floats(3, 8, 8)], 2, pad=2)
        assert "more than half the kernel" in err.message

    def test_global_pool_needs_spatial_dims(self):
        assert "[C,...]" in raises("gap", [floats(64)]).message

    def test_maxunpool_input_must_match_pooled(self):
        err = raises("maxunpool", [floats(64, 8, 8), floats(64, 16, 16)], 2)
        assert "pooled [64,16,16]" in err.message and "[64,8,8]" in err.message


class TestShapeOpErrors:
    def test_reshape_counts_elements(self):
        assert "3136 elements" in raises("reshape", [floats(64, 7, 7)], [100, 30]).message

    def test_reshape_inferred_dim_must_divide(self):
        assert "not a multiple of 5" in raises("reshape", [floats(64, 7, 7)], [5, -1]).message

    def test_concat_names_each_mismatching_input(self):
        xs = [floats(16, 8, 8), floats(16, 4, 4), floats(8, 8, 8), floats(16, 2, 2)]
        err = raises("concat", xs)
        assert "input 1 is [16,4,4]" in err.message and "input 3 is [16,2,2]" in err.message
        assert "input 2" not in err.message

    def test_concat_negative_axis(self):
        assert make("concat", axis=-1).shape(floats(2, 3), floats(2, 5)) == floats(2, 8)

    def test_split_must_divide(self):
        assert "into 3 equal parts" in raises("split", [floats(10)], 3).message

    def test_split_index_below_parts(self):
        assert "index=4 must be below parts=4" in raises("split", [], 4, error=ArgError,
                                                         index=4).message

    def test_crop_cannot_enlarge(self):
        err = raises("crop", [floats(64, 100, 100), floats(64, 120, 120)])
        assert "larger" in err.message and "dim 1 is 100 < 120" in err.message


dims_lists = st.lists(st.sampled_from([1, 2, 3, 8]), max_size=4).map(tuple)


class TestArith:
    @given(dims_lists, dims_lists)
    def test_broadcast_agrees_with_numpy(self, a, b):
        try:
            expected = np.broadcast_shapes(a, b)
        except ValueError:
            expected = None
        assert ours_binary("add", a, b) == expected

    def test_scale_keeps_the_type(self):
        assert make("scale", 2, shift=1).shape(floats(3, 4)) == floats(3, 4)


def ours_binary(name, a, b):
    try:
        return make(name).shape(floats(*a), floats(*b)).dims
    except ShapeError:
        return None


class TestArithErrors:
    def test_broadcast_clash_names_the_dim(self):
        err = raises("add", [floats(64, 8, 8), floats(32, 8, 8)])
        assert err.message == "cannot broadcast [64,8,8] with [32,8,8]: dim 0 is 64 vs 32"
        assert "project" in err.hint and "1x1 conv" in err.hint

    def test_broadcast_aligns_at_the_right(self):
        assert "dim 2 is 8 vs 64" in raises("mul", [floats(64, 8, 8), floats(64)]).message

    def test_arith_needs_floats(self):
        assert "float" in raises("add", [floats(10), classes(10)]).message


class TestLossErrors:
    def test_cross_entropy_needs_class_targets(self):
        err = raises("cross_entropy", [floats(10), floats(10)])
        assert err.hint == ("targets of cross_entropy are class labels: declare "
                            "`target y : class(10)`; for real-valued targets use mse")

    def test_cross_entropy_class_count(self):
        assert "10 classes but the target has 5" in \
            raises("cross_entropy", [floats(10), classes(5)]).message

    def test_cross_entropy_pixelwise(self):
        assert make("cross_entropy").shape(floats(2, 388, 388), classes(2, 388, 388)) == SCALAR

    def test_cross_entropy_pixelwise_dims_must_agree(self):
        err = raises("cross_entropy", [floats(2, 388, 388), classes(2, 380, 380)])
        assert "class(2)[388,388]" in err.message

    def test_cross_entropy_weights_per_class(self):
        err = raises("cross_entropy", [floats(3), classes(3)], weights=[1, 2])
        assert "weights has 2 values but there are 3 classes" in err.message

    def test_sigmoid_cross_entropy_label_alone(self):
        assert make("sigmoid_cross_entropy", label=1).shape(floats(1)) == SCALAR

    def test_sigmoid_cross_entropy_needs_a_target(self):
        assert "needs a target tensor or a label" in \
            raises("sigmoid_cross_entropy", [floats(5)]).message

    def test_mse_shapes_must_agree(self):
        assert "same shape" in raises("mse", [floats(10), floats(5)]).message

    def test_kl_shapes_must_agree(self):
        assert "same shape" in raises("kl_gaussian", [floats(10), floats(5)]).message

    def test_hinge_needs_one_score(self):
        assert "score [1]" in raises("hinge", [floats(2), classes(2)]).message

    def test_hinge_needs_two_classes(self):
        assert "class(2)" in raises("hinge", [floats(1), classes(3)]).message


class TestSequence:
    def test_last_needs_a_sequence(self):
        assert raises("last", [floats(64)]).message == \
            "last expects a sequence (seq[...]) but got [64]"

    def test_reverse_keeps_the_sequence(self):
        assert make("reverse").shape(floats(8, seq=True)).seq

    def test_first_of_word_indices_is_one_index(self):
        assert make("first").shape(classes(100, seq=True)) == classes(100)

    def test_attention_needs_a_sequence_to_attend_over(self):
        assert "its memory is [32]" in raises("attention", [floats(32), floats(32)]).message

    def test_dot_attention_needs_matching_sizes(self):
        message = raises("attention", [floats(16), floats(32, seq=True)]).message
        assert "sizes must agree: query [16], keys [32]" in message

    def test_attention_with_separate_values_gives_the_values_size(self):
        out = make("attention").shape(floats(16), floats(16, seq=True), floats(7, seq=True))
        assert out == floats(7)
        assert "its memory is [7]" in raises("attention", [floats(16), floats(16, seq=True),
                                                           floats(7)]).message

    def test_attention_reads_its_keys_and_values_whole(self):
        from netdsl.shapes import whole_positions

        assert whole_positions(make("attention")) == {1, 2}
        assert OPS["attention"].per_step and OPS["additive_attention"].whole == ("memory",)
