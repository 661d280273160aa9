"""`netc import`: an ONNX model as a readable .net spec and its weights.

    model = read(path)                 a checked ModelProto, shapes inferred (.read)
    model = fold(model)                constant subgraphs and shape arithmetic evaluated (.fold)
    graph = translate(model, path)     netdsl layers with their weights, or every
                                       unsupported node at once (.translate)
    graph = fuse(graph)                MatMul + Add as one dense, aliases dropped (.fuse)
    text  = write_spec(graph, name)    blocks for repeated structure, in fmt's form (.write)
    tensors = name_weights(...)        the weights under the names the spec gives them (.names)

Each pass is one module; `import_model` runs them. The onnx package is imported here
and by netdsl.export.onnx alone.
"""
from netdsl.onnx_import.pipeline import Imported, import_model

__all__ = ["import_model", "Imported"]
