"""What the export tests share: a spec's view, weights worth checking, random inputs,
and netdsl's own forward pass on them."""
import os

import numpy as np

from netdsl.driver import check_file, check_text
from netdsl.export import select
from netdsl.lower import lower
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from shrunk_specs import shrunk_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = sorted(os.path.join(ROOT, "specs", name)
               for name in os.listdir(os.path.join(ROOT, "specs")) if name.endswith(".net"))
# the GAN exports its generator alone, as a user ships it
OUTPUTS = {"gan": ["fake"]}


class Draws:
    """Stands in for an executor's random generator: `normal` sources read the draws fed
    to the exported model, dropout keeps every unit and noise adds zero (an exported
    model's random numbers are its runtime's, which no test can match)."""

    def __init__(self, draws):
        self.draws = list(draws)

    def standard_normal(self, shape, dtype=None):
        return self.draws.pop(0).astype(dtype) if self.draws else np.zeros(shape, dtype)

    def random(self, shape, dtype=None):
        return np.ones(shape, dtype)


class Case:
    """A spec ready to compare: its view (the outputs `outputs` names, else the default
    ones), its lowering, initial parameters and random running statistics (so that
    batchnorm's inference form is tested with statistics that are not 0 and 1); `shrunk`
    takes an ImageNet-sized spec's smaller stand-in (shrunk_specs.py)."""

    def __init__(self, path: str, outputs=None, seed: int = 0, params=None, shrunk=False):
        self.net = (check_text(shrunk_text(path), str(path)) if shrunk
                    else check_file(path))
        self.name = self.net.name
        self.view = select(self.net.graph, outputs or OUTPUTS.get(self.name))
        self.lowered = lower(self.net.graph, outputs=list(self.view.outputs.values()))
        self.params = params or initial_params(self.lowered.built, "auto", seed)
        rng = np.random.default_rng(seed)
        self.buffers = {}
        for step in self.lowered.plan.steps:
            start = step.op.buffers(*step.input_types)
            if start:
                channels = len(start["running_mean"])
                self.buffers[step.node] = {
                    "running_mean": rng.normal(0, 0.1, channels).astype(np.float32),
                    "running_var": rng.uniform(0.5, 2, channels).astype(np.float32)}

    def with_losses(self) -> "Case":
        """The same network and weights, its losses output after the other outputs."""
        case = Case.__new__(Case)
        case.__dict__.update(self.__dict__)
        case.view = select(self.net.graph, [*self.view.outputs, *self.losses()])
        case.lowered = lower(self.net.graph, outputs=list(case.view.outputs.values()))
        return case

    def losses(self) -> list[str]:
        return list(self.net.graph.graph["losses"])

    def big(self) -> bool:
        """Whether an example is an image of ImageNet's size (tested one at a time)."""
        return any(self.view.type(node).size > 100_000 for node in self.view.inputs.values())

    def inputs(self, batch: int = 2, steps: int = 3, dtype=np.float32, seed: int = 0) -> dict:
        """Random values for the view's inputs, by their exported names."""
        rng = np.random.default_rng(seed)
        feed = {}
        for name, node in self.view.inputs.items():
            t = self.view.type(node)
            shape = (batch, steps, *t.dims) if t.seq else (batch, *t.dims)
            feed[name] = (rng.integers(0, t.classes, shape) if t.classes is not None
                          else rng.standard_normal(shape).astype(dtype))
        return feed

    def sources(self) -> list[str]:
        """The inputs that feed a source op's draws (a VAE's noise)."""
        return [name for name, node in self.view.inputs.items()
                if self.view.graph.nodes[node]["kind"] == "op"]

    def executor(self, feed: dict, dtype: str = "float32") -> Executor:
        ex = Executor(self.lowered, self.params, dtype=dtype)
        ex.rng = Draws(feed[name] for name in self.sources())
        for node, entries in self.buffers.items():
            ex.buffers[node] = {k: v.astype(dtype) for k, v in entries.items()}
        return ex

    def batch(self, feed: dict) -> dict:
        """`feed` as netdsl's executor takes it: by node, the sources' draws left out."""
        batch = {self.view.inputs[name]: value for name, value in feed.items()
                 if name not in self.sources()}
        if not batch:  # a GAN's generator: the executor takes the batch size from an input
            node = next(iter(self.lowered.plan.inputs))
            rows = len(next(iter(feed.values())))
            batch[node] = np.zeros((rows, *self.lowered.plan.types[node].dims), np.float32)
        return batch

    def forward(self, feed: dict, dtype: str = "float32") -> dict:
        """netdsl's eval-mode outputs, by their exported names."""
        out = self.executor(feed, dtype).forward(self.batch(feed), False,
                                                 set(self.view.outputs.values()), losses=False)
        return {name: np.asarray(out[node]) for name, node in self.view.outputs.items()}
