"""Datasets: the arrays a spec's inputs and targets read, and their input normalisation.

A `Dataset` holds one array per `input` and `target` the spec declares, first axis =
examples (then a time axis for `seq` types), float32 for float types and int64 for class
labels; it splits into training and validation sets and yields batches.

`Normalizer` standardises the float inputs with statistics from the training split and
turns them into arrays that can be stored next to the weights.

`Field`, `DataError` and the helpers that read a spec's graph are shared by the loaders
(bundled, generated, files, sequences).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import networkx as nx
import numpy as np

from netdsl.errors import SpecError
from netdsl.types import TensorType

__all__ = ["DataError", "Field", "Dataset", "Normalizer", "data_fields", "normalize", "graph_of",
           "read_as_probability", "describe_fields", "steps_per_epoch", "COUNT"]

COUNT = "{count}"  # the number of examples, in a loader's description


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
    graph = graph_of(graph)
    return [Field(node, data["kind"], data["declared"])
            for node, data in graph.nodes(data=True) if data.get("kind") in ("input", "target")]


def graph_of(graph) -> nx.DiGraph:
    """The typed graph of a checked graph or Network."""
    # a Network carries its typed graph in `.graph`; a graph's own `.graph` is a dict
    return graph if isinstance(graph, nx.Graph) else graph.graph


def read_as_probability(graph: nx.DiGraph, name: str) -> bool:
    """Whether a loss that wants targets in [0, 1] (sigmoid cross-entropy's) reads the
    target `name`: tanh would give it negative ones."""
    return any(getattr(graph.nodes[s].get("op"), "target_range", None) == (0.0, 1.0)
               for s in graph.successors(name))


def describe_fields(fields: list[Field]) -> str:
    """The fields as the spec declares them, e.g. `x [64], y class(10)`."""
    return ", ".join(str(f) for f in fields)


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

    def shards(self, batch: int, rng: np.random.Generator | None, rank: int, workers: int
               ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """`batches` as one of `workers` data-parallel workers: per global batch (the
        examples `batches` gives, in its order), this worker's contiguous part of it and
        the global batch's size. Parts differ in size by one at most. A global batch with
        fewer examples than workers (an epoch's last can be) is left out: a worker
        without examples would have no gradient to give.
        """
        if workers == 1:
            for part in self.batches(batch, rng):
                yield part, len(next(iter(part.values())))
            return
        n = len(self)
        order = np.arange(n) if rng is None else rng.permutation(n)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            if len(idx) < workers:
                return
            mine = np.array_split(idx, workers)[rank]
            if rng is None:  # in order: views, as `batches` gives
                mine = slice(int(mine[0]), int(mine[-1]) + 1)
            yield {name: a[mine] for name, a in self.arrays.items()}, len(idx)

    def part(self, rank: int, workers: int) -> "Dataset":
        """The contiguous part of the examples that worker `rank` of `workers` evaluates
        (sizes differ by one at most; a part may be empty)."""
        bounds = [len(self) * i // workers for i in range(workers + 1)]
        lo, hi = bounds[rank], bounds[rank + 1]
        return self._with({n: a[lo:hi] for n, a in self.arrays.items()})


def steps_per_epoch(examples: int, batch: int, workers: int = 1) -> int:
    """The global batches of an epoch that `Dataset.shards` gives (at least 1)."""
    full, rest = divmod(examples, batch)
    return max(1, full + (rest >= workers if rest else 0))


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
