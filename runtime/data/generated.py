"""Generated data for a spec that names no data and reads no bundled images.

N(0,1) inputs that carry a few hidden values each, and targets that are a fixed random
function of those, so that a network can learn the mapping from a thousand examples.
Everything is derived from the seed: the same seed gives the same data.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

from netdsl.runtime.data.dataset import COUNT, Dataset, Field, read_as_probability
from netdsl.types import TensorType

__all__ = ["generate", "DEFAULT_EXAMPLES", "SEQ_STEPS", "MAX_ARRAY_BYTES"]

DEFAULT_EXAMPLES = 1024          # generated examples unless `examples` says otherwise
SEQ_STEPS = 20                   # time steps of a generated sequence
HIDDEN = 16                      # at most this many hidden values in a generated input
SIGNAL = 0.75                    # the share of a large generated input's variance they carry
MAX_ARRAY_BYTES = 200 * 2**20    # generated arrays stay under this, whatever `examples` says


def generate(fields: list[Field], graph: nx.DiGraph, seed: int, examples: int | None,
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
    if read_as_probability(graph, f.name):
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
