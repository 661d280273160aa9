"""netc import: torchvision's image networks, exported by torch's TorchScript exporter,
import into specs that check, hold torchvision's parameter counts, and compute what
onnxruntime computes on the original model; bad models are clear errors."""
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import torchvision_models
from netdsl.cli import main
from netdsl.driver import check_file, check_text
from netdsl.export.weights import decode, match
from netdsl.fmt import format_text
from netdsl.lower.plan import build_plan
from netdsl.onnx_import.pipeline import import_proto
from onnx_import_cases import export, netdsl_outputs, onnxruntime_outputs, randomise_statistics

# torchvision's published parameter counts; the input is the smallest the export allows
# (VGG's and AlexNet's adaptive pools export only where they are the identity: 224x224)
MODELS = {
    "resnet18": (11_689_512, 64),
    "resnet50": (25_557_032, 64),
    "densenet121": (7_978_856, 64),
    "alexnet": (61_100_840, 224),
    "vgg16": (138_357_544, 224),
}


def imported(tmp_path, name: str, data: bytes, capsys=None) -> str:
    """`netc import` of the model bytes; the spec's path."""
    model = tmp_path / f"{name}.onnx"
    model.write_bytes(data)
    spec = str(tmp_path / f"{name}.net")
    assert main(["import", str(model), "-o", spec]) == 0
    return spec


