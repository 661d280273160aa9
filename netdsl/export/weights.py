"""A network's tensors as safetensors, under PyTorch-style names, and read back.

The file holds every parameter and every buffer (batchnorm's running statistics) of the
network, named as netdsl.export.naming says (`stage2.basic1.conv1.weight`), with the
spec's name and the SHA-256 of its text in the metadata. `netc run --init-from` reads
one back into a network whose tensors have the same names and shapes: the one that
wrote it, or another spec sharing its layers (`--init-partial`: those of them that fit).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from netdsl.errors import SpecError
from netdsl.export.naming import NORMALIZE, component, param_name, tensor_name
from netdsl.lower.plan import Plan

__all__ = ["tensor_sources", "network_tensors", "encode", "decode", "Fit", "fit", "match",
           "spec_metadata", "normalize_tensors"]


def spec_metadata(name: str, text: str) -> dict[str, str]:
    """What an exported file says about the spec it comes from."""
    return {"spec": name, "spec_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "producer": "netdsl"}


def tensor_sources(plan: Plan) -> dict[str, tuple]:
    """Each tensor's name -> ("param", key) or ("buffer", node, name), in the plan's order
    (a buffer after the parameters of its node)."""
    sources = {param_name(key): ("param", key) for key in plan.params}
    for node, step in plan.by_buffers.items():
        for name in step.op.buffers(*step.input_types):
            sources[tensor_name(node, name)] = ("buffer", node, name)
    return sources


def network_tensors(plan: Plan, params: dict, buffers: dict) -> dict[str, np.ndarray]:
    """The network's tensors by name: `params` by key, `buffers` node -> name -> array
    (those missing, as a network that has not trained yet starts them)."""
    tensors = {}
    for name, source in tensor_sources(plan).items():
        if source[0] == "param":
            tensors[name] = np.asarray(params[source[1]])
            continue
        _, node, buffer = source
        value = buffers.get(node, {}).get(buffer)
        if value is None:
            step = plan.by_buffers[node]
            value = step.op.buffers(*step.input_types)[buffer]
        tensors[name] = np.asarray(value)
    return tensors


def normalize_tensors(normalize: dict) -> dict[str, np.ndarray]:
    """The statistics a model standardises its inputs by (input name -> (mean, std)) as
    tensors, named as the exported module keeps them: `normalize.x.mean`, `.std`."""
    tensors = {}
    for name, (mean, std) in normalize.items():
        prefix = NORMALIZE + component(name)
        tensors[f"{prefix}.mean"], tensors[f"{prefix}.std"] = np.asarray(mean), np.asarray(std)
    return tensors


def encode(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The safetensors file of `tensors` (contiguous copies, as the format stores them)."""
    return save({name: np.ascontiguousarray(t) for name, t in tensors.items()}, metadata)


def decode(data: bytes, path: str) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file's bytes.

    Raises
    ------
    SpecError
        When `path` does not hold a safetensors file.
    """
    try:
        return load(data)
    except (SafetensorError, ValueError) as exc:
        raise SpecError(f"{path} is not a readable safetensors file ({exc})", None,
                        "write one with: netc export SPEC --to safetensors") from None


@dataclass
class Fit:
    """How a file's tensors fit a network: `loaded` (source, as `tensor_sources` gives,
    -> array) are those whose names and shapes are the network's; `missing` the
    network's names the file lacks, `unknown` the file's names the network lacks, and
    `differ` the names whose shapes differ, with the file's shape and the network's."""

    loaded: dict[tuple, np.ndarray]
    names: list[str]
    missing: list[str]
    unknown: list[str]
    differ: dict[str, tuple[tuple, tuple]]

    def problems(self) -> list[str]:
        """What does not fit, one phrase per kind, the first names of each listed."""
        differ = [f"{name} {ours} (the network's: {theirs})"
                  for name, (ours, theirs) in self.differ.items()]
        return [f"{label}: {_first(names)}"
                for label, names in (("missing from the file", self.missing),
                                     ("not in the network", self.unknown),
                                     ("shapes differ", differ)) if names]


def fit(plan: Plan, tensors: dict[str, np.ndarray]) -> Fit:
    """Compare a file's tensors with the network's by name and shape."""
    sources = tensor_sources(plan)
    shapes = {name: _shape(plan, source) for name, source in sources.items()}
    fits = [name for name in sources
            if name in tensors and tuple(tensors[name].shape) == shapes[name]]
    differ = {name: (tuple(tensors[name].shape), shapes[name]) for name in sources
              if name in tensors and tuple(tensors[name].shape) != shapes[name]}
    # the data's statistics (normalize.*) are no network's: a run fits its own
    return Fit({sources[name]: tensors[name] for name in fits}, fits,
               [name for name in sources if name not in tensors],
               [name for name in tensors if name not in sources
                and not name.startswith(NORMALIZE)], differ)


def match(plan: Plan, tensors: dict[str, np.ndarray], path: str,
          partial: bool = False) -> Fit:
    """How the file `path`'s tensors fit the network, which must be whole.

    Every tensor of the network must be there with its shape, and nothing else: a
    partial match would train a network that is partly initialised, silently. With
    `partial` (`netc run --init-partial`) those that fit are enough: a network with a new
    head starts from the file's other layers; at least one must fit.

    Raises
    ------
    SpecError
        Listing the names missing from the file, those the network does not have, and
        those whose shapes differ.
    """
    found = fit(plan, tensors)
    if found.problems() and not (partial and found.loaded):
        what = "none of its tensors fits this network" if partial else "does not fit this network"
        raise SpecError(f"{path} {what}; " + "; ".join(found.problems()), None,
                        "its names and shapes must be the network's: see them with "
                        "netc export SPEC --to safetensors" + ("" if partial else
                                                              ", or load those that fit "
                                                              "with --init-partial"))
    return found


def _first(names: list[str], shown: int = 8) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _shape(plan: Plan, source: tuple) -> tuple[int, ...]:
    if source[0] == "param":
        return tuple(plan.params[source[1]].shape)
    step = plan.by_buffers[source[1]]
    return tuple(np.shape(step.op.buffers(*step.input_types)[source[2]]))
