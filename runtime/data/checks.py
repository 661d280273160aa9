"""Checking the arrays of a data file against the types the spec declares.

Shapes are fitted to the declared ones where that cannot change the layout (flat, or
with axes of 1 added or left out); values must be finite numbers that fit in float32,
and class labels whole numbers in [0, classes). A bad value is named by its place in
the file, with a hint on how to fix it.
"""
from __future__ import annotations

import math

import numpy as np

from netdsl.runtime.data.dataset import DataError, Field

__all__ = ["check_arrays", "first_bad"]


def check_arrays(path: str, raw: dict[str, np.ndarray], fields: list[Field],
                  place) -> dict[str, np.ndarray]:
    """The arrays in the declared shapes and dtypes, or a DataError saying what is wrong.

    `place` names the position of a bad value in messages (see `_array_place` in files.py).
    """
    for f in fields:
        if np.asarray(raw[f.name]).dtype.kind not in "biuf":
            raise DataError(f"{path}: {f.name} holds {raw[f.name].dtype} values, not numbers",
                            "save it as an array of numbers")
    arrays = {f.name: _fit_shape(path, f, np.asarray(raw[f.name])) for f in fields}
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        counts = ", ".join(f"{name} {n:,}" for name, n in lengths.items())
        raise DataError(f"{path}: the arrays hold different numbers of examples ({counts})",
                        "every array needs one entry per example along its first axis")
    if arrays and not next(iter(lengths.values())):
        raise DataError(f"{path} holds no examples", "add at least one example")
    steps = {f.name: arrays[f.name].shape[1] for f in fields if f.type.seq}
    if len(set(steps.values())) > 1:
        counts = ", ".join(f"{name} {n}" for name, n in steps.items())
        raise DataError(f"{path}: the sequences have different numbers of steps ({counts})",
                        "give every sequence array the same second axis")
    return {f.name: _check_values(f, arrays[f.name], place) for f in fields}


def _fit_shape(path: str, f: Field, a: np.ndarray) -> np.ndarray:
    """`a` shaped (N, *dims) or (N, steps, *dims); also accepted flat or with axes of 1
    added or left out, which cannot change the layout."""
    lead = 2 if f.type.seq else 1
    want = f.type.dims
    expected = "(examples, steps" if f.type.seq else "(examples"
    expected += "".join(f", {d}" for d in want) + ")"
    if a.ndim < lead:
        raise DataError(f"{path}: {f.name} has shape {a.shape}, but the spec declares {f}",
                        f"give it shape {expected}")
    per = a.shape[lead:]
    if per == want:
        return a
    if _without_ones(per) == _without_ones(want) or per == (math.prod(want),):
        return a.reshape(a.shape[:lead] + want)
    hint = f"give it shape {expected}"
    if len(want) > 1:
        hint += f" or flat ({'examples, steps' if f.type.seq else 'examples'}, {math.prod(want)})"
    if per == want[1:] + want[:1]:
        hint = (f"its channels seem to come last: np.moveaxis({f.name}, -1, {lead}) puts "
                f"them first, as the spec wants")
    holds = "one value" if not per else "[" + ",".join(map(str, per)) + "]"
    raise DataError(f"{path}: {f.name} holds {holds} per {'step' if f.type.seq else 'example'} "
                    f"(shape {a.shape}), but the spec declares {f}", hint)


def _without_ones(dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in dims if d != 1)


def _check_values(f: Field, a: np.ndarray, place) -> np.ndarray:
    """`a` as float32 values or int64 labels, after checking that its values make sense."""
    if f.is_class:
        return _check_labels(f, a, place)
    if a.dtype.kind == "f":
        first_bad(f, a, ~np.isfinite(a), place, "is not a finite number",
                   "remove those examples or fill in the missing values")
    with np.errstate(over="ignore"):  # overflow is reported just below, with the example
        out = a.astype(np.float32, copy=False)  # read as float32 already: no second copy
    first_bad(f, a, ~np.isfinite(out), place, "is too large for float32", "rescale the data")
    return out


def _check_labels(f: Field, a: np.ndarray, place) -> np.ndarray:
    """Class labels as int64: whole numbers in [0, classes)."""
    top = f.type.classes - 1
    if a.dtype.kind == "f":
        first_bad(f, a, ~np.isfinite(a) | (a != np.round(a)), place,
                   f"is not a whole number, but {f} holds class labels",
                   f"labels are class numbers 0 to {top}")
    from_one = a.size and a.min() == 1 and a.max() == top + 1
    first_bad(f, a, (a < 0) | (a > top), place, f"is outside 0 to {top}, the classes of {f}",
               "number the classes from 0: subtract 1 from every label" if from_one
               else f"labels are class numbers 0 to {top}")
    return a.astype(np.int64)


def first_bad(f: Field, a: np.ndarray, bad: np.ndarray, place, what: str, hint: str) -> None:
    """A DataError naming the first bad value, where `bad` holds, and where it is."""
    bad = bad.reshape(len(bad), -1)
    rows = np.flatnonzero(bad.any(axis=1))
    if not len(rows):
        return
    i = int(rows[0])
    j = int(np.flatnonzero(bad[i])[0])
    value = a.reshape(len(a), -1)[i, j].item()
    if isinstance(value, float):
        value = f"{value:g}"  # a label read from a CSV shows as 12, not 12.0
    raise DataError(f"{place(f.name, i, j, a.shape[1:])}: {value} {what}", hint)
