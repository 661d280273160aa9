"""A network's tensors as safetensors, under PyTorch-style names, and read back.

The file holds every parameter and every buffer (batchnorm's running statistics) of the
network, named as netdsl.export.naming says (`stage2.basic1.conv1.weight`), with the
spec's name and the SHA-256 of its text in the metadata. `netc run --init-from` reads
one back into a network whose tensors have the same names and shapes: the one that
wrote it, or another spec sharing its layers.
"""
from __future__ import annotations

import hashlib

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from netdsl.errors import SpecError
from netdsl.export.naming import param_name, tensor_name
from netdsl.lower.plan import Plan

__all__ = ["tensor_sources", "network_tensors", "encode", "decode", "match", "spec_metadata"]


def spec_metadata(name: str, text: str) -> dict[str, str]:
    """What an exported file says about the spec it comes from."""
    return {"spec": name, "spec_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "producer": "netdsl"}


def tensor_sources(plan: Plan) -> dict[str, tuple]:
    """Each tensor's name -> ("param", key) or ("buffer", node, name), in the plan's order
    (a buffer after the parameters of its node)."""
    sources = {param_name(key): ("param", key) for key in plan.params}
    for step in plan.steps:
        for name in step.op.buffers(*step.input_types):
            sources[tensor_name(step.node, name)] = ("buffer", step.node, name)
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
            step = plan.step_of(node)
            value = step.op.buffers(*step.input_types)[buffer]
        tensors[name] = np.asarray(value)
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


def match(plan: Plan, tensors: dict[str, np.ndarray], path: str) -> dict[tuple, np.ndarray]:
    """The network's tensors from a file's: source (as `tensor_sources` gives) -> array.

    Every tensor of the network must be there with its shape, and nothing else: a
    partial match would train a network that is partly initialised, silently.

    Raises
    ------
    SpecError
        Listing the names missing from the file, those the network does not have, and
        those whose shapes differ.
    """
    sources = tensor_sources(plan)
    shapes = {name: _shape(plan, source) for name, source in sources.items()}
    missing = [name for name in sources if name not in tensors]
    unknown = [name for name in tensors if name not in sources]
    differ = [f"{name} {tuple(tensors[name].shape)} (the network's: {shapes[name]})"
              for name in sources if name in tensors and tuple(tensors[name].shape) != shapes[name]]
    problems = [f"{label}: {', '.join(names[:8])}" + (f" and {len(names) - 8} more"
                                                       if len(names) > 8 else "")
                for label, names in (("missing from the file", missing),
                                     ("not in the network", unknown),
                                     ("shapes differ", differ)) if names]
    if problems:
        raise SpecError(f"{path} does not fit this network; " + "; ".join(problems), None,
                        "its names and shapes must be the network's: see them with "
                        "netc export SPEC --to safetensors")
    return {sources[name]: tensors[name] for name in sources}


def _shape(plan: Plan, source: tuple) -> tuple[int, ...]:
    if source[0] == "param":
        return tuple(plan.params[source[1]].shape)
    step = plan.step_of(source[1])
    return tuple(np.shape(step.op.buffers(*step.input_types)[source[2]]))
