"""PyTorch-style names for a network's tensors: its block path with dots.

A parameter key `stage2/basic1/conv1.weight` (the owning node, then the parameter) is
named `stage2.basic1.conv1.weight`, which is also where the generated PyTorch module
keeps it: one submodule per block instance, one per layer. The safetensors file, the
generated module's state_dict and the ONNX initializers all use these names.
"""
from __future__ import annotations

import keyword
import re

__all__ = ["component", "module_path", "tensor_name", "param_name", "identifier", "NORMALIZE"]

# where an exported model keeps the statistics its inputs are standardised by
# (`normalize.x.mean`, `normalize.x.std`), when training standardised them
NORMALIZE = "normalize."

# attributes of torch.nn.Module: a submodule of one of these names would hide it
RESERVED = frozenset((
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init",
    "children", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr",
    "float", "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule",
    "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
    "named_modules", "named_parameters", "parameters", "register_backward_hook",
    "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_module", "register_parameter", "register_state_dict_post_hook",
    "register_state_dict_pre_hook", "requires_grad_", "set_extra_state", "set_submodule",
    "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
    "zero_grad",
))


def component(text: str) -> str:
    """One part of a dotted name as a Python identifier that hides no nn.Module attribute."""
    name = re.sub(r"\W", "_", text)
    if not name or name[0].isdigit():
        name = "_" + name
    if keyword.iskeyword(name) or name in RESERVED:
        name += "_"
    return name


def module_path(node: str) -> tuple[str, ...]:
    """A node's submodule path: `stage2/basic1/conv1` -> (stage2, basic1, conv1). A state
    `h[t-1]` (whose learned initial value is a parameter) is named after its value `h`."""
    node = re.sub(r"\[t-\d+\]$", "", node)
    return tuple(component(part) for part in node.split("/"))


def tensor_name(node: str, name: str) -> str:
    """The dotted name of a node's tensor `name` (a parameter or a buffer)."""
    return ".".join(module_path(node) + (component(name),))


def param_name(key: str) -> str:
    """The dotted name of a parameter key 'node.name'."""
    node, _, name = key.rpartition(".")
    return tensor_name(node, name)


def identifier(node: str) -> str:
    """A node id as one Python identifier (a local variable): `stage2_basic1_conv1`."""
    return "_".join(module_path(node))
