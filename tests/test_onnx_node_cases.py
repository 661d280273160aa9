"""ONNX's own operator conformance cases as an oracle: every node case whose operators
netc import claims is imported and run by netdsl's executor, its outputs compared with
the case's expected ones. A case netdsl cannot express (a constant operand, a batch of
rank 0, a padding mode netdsl lacks) is reported as out of scope with the reason; of the
cases in scope at least 90% must pass (docs/onnx.md lists the counts)."""
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.loader import load_model_tests

from netdsl.errors import SpecError, SpecErrors
from netdsl.onnx_import.pipeline import import_proto
from netdsl.onnx_import.translate import RULES
from onnx_import_cases import netdsl_outputs

# the operands that are weights: an exported model holds them as initializers, a node
# case feeds them as inputs
WEIGHTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "ReduceMean": (1,), "ReduceMax": (1,),
           "BatchNormalization": (1, 2, 3, 4), "Gemm": (1, 2), "MatMul": (1,),
           "PRelu": (1,), "Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Dropout": (1, 2),
           "LSTM": (1, 2, 3, 4, 5, 6, 7), "GRU": (1, 2, 3, 4, 5), "RNN": (1, 2, 3, 4, 5),
           "Slice": (1, 2, 3, 4), "Expand": (1,)}


def _with_weights(case) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """The case's model with its weight operands as initializers, and the other inputs."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, _ = case.data_sets[0]
    feeds = dict(zip([i.name for i in model.graph.input], inputs))
    constant = {node.input[i] for node in model.graph.node
                for i in WEIGHTS.get(node.op_type, ()) if i < len(node.input) and node.input[i]}
    rest = []
    for info in list(model.graph.input):
        if info.name in constant:
            model.graph.input.remove(info)
            model.graph.initializer.append(numpy_helper.from_array(feeds[info.name], info.name))
        else:
            rest.append(feeds[info.name])
    return model, rest


def _batch_major(array, axes, dims):
    """An array ONNX lays out with `axes` (a time-major sequence, an RNN's output with its
    directions axis) as netdsl holds it: batch, time, then its `dims` (a bidirectional
    RNN's [2, n] per step is netdsl's concatenation of the two directions)."""
    array = np.asarray(array)
    if axes is None:
        return array
    order = [axes.index(a) for a in ("B", "T") if a in axes]
    lead = len(order)
    order += [i for i, a in enumerate(axes) if isinstance(a, int)]
    directions = [i for i, a in enumerate(axes) if a == "D"]
    moved = np.transpose(array, order + directions)
    return moved.reshape(moved.shape[:lead] + tuple(dims))


def _outcome(case) -> tuple[str, str]:
    """("pass" | "fail" | "out of scope", why)."""
    model, feed = _with_weights(case)
    try:
        imported = import_proto(model, case.name, "case")
    except (SpecError, SpecErrors) as exc:
        errors = exc.errors if isinstance(exc, SpecErrors) else [exc]
        message = errors[0].message
        if message.startswith("internal"):
            return "fail", message
        return "out of scope", message.split(": ", 2)[-1]
    _, expected = case.data_sets[0]
    net = imported.network
    feed = [_batch_major(x, net.layouts.get(value), net.dims[value])
            for x, value in zip(feed, net.inputs)]
    expected = [_batch_major(y, net.layouts.get(value), net.dims[value])
                for y, value in zip(expected, net.outputs)]
    try:
        got = netdsl_outputs(imported.text, imported.tensors,
                             [np.asarray(x, np.float32) for x in feed])
    except Exception as exc:  # a crash of the executor is a failure, counted and shown
        return "fail", f"{type(exc).__name__}: {exc}"
    for value, want in zip(got, expected):
        if value.shape != np.shape(want) or not np.allclose(value, want, rtol=1e-3, atol=1e-5):
            return "fail", "outputs differ"
    return "pass", ""


def test_onnx_node_cases_of_the_supported_operators():
    claimed = set(RULES)
    cases = [c for c in load_model_tests(kind="node")
             if {n.op_type for n in c.model.graph.node} <= claimed]
    outcomes = {case.name: _outcome(case) for case in cases}
    counts = Counter(kind for kind, _ in outcomes.values())
    failed = {name: why for name, (kind, why) in outcomes.items() if kind == "fail"}
    in_scope = counts["pass"] + counts["fail"]
    summary = f"{counts['pass']} of {in_scope} in scope pass; failures: {failed}"
    assert len(cases) > 150, summary
    assert counts["pass"] >= 0.9 * in_scope, summary
    print(summary)
    for name, (kind, why) in sorted(outcomes.items()):
        print(f"{kind:12} {name}: {why}")
