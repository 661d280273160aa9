"""Exporting a network: ONNX, a generated PyTorch module, and safetensors of its tensors.

    view = select(graph, outputs)            what to export (netdsl.export.view)
    to_onnx(view, params, buffers)           an onnx.ModelProto (netdsl.export.onnx)
    to_torch(view, sources)                  model.py and its state_dict's layout (.torch)
    network_tensors(plan, params, buffers)   every tensor by its PyTorch-style name (.weights)

The exporters read a checked graph and parameter arrays by key; loading a checkpoint is
the runtime's work (netdsl.app.export does both). The onnx package is imported by
netdsl.export.onnx alone: the other formats do without it.
"""
from netdsl.export.view import View, default_outputs, select

__all__ = ["View", "select", "default_outputs"]
