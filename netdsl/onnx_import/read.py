"""Reading an .onnx file: a clear error for anything that is not a usable model.

A file that is missing, empty, truncated, not protobuf, or an ONNX model that fails the
checker, is a SpecError naming the file; a model whose weights live in external files
(the form of models over 2 GB) is read when those files lie beside it.
"""
from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError

from netdsl.errors import SpecError

__all__ = ["read_model", "prepare", "MAX_OPSET"]

# the newest default-domain opset whose operators this importer knows (opsets 24 and 25
# add element types, none of the semantics of the operators it translates)
MAX_OPSET = 25


def read_model(path: str) -> onnx.ModelProto:
    """The model in `path`, checked, with the shapes of its values inferred.

    Raises
    ------
    SpecError
        For a file that cannot be read or is not a valid ONNX model.
    """
    if not os.path.exists(path):
        raise SpecError(f"{path}: no such file", None, "check the path")
    if os.path.isdir(path):
        raise SpecError(f"{path} is a directory, not an ONNX model", None,
                        "name a .onnx file")
    if os.path.getsize(path) == 0:
        raise SpecError(f"{path} is empty, not an ONNX model", None,
                        "export the model again; the write may have failed")
    try:
        with open(path, "rb") as handle:
            model = onnx.load_model_from_string(handle.read())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read it ({exc.strerror})", None) from None
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise SpecError(f"{path} is not an ONNX model: it does not parse as one "
                        f"({_first_line(exc)})", None,
                        "is the file truncated, or another format (a .pt, a .safetensors)?"
                        ) from None
    if not model.graph.node and not model.graph.output:
        raise SpecError(f"{path} is not an ONNX model: it holds no graph", None,
                        "is the file truncated, or another format (a .pt, a .safetensors)?")
    _load_external(model, path)
    return prepare(model, path)


def prepare(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """A loaded model checked, with the shapes of its values inferred; `path` names it in
    errors.

    Raises
    ------
    SpecError
        For a model that fails ONNX's checker or shape inference, or a newer opset.
    """
    skeleton = _skeleton(model)
    try:
        onnx.checker.check_model(skeleton)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise SpecError(f"{path} is not a valid ONNX model: {_first_line(exc)}", None,
                        "onnx.checker.check_model says what is wrong with it") from None
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise SpecError(f"{path} uses ONNX opset {opset}; netc import knows opsets up to "
                        f"{MAX_OPSET}", None,
                        f"convert it: onnx.version_converter.convert_version(model, {MAX_OPSET})")
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises its own InferenceError and RuntimeErrors
        raise SpecError(f"{path}: ONNX shape inference fails: {_first_line(exc)}", None,
                        "the model is inconsistent; check it with onnx.checker "
                        "(full_check=True)") from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for mine, theirs in zip(model.graph.node, inferred.graph.node):
        if any(a.type == onnx.AttributeProto.GRAPH for a in mine.attribute):
            mine.CopyFrom(theirs)  # a Scan's body, with the shapes of its values inferred
    return model


# weights larger than this are left out of the copy the checker and shape inference read
# (both serialise the model: a copy of VGG's 550 MB); shape arithmetic is never this big
_SMALL = 4096


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large weights turned into typed graph inputs of their shapes."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(onnx.ModelProto(ir_version=model.ir_version,
                                      opset_import=model.opset_import,
                                      producer_name=model.producer_name))
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for tensor in model.graph.initializer:
        if _elements(tensor) <= _SMALL:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
    return skeleton


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default operator set the model imports."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _load_external(model: onnx.ModelProto, path: str) -> None:
    """Read the weights a model keeps in external files (models over 2 GB), from beside it."""
    external = [t for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return
    folder = os.path.dirname(os.path.abspath(path))
    for tensor in external:
        where = dict((e.key, e.value) for e in tensor.external_data).get("location", "")
        if not os.path.isfile(os.path.join(folder, where)):
            raise SpecError(f"{path}: tensor '{tensor.name}' is stored in the external file "
                            f"'{where}', which is not beside the model", None,
                            f"put {where} in {folder}, where the model was saved with it")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, folder)
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read its external weights ({_first_line(exc)})",
                        None, "the external data files must be those saved with the model"
                        ) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