def test_densenet_concatenations_chain_into_a_repeated_unit(tmp_path):
    torch.manual_seed(0)
    model = torchvision_models.DenseNet(8, (3, 5), 16, num_classes=10)
    data = export(randomise_statistics(model), 1, 3, 16, 16)
    spec = imported(tmp_path, "dense", data)
    text = open(spec).read()
    assert "out concat(x, conv2)" in text and "dense_unit x 3" in text
    assert "dense_unit x 5" in text
    with open(spec[:-4] + ".safetensors", "rb") as handle:
        tensors = decode(handle.read(), spec)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    (want,) = onnxruntime_outputs(data, {"x": x})
    (got,) = netdsl_outputs(text, tensors, [x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_networks_import_and_match_onnxruntime(tmp_path, name):
    published, size = MODELS[name]
    torch.manual_seed(0)
    model = randomise_statistics(getattr(torchvision_models, name)())
    assert sum(p.numel() for p in model.parameters()) == published
    big = size > 100
    data = export(model, 1, 3, size, size, attach=big)
    if big:  # VGG's and AlexNet's 250-550 MB in memory; the small ones go through files
        result = import_proto(onnx.load_model_from_string(data), f"{name}.onnx", name)
        text, tensors = result.text, result.tensors
        net = check_text(text, f"{name}.net")
    else:
        spec = imported(tmp_path, name, data)
        net = check_file(spec)
        text = open(spec).read()
        with open(spec[:-4] + ".safetensors", "rb") as handle:
            tensors = decode(handle.read(), spec)
    assert net.param_count() == published
    assert format_text(text) == text  # fmt's canonical form: import -> fmt is stable
    assert "Shape" not in text and "gather" not in text
    match(build_plan(net.graph), tensors, name)  # what --init-from reads: every name fits
    batch = 1 if big else 2
    x = np.random.default_rng(1).standard_normal((batch, 3, size, size)).astype(np.float32)
    (want,) = onnxruntime_outputs(data, {"x": x})
    (got,) = netdsl_outputs(text, tensors, [x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if name == "resnet18":
        _reads_as_blocks_stages_and_repeats(text)


def _reads_as_blocks_stages_and_repeats(text: str) -> None:
    body = [line for line in text.splitlines() if line.strip()]
    here = os.path.dirname(os.path.abspath(__file__))
    ours = [line for line in open(os.path.join(here, "..", "specs", "resnet18.net"))
            if line.strip()]
    assert len(body) <= 2 * len(ours)
    assert "block residual(c) {" in text and "block residual_down(c) {" in text
    assert "-> residual(64) x 2" in text
    assert text.count("-> stage(") == 3
    assert "conv(c, 3, stride=2, pad=1, bias=false)" in text  # Conv, BN, Relu stay apart
    assert "downsample = x -> conv(c, 1, stride=2, bias=false) -> batchnorm" in text


def test_an_mlp_with_matmul_add_softmax_and_reshape(tmp_path):
    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(48, 20) * 0.2)
            self.b = torch.nn.Parameter(torch.randn(20))
            self.out = torch.nn.Linear(20, 5)

        def forward(self, x):
            h = torch.tanh(x.view(x.size(0), -1) @ self.w + self.b)
            return torch.softmax(self.out(torch.nn.functional.leaky_relu(h, 0.2)), -1)

    data = export(MLP(), 1, 3, 4, 4)
    spec = imported(tmp_path, "mlp", data)
    text = open(spec).read()
    assert "dense(20)" in text and "softmax" in text and "reshape" not in text
    assert "Shape" not in text and "gather" not in text
    with open(spec[:-4] + ".safetensors", "rb") as handle:
        tensors = decode(handle.read(), spec)
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    (want,) = onnxruntime_outputs(data, {"x": x})
    (got,) = netdsl_outputs(text, tensors, [x])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# ---- errors


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_every_unsupported_node_is_listed_once_per_kind_and_nothing_written(tmp_path, capsys):
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv_odd", pads=[0, 0, 1, 1]),
        helper.make_node("Cos", ["c"], ["t"], name="wave1"),
        helper.make_node("Cos", ["t"], ["t2"], name="wave2"),
        helper.make_node("Relu", ["t2"], ["r"], name="relu"),
        helper.make_node("Hardmax", ["r"], ["y"], name="pick", axis=-1),
    ]
    model = _model(nodes, [_info("x", ["batch", 3, 8, 8])], [_info("y", ["batch", 4, "h", "w"])],
                   [weight])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    assert main(["import", str(path), "-o", str(tmp_path / "bad.net")]) == 1
    err = capsys.readouterr().err
    assert "Conv node 'conv_odd'" in err and "same padding at both ends" in err
    assert "Cos nodes 'wave1', 'wave2'" in err
    assert "Hardmax node 'pick'" in err
    assert "3 errors" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == ["bad.onnx"]


@pytest.mark.parametrize("content, says", [
    (b"", "is empty"),
    (b"this is not a model at all\n" * 4, "is not an ONNX model"),
    (None, "is not an ONNX model"),                    # a truncated export
])
def test_bad_files_are_one_clear_error(tmp_path, capsys, content, says):
    if content is None:
        data = export(torchvision_models.BasicBlock(4, 4), 1, 4, 8, 8)
        content = data[: len(data) // 2]
        capsys.readouterr()  # the exporter's warnings
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    assert main(["import", str(path), "-o", str(tmp_path / "m.net")]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_a_missing_file_and_a_directory(tmp_path, capsys):
    assert main(["import", str(tmp_path / "none.onnx")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["import", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_external_data_is_read_from_beside_the_model(tmp_path, capsys):
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(16, np.float32), "b")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    model = _model(nodes, [_info("x", ["batch", 32])], [_info("y", ["batch", 16])],
                   [weight, bias])
    path = tmp_path / "big.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="big.weights", size_threshold=0)
    assert main(["import", str(path), "-o", str(tmp_path / "big.net")]) == 0
    with open(tmp_path / "big.safetensors", "rb") as handle:
        tensors = decode(handle.read(), "big")
    np.testing.assert_array_equal(tensors["logits.weight"], numpy_helper.to_array(weight))
    capsys.readouterr()
    os.remove(tmp_path / "big.weights")
    assert main(["import", str(path), "-o", str(tmp_path / "again.net")]) == 1
    err = capsys.readouterr().err
    assert "external file 'big.weights'" in err and "not beside the model" in err


def test_eval_and_predict_use_the_imported_weights(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5))
    data = export(randomise_statistics(model), 1, 3, 8, 8)
    spec = imported(tmp_path, "small", data)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=rng.integers(0, 5, 6))
    weights = spec[:-4] + ".safetensors"
    out = tmp_path / "predictions.npz"
    assert main(["predict", spec, "--data", str(tmp_path / "data.npz"), "--init-from", weights,
                 "-o", str(out)]) == 0
    (want,) = onnxruntime_outputs(data, {"x": x})
    np.testing.assert_allclose(np.load(out)["logits"], want, rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    assert main(["eval", spec, "--data", str(tmp_path / "data.npz"), "--init-from", weights]) == 0
    assert "6 examples" in capsys.readouterr().out
