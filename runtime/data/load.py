"""`load_data`: which data a checked spec gets, and what every loaded Dataset carries.

A named sequence task (`--data parity`, see sequences) or a user's file when
one is named, else the bundled images when the spec reads them, else generated data.
Whatever the source, the result names the inputs that normalisation may rescale and the
sequences, and holds at most `examples` examples.
"""
from __future__ import annotations

import os

import networkx as nx
import numpy as np

from netdsl.runtime.data.bundled import load_bundled
from netdsl.runtime.data.dataset import COUNT, DataError, Dataset, Field, data_fields, graph_of
from netdsl.runtime.data.files import load_file
from netdsl.runtime.data.generated import SEQ_STEPS, generate
from netdsl.runtime.data.sequences import SEQUENCE_DATA, load_named

__all__ = ["load_data"]


def load_data(graph, path: str | None = None, seed: int = 0, examples: int | None = None,
              *, steps: int | None = None, only=None) -> Dataset:
    """The data a checked spec reads: from `path` (.npz or .csv), else bundled or generated.

    `seed` fixes generated data and the choice of examples when `examples` caps how many
    are used (a random subset, since bundled and user files are often sorted by label).
    `steps` is the length of generated sequences. `only` names the inputs and targets to
    return (default: all); a file need not hold the others (a prediction needs no targets).
    """
    graph = graph_of(graph)
    fields = data_fields(graph)
    named_steps, steps = steps, steps or SEQ_STEPS  # a named dataset has its own default
    if examples is not None and examples < 1:
        raise DataError(f"the number of examples must be at least 1, got {examples}")
    wanted = fields if only is None else [f for f in fields if f.name in set(only)]
    if path is not None and path in SEQUENCE_DATA and not os.path.exists(path):
        data = load_named(path, fields, seed, examples, named_steps)
        data.arrays = {f.name: data.arrays[f.name] for f in wanted}
    elif path is not None:
        data = load_file(path, wanted, fields)
    else:
        data = load_bundled(fields, graph) or generate(fields, graph, seed, examples, steps)
        data.arrays = {f.name: data.arrays[f.name] for f in wanted}
    data.normalize = tuple(n for n in _normalizable(graph, fields) if n in data.arrays)
    data.seq = tuple(f.name for f in wanted if f.type.seq)
    return _cap(data, examples, seed)


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
