"""Preparing a run, once for every command: `netc run`, `eval`, `predict` and the builder.

A session is a checked network with what a run adds to it: its training settings with
the flags applied, its lowering for the device, the device's array module, and then its
data and a trainer, fresh or holding a checkpoint. Errors come in the order a user fixes
them: the spec and its train clause, the device, the data, the checkpoint.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import networkx as nx

from netdsl.driver import CheckFailed, Network
from netdsl.errors import SpecError, SpecErrors, errors_of
from netdsl.lower import Lowered, lower
from netdsl.runtime import native
from netdsl.runtime.checkpoint import CheckpointError
from netdsl.runtime.data import Dataset, Normalizer, load_data, normalize
from netdsl.runtime.device import array_module, target_of
from netdsl.runtime.host import steady_allocations
from netdsl.runtime.replicas import DataParallel
from netdsl.runtime.train import Reporter, Trainer
from netdsl.settings import TrainSettings, resolve_settings

__all__ = ["Session", "prepare", "NORMALIZE"]

# checkpoint arrays that hold the input normalisation, under this prefix
NORMALIZE = "normalize/"


@dataclass
class Session:
    """A network ready to run on a device; see `prepare`."""

    graph: nx.DiGraph
    settings: TrainSettings
    lowered: Lowered
    xp: Any
    normalizer: Normalizer | None = None

    @property
    def name(self) -> str:
        return self.graph.graph["name"]

    def load_data(self, source: str | None = None, examples: int | None = None,
                  steps: int | None = None, only=None) -> Dataset:
        """`source` (a file, or a bundled dataset's name), else the train clause's
        data='NAME', else the bundled or generated data the network's inputs call for."""
        length = {"steps": steps} if steps else {}
        return load_data(self.graph, source or self.settings.data, self.settings.seed,
                         examples, only=only, **length)

    def split(self, data: Dataset) -> tuple[Dataset, Dataset]:
        """The training and validation parts, normalised as the settings ask (the
        normaliser, fitted on the training part, is kept for checkpoints)."""
        train, val = data.split(self.settings.val, self.settings.seed)
        if self.settings.normalize and data.normalize:
            self.normalizer, (train, val) = normalize(train, val)
        return train, val

    def trainer(self, folder: str | None = None, every: float = 30.0,
                reporter: Reporter | None = None, parallel: DataParallel | None = None
                ) -> Trainer:
        """A trainer from the initial parameters (as one of `parallel`'s data-parallel
        workers, if given); its checkpoints hold the normaliser."""
        trainer = Trainer(self.lowered, self.settings, folder, every, self.xp, reporter,
                          parallel)
        state = self.normalizer.state_dict() if self.normalizer else {}
        trainer.extra_arrays = {f"{NORMALIZE}{k}": v for k, v in state.items()}
        return trainer

    def trained(self, folder: str, hint: str) -> Trainer:
        """A trainer holding the checkpoint in `folder`, and its normaliser.

        Raises
        ------
        SpecError
            When there is no readable checkpoint of this network there (with `hint`).
        """
        trainer = Trainer(self.lowered, self.settings, None, xp=self.xp)
        try:
            arrays = trainer.restore(folder)
        except CheckpointError as exc:
            raise SpecError(str(exc), None, hint) from None
        stats = {k[len(NORMALIZE):]: v for k, v in arrays.items() if k.startswith(NORMALIZE)}
        try:
            self.normalizer = Normalizer.from_state(stats) if stats else None
        except KeyError as exc:  # a mean without its standard deviation
            raise SpecError(f"{folder}/checkpoint.npz lacks the normalisation array "
                            f"{NORMALIZE}{exc.args[0]}", None, hint) from None
        return trainer


def _native(graph: nx.DiGraph, asked: bool):
    """The native lowering, its kernels compiled (or loaded from the cache); None where
    they cannot be, after a warning on stderr if the user `asked` for it. Unasked, a
    network with a recurrence or a convolution runs natively: its loops run 2-3 times
    faster compiled, its convolutions 1.5-2 times (docs/benchmarks.md), where a network
    of dense layers alone gains little over NumPy in place (docs/cpu.md)."""
    lowered = lower(graph, "native")
    if not asked and not (lowered.plan.loops or _convolves(lowered)):
        return None
    try:   # training runs in float32
        native.prepare([p for made in lowered.kernels.values() for p in made], "float32")
    except native.NativeUnavailable as exc:
        if asked:
            print(f"warning: --native: {exc}; running the NumPy path", file=sys.stderr)
        return None
    return lowered


def _convolves(lowered) -> bool:
    return any(step.op.convolves(*step.input_types) is not None
               for step in lowered.plan.steps)


def prepare(network: Network | nx.DiGraph, overrides: dict | None = None,
            device: str = "cpu", native: bool | None = None) -> Session:
    """The session of a checked network (or its graph), with `overrides` (flags, None for
    those not given) applied to its train clause, on `device` ("cpu" or "gpu"). On the
    CPU, `native` True runs its fused chains and loops as compiled C (the native target;
    without a working C compiler a warning says why and the NumPy path runs), False
    never, None (the default) where the network has a recurrence and a compiler works.

    Raises
    ------
    CheckFailed
        For a bad setting, located in the spec's train clause (or naming the flag).
    SpecError
        When the network cannot train (no loss) or the device cannot be used.
    """
    graph = network if isinstance(network, nx.DiGraph) else network.graph
    steady_allocations()   # every step reuses the memory of the last
    spans = network.program.train_spans if isinstance(network, Network) else {}
    sources = network.sources if isinstance(network, Network) else {}
    on_cpu = device == "cpu" and native is not False
    lowered = (_native(graph, asked=native is True) if on_cpu else None) or lower(
        graph, target_of(device))
    try:
        settings = resolve_settings(graph.graph["train"], overrides or {}, spans)
    except (SpecError, SpecErrors) as exc:  # with the spec's text, to show the line
        raise CheckFailed(errors_of(exc), sources) from None
    return Session(graph, settings, lowered, array_module(device))
