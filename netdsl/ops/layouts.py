"""The memory layouts of a 4-D value (batch, channels, height, width) that ops state they
run in (`Op.layouts`), and what the layout pass (netdsl.lower.layout) reads of them.

NCHW is every value's layout unless that pass changes it: the layout inputs arrive in,
that NCHW-only ops (flatten, dense, reshape) read, and that an output is given back in.
NHWC keeps a position's channels together: a convolution is one GEMM of its columns
(positions, kernel cells x channels) without a transposed result.
"""
from __future__ import annotations

from netdsl.types import TensorType

__all__ = ["NCHW", "NHWC", "NCHW_ONLY", "EITHER", "LAYOUTS", "spatial_2d", "TO_NHWC",
           "TO_NCHW", "channel_axis"]

NCHW, NHWC = "NCHW", "NHWC"
LAYOUTS = (NCHW, NHWC)
NCHW_ONLY = frozenset({NCHW})
EITHER = frozenset(LAYOUTS)
# the permutations of a batched array's axes between the two
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def spatial_2d(x: TensorType) -> bool:
    """Whether `x` is a layout's concern: float (C, H, W) per example, no time axis."""
    return x.rank == 3 and x.classes is None and not x.seq


def channel_axis(axis: int, layout: str) -> int:
    """A per-example axis of (C, H, W) as an axis of the batched array in `layout`."""
    return 1 + axis if layout == NCHW else (3, 1, 2)[axis]
