"""What a spec may read of a tensor's type: a dimension by its name (`x.channels`) or
all of them as a list (`shape(x)`), so a block need not be told a size its input has.

Dimensions are per example and per step: the batch and a sequence's time stay symbolic.
"""
from __future__ import annotations

from netdsl.errors import Span, SpecError, suggest
from netdsl.types import TensorType

__all__ = ["SHAPE", "NAMES", "CLASSES", "dimension", "shape_of", "item"]

# the built-in function that gives a tensor's dimensions as a list: shape(x)[0]
SHAPE = "shape"

# a dimension's name -> (its position in the dims, the ranks of the tensors that have it)
NAMES: dict[str, tuple[int, tuple[int, ...]]] = {
    "features": (0, (1,)),      # a vector [N]
    "channels": (0, (2, 3)),    # a signal [C, L] or an image [C, H, W]
    "length": (1, (2,)),        # a signal [C, L]
    "height": (1, (3,)),        # an image [C, H, W]
    "width": (2, (3,)),         # an image [C, H, W]
}
# class indices have a number of classes, not sizes
CLASSES = "classes"


def _kind(t: TensorType) -> str:
    """What a type is, in words: 'the vector [64]'."""
    if t.classes is not None:
        return f"class indices, {t.step()}"
    what = {1: "the vector", 2: "the signal", 3: "the image"}
    return f"{what.get(t.rank, 'the tensor')} {t.step()}"


def _names_of(t: TensorType) -> list[str]:
    """The dimension names a tensor of this type has."""
    if t.classes is not None:
        return [CLASSES]
    return [name for name, (_, ranks) in NAMES.items() if t.rank in ranks]


def dimension(t: TensorType, tensor: str, name: str, span: Span, name_span: Span) -> int:
    """The dimension `name` of the tensor `tensor` of type `t`, or a located error at the
    name asked for."""
    if name not in NAMES and name != CLASSES:
        raise SpecError(f"a tensor has no dimension named '{name}'", name_span,
                        suggest(name, [*NAMES, CLASSES])
                        or f"the named dimensions are {', '.join(NAMES)} and {CLASSES}; "
                           f"any dimension: {SHAPE}({tensor})[i]")
    if name in _names_of(t):
        return t.classes if name == CLASSES else t.dims[NAMES[name][0]]
    has = [f"{tensor}.{n}" for n in _names_of(t)]
    where = f"it has {', '.join(has)}" if has else f"read its dimensions with {SHAPE}({tensor})[i]"
    if name == "length" and t.seq:
        where += "; a sequence's number of steps is known only when it runs"
    raise SpecError(f"'{tensor}' is {_kind(t)}, which has no {name}", span, where)


def shape_of(t: TensorType) -> list[int]:
    """shape(x): the dimensions of one example (of one step of a sequence)."""
    return list(t.dims)


def item(values: list, index: int, text: str, span: Span):
    """values[index] for `shape(x)[index]`, counting from 0 (from -1 at the end)."""
    if -len(values) <= index < len(values):
        return values[index]
    if not values:
        raise SpecError(f"{text} is empty: the tensor has no dimensions to index", span,
                        "a class index has none; read its classes with .classes")
    raise SpecError(f"index {index} is out of range for {text}, which has {len(values)} "
                    f"item(s)", span,
                    f"index from 0 to {len(values) - 1} (or from the end, -1 to -{len(values)})")
