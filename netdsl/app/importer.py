"""`netc import`: an ONNX model as NAME.net and its weights as NAME.safetensors.

Both files are written atomically, and only once the whole import has succeeded: an
unsupported operator or a bad file leaves nothing behind.
"""
from __future__ import annotations

import os

from netdsl.atomic import check_writable, write_bytes, write_text
from netdsl.errors import SpecError
from netdsl.export.weights import encode, spec_metadata
from netdsl.onnx_import import import_model

__all__ = ["import_onnx"]


def import_onnx(args) -> int:
    """Import args.model into args.o (default: the model's name with .net)."""
    stem = os.path.splitext(os.path.basename(args.model))[0]
    spec_path = args.o or f"{stem}.net"
    if not spec_path.endswith(".net"):
        raise SpecError(f"-o {spec_path}: the spec's file name must end in .net", None,
                        f"for example -o {os.path.splitext(spec_path)[0]}.net")
    weights_path = spec_path[:-4] + ".safetensors"
    for path in (spec_path, weights_path):
        why = check_writable(path)
        if why is not None:
            raise SpecError(f"cannot write {path} ({why})", None, "name another place with -o")
    name = os.path.splitext(os.path.basename(spec_path))[0]
    imported = import_model(args.model, name)
    metadata = spec_metadata(imported.network.name, imported.text)
    write_bytes(weights_path, encode(imported.tensors, metadata))
    write_text(spec_path, imported.text)
    layers = len(imported.network.layers)
    print(f"wrote {spec_path} ({layers} layers) and {weights_path} "
          f"({len(imported.tensors)} tensors)")
    return 0
