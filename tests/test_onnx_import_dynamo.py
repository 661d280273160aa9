"""netc import of models from PyTorch's dynamo exporter (`torch.onnx.export(...,
dynamo=True)`, which needs onnxscript): a small CNN and an LSTM classifier import and
give onnxruntime's outputs. The exporter writes opset 18+ graphs with its own shape
arithmetic (an LSTM's zero states Expand-ed to [layers, batch, n])."""
import numpy as np
import onnx
import pytest
import torch

from netdsl.onnx_import.pipeline import import_proto
from onnx_import_cases import netdsl_outputs, onnxruntime_outputs

import onnxscript  # noqa: F401  the dynamo exporter's dependency (the test extra): fail if absent


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 7 * 7, 5)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


class LSTMClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(6, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        _, (h, _) = self.rnn(x)
        return self.fc(h[-1])


@pytest.mark.parametrize("model, shape, writes", [
    (SmallCNN, (2, 1, 14, 14), "conv(4, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(5)"),
    (LSTMClassifier, (2, 5, 6), "x -> lstm(8) -> last -> dense(3)"),
])
def test_dynamo_exports_import_and_match_onnxruntime(model, shape, writes):
    torch.manual_seed(0)
    module = model().eval()
    x = torch.randn(*shape)
    dims = {0: torch.export.Dim("batch")}
    if len(shape) == 3:
        dims[1] = torch.export.Dim("time")
    program = torch.onnx.export(module, (x,), dynamo=True, input_names=["x"],
                                dynamic_shapes={"x": dims}, verbose=False)
    data = program.model_proto.SerializeToString()
    imported = import_proto(onnx.load_model_from_string(data), "model.onnx", "model")
    assert writes in imported.text
    feed = np.random.default_rng(1).standard_normal((3, *shape[1:])).astype(np.float32)
    (want,) = onnxruntime_outputs(data, {"x": feed})
    (got,) = netdsl_outputs(imported.text, imported.tensors, [feed])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
