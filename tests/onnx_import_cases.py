"""What the import tests share: torch models exported to ONNX, onnxruntime's outputs, and
netdsl's forward pass over an imported spec with its weights."""
import io

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
import torch

from netdsl.driver import check_text
from netdsl.export import select
from netdsl.export.onnx import to_onnx
from netdsl.export.weights import tensor_sources
from netdsl.lower import lower
from netdsl.lower.plan import build_plan
from netdsl.runtime.execute import Executor


def export(model: torch.nn.Module, *shape, path=None, names=("x",), dynamic=True,
           attach=False, **kw) -> bytes:
    """The ONNX bytes of `model` in eval mode as torch's TorchScript exporter writes them,
    batchnorm kept apart from the convolutions (TrainingMode.PRESERVE of an eval model).
    `dynamic`: the batch axis symbolic (True), or torch's dynamic_axes.

    `attach`: the exporter writes the graph alone (export_params=False, its weights as
    graph inputs named after the state_dict) and the weights are attached as its
    initializers here, which is what export_params=True writes for a model the exporter
    folds nothing in, several times faster for VGG's 550 MB."""
    model.eval()
    if attach:
        kw["export_params"] = False
    args = tuple(torch.randn(*s) for s in shape) if isinstance(shape[0], tuple) \
        else (torch.randn(*shape),)
    buffer = io.BytesIO()
    axes = {n: {0: "batch"} for n in names} if dynamic else None
    torch.onnx.export(model, args, buffer, dynamo=False, input_names=list(names),
                      dynamic_axes=axes, training=torch.onnx.TrainingMode.PRESERVE, **kw)
    data = buffer.getvalue()
    if attach:
        proto = onnx.load_model_from_string(data)
        state = model.state_dict()
        weights = [i for i in proto.graph.input if i.name in state]
        for info in weights:
            proto.graph.input.remove(info)
            proto.graph.initializer.append(
                numpy_helper.from_array(state[info.name].detach().numpy(), info.name))
        data = proto.SerializeToString()
    if path is not None:
        with open(path, "wb") as handle:
            handle.write(data)
    return data


def randomise_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Batchnorm statistics and affine weights away from 0 and 1, so that they count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def onnxruntime_outputs(data: bytes, feed: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feed)


def reexport(text: str, tensors: dict) -> onnx.ModelProto:
    """netc export of a spec with these weights (by PyTorch-style name)."""
    net = check_text(text, "imported.net")
    params, buffers = {}, {}
    for name, source in tensor_sources(build_plan(net.graph)).items():
        if source[0] == "param":
            params[source[1]] = tensors[name]
        else:
            buffers.setdefault(source[1], {})[source[2]] = tensors[name]
    return to_onnx(select(net.graph), params, buffers)


def netdsl_outputs(text: str, tensors: dict, feed: list[np.ndarray]) -> list[np.ndarray]:
    """netdsl's eval-mode outputs of a spec with `tensors` (by PyTorch-style name), its
    inputs fed in order, float32: the values its losses score."""
    net = check_text(text, "imported.net")
    lowered = lower(net.graph)
    plan = lowered.plan
    params, buffers = {}, {}
    for name, source in tensor_sources(plan).items():
        if source[0] == "param":
            params[source[1]] = np.asarray(tensors[name], np.float32)
        else:
            buffers.setdefault(source[1], {})[source[2]] = np.asarray(tensors[name], np.float32)
    ex = Executor(lowered, params, dtype="float32")
    ex.buffers.update(buffers)
    inputs = [n for n, d in net.graph.nodes(data=True) if d["kind"] == "input"]
    scored = [net.graph.nodes[loss]["inputs"][0][0] for loss in net.graph.graph["losses"].values()]
    out = ex.forward(dict(zip(inputs, feed)), False, set(scored), losses=False)
    return [np.asarray(out[name]) for name in scored]
