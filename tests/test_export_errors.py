"""What an export cannot write is a located error: every op without a lowering to a
format names the format's nearest counterpart; shapes past a format's layers still
export."""
import numpy as np
import pytest
import torch

from export_cases import Case
from netdsl.driver import check_text
from netdsl.errors import SpecError
from netdsl.export import select
from netdsl.export.onnx import to_onnx
from netdsl.export.torch import to_torch
from netdsl.ops.base import OPS, Op
from netdsl.ops.common import Pointwise
from test_export_onnx import UNPOOL, session

FORMATS = {"ONNX": "onnx", "PyTorch": "torch"}


def lowered(cls, method: str) -> bool:
    """Whether an op class writes itself in a format: its own lowering, or a pointwise
    op's formula."""
    own = getattr(cls, method)
    if own is getattr(Op, method):
        return False
    return own is not getattr(Pointwise, method) or hasattr(cls, "formula")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_op_without_a_lowering_names_the_nearest(fmt):
    missing = {name for name, cls in OPS.items() if not lowered(cls, FORMATS[fmt])}
    assert "maxunpool" in missing  # the walk finds what it is meant to
    assert [name for name in missing if not OPS[name].nearest.get(fmt)] == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_error_is_at_the_ops_line_with_the_nearest(fmt):
    view = select(check_text(UNPOOL, "unpooled.net").graph)
    with pytest.raises(SpecError) as error:
        to_onnx(view, {}) if fmt == "ONNX" else to_torch(view)
    assert error.value.message == f"maxunpool (z) has no {fmt} lowering"
    assert error.value.span.line == 5
    assert error.value.hint == f"the nearest in {fmt} is {OPS['maxunpool'].nearest[fmt]}"


# batchnorm over four spatial dims: torch's BatchNorm layers stop at three
DEEP = """\
network deep
input x : [3, 2, 3, 2, 3]
target y : class(2)
h = x -> batchnorm -> relu -> flatten -> dense(2)
loss cross_entropy(h, y)
"""


def test_batchnorm_past_three_spatial_dims_exports(tmp_path):
    path = tmp_path / "deep.net"
    path.write_text(DEEP)
    case = Case(str(path))
    feed = case.inputs(batch=4, dtype=np.float64)
    module = to_torch(case.view, case.net.sources)
    namespace = {}
    exec(compile(module.source, "model.py", "exec"), namespace)
    model = namespace["Model"]().double()
    state = {}
    for name, source in module.state.items():
        value = (case.params[source[1]] if source[0] == "param" else
                 case.buffers[source[1]][source[2]] if source[0] == "buffer" else source[1])
        state[name] = torch.as_tensor(np.asarray(value, np.float64))
    model.load_state_dict(state)
    x = torch.as_tensor(feed["x"])
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(x).numpy(), case.forward(feed, "float64")["h"],
                                   rtol=1e-8)
        trained = case.executor(feed, "float64").forward(case.batch(feed), True, {"h"},
                                                         losses=False)
        np.testing.assert_allclose(model.train()(x).numpy(), trained["h"], rtol=1e-8)
    got = session(to_onnx(case.view, case.params, case.buffers)).run(None, case.inputs(batch=4))
    np.testing.assert_allclose(got[0], case.forward(case.inputs(batch=4))["h"], rtol=1e-4,
                               atol=1e-5)
