"""ONNX export: every spec's model (the ImageNet-sized ones as their smaller stand-ins,
shrunk_specs.py, and one of them whole) passes ONNX's full check and, run by onnxruntime
on random inputs, gives netdsl's eval-mode outputs."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export_cases import SPECS, Case
from netdsl.errors import SpecError
from netdsl.export import select
from netdsl.export.onnx import OPSET, to_onnx
from netdsl.driver import check_text


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # the big image networks load several times faster unoptimised; the sums are the same
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("path", SPECS, ids=lambda p: os.path.basename(p)[:-4])
def test_onnxruntime_gives_netdsls_outputs(path):
    assert_onnxruntime_agrees(Case(path, shrunk=True))


def test_a_whole_imagenet_sized_network_gives_netdsls_outputs():
    case = Case(next(p for p in SPECS if p.endswith("resnet18.net")))
    assert case.big()
    assert_onnxruntime_agrees(case)


def assert_onnxruntime_agrees(case: Case) -> None:
    model = to_onnx(case.view, case.params, case.buffers)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET
    graph_inputs = [i.name for i in model.graph.input]
    assert graph_inputs == list(case.view.inputs)
    assert [o.name for o in model.graph.output] == list(case.view.outputs)
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in model.graph.input)
    feed = case.inputs(batch=1 if case.big() else 2)
    got = session(model).run(None, feed)
    expected = case.forward(feed)
    for (name, want), value in zip(expected.items(), got):
        assert value.shape == want.shape, name
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_names_follow_the_blocks():
    case = Case(next(p for p in SPECS if p.endswith("resnet20.net")))
    model = to_onnx(case.view, case.params, case.buffers)
    initializers = {t.name for t in model.graph.initializer}
    nodes = {n.name for n in model.graph.node}
    assert "stage2.basic1.conv1.weight" in initializers
    assert "stage2.basic1.batchnorm1.running_var" in initializers
    assert "stage2/basic1/conv1" in nodes


def test_the_gans_generator_alone_has_no_discriminator():
    case = Case(next(p for p in SPECS if p.endswith("gan.net")), ["fake"])
    model = to_onnx(case.view, case.params)
    assert [o.name for o in model.graph.output] == ["fake"]
    names = [t.name for t in model.graph.initializer]
    assert any(n.startswith("G.") for n in names) and not any(n.startswith("D.") for n in names)


def test_a_recurrence_is_a_scan_with_a_symbolic_time_axis():
    case = Case(next(p for p in SPECS if p.endswith("lstm.net")))
    model = to_onnx(case.view, case.params)
    assert [n.op_type for n in model.graph.node].count("Scan") == 1
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[:2]]
    assert dims == ["batch", "time"]
    feed = case.inputs(steps=7)
    (got,) = session(model).run(None, feed)
    np.testing.assert_allclose(got, case.forward(feed)["logits"], rtol=1e-4, atol=1e-5)


def test_a_fixed_batch():
    case = Case(next(p for p in SPECS if p.endswith("mlp.net")))
    model = to_onnx(case.view, case.params, batch=4)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


UNPOOL = """\
network unpooled
input x : [1, 8, 8]
target y : [1, 8, 8]
p = x -> maxpool(2)
z = maxunpool(p, p, 2)
loss mse(z, y)
"""


def test_an_op_without_a_counterpart_is_named_at_its_line():
    graph = check_text(UNPOOL, "unpooled.net").graph
    with pytest.raises(SpecError) as error:
        to_onnx(select(graph), {})
    assert "has no ONNX lowering" in error.value.message
    assert error.value.span.line == 5 and "MaxUnpool" in error.value.hint


def test_the_training_graph_normalises_by_the_batchs_statistics():
    case = Case(next(p for p in SPECS if p.endswith("resnet20.net")))
    model = to_onnx(case.view, case.params, case.buffers, training=True)
    onnx.checker.check_model(model, full_check=True)
    assert not any("running" in t.name for t in model.graph.initializer)
    feed = case.inputs(batch=4)
    (got,) = session(model).run(None, feed)
    out = case.executor(feed).forward(case.batch(feed), True, {"logits"}, losses=False)
    np.testing.assert_allclose(got, out["logits"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, case.forward(feed)["logits"], rtol=1e-2)
