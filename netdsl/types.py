"""The type of a value on an edge: per-example dims, dtype, classes, and a time axis."""
from __future__ import annotations

import math
from dataclasses import dataclass

from netdsl.frozen import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class TensorType:
    """Shape and dtype of one example; the batch (and time, when `seq`) stay symbolic.

    A class-index tensor has dtype int64 and `classes` set: `class(10)` is dims () with
    10 classes, and a pixel-wise target `class(2)[388, 388]` has dims (388, 388).
    """

    dims: tuple[int, ...]
    dtype: str = "float32"
    classes: int | None = None
    seq: bool = False

    @property
    def size(self) -> int:
        """Elements per example (per step for a sequence)."""
        return math.prod(self.dims)

    @property
    def rank(self) -> int:
        return len(self.dims)

    # built directly rather than through dataclasses.replace, which costs several times
    # more: the shape pass makes one or two for every node of a graph

    def with_dims(self, dims) -> "TensorType":
        return TensorType(tuple(dims), self.dtype, self.classes, self.seq)

    def step(self) -> "TensorType":
        """The type of one time step."""
        return self if not self.seq else TensorType(self.dims, self.dtype, self.classes, False)

    def with_seq(self) -> "TensorType":
        """The type of a sequence of this type's steps."""
        return self if self.seq else TensorType(self.dims, self.dtype, self.classes, True)

    def __str__(self) -> str:
        dims = "[" + ",".join(map(str, self.dims)) + "]"
        if self.classes is not None:
            text = f"class({self.classes})" + (dims if self.dims else "")
        else:
            text = dims
        return ("seq " if self.seq and self.classes is not None else "seq" if self.seq else "") + text


def floats(*dims: int, seq: bool = False) -> TensorType:
    """A float32 tensor type, e.g. `floats(3, 32, 32)`."""
    return TensorType(tuple(dims), seq=seq)


def classes(n: int, *dims: int, seq: bool = False) -> TensorType:
    """A class-index tensor type, e.g. `classes(10)` or `classes(2, 388, 388)`."""
    return TensorType(tuple(dims), dtype="int64", classes=n, seq=seq)
