"""Round trips: a spec exported to ONNX, imported and exported again gives the same
outputs; an imported model edited as the TUI edits (a layer inserted), checked and
exported again runs in onnxruntime."""
import os

import numpy as np
import onnx
import pytest

from export_cases import ROOT, Case
from netdsl import edits
from netdsl.driver import check_text
from netdsl.export.onnx import to_onnx
from netdsl.fmt import format_text
from netdsl.onnx_import.pipeline import import_proto
from onnx_import_cases import netdsl_outputs, onnxruntime_outputs, reexport


@pytest.mark.parametrize("name", [
    "mlp", "lenet5", "resnet20", "nin", "autoencoder", "logistic_regression", "googlenet",
    # recurrences, each a Scan: written out, hand-written, stacked and both ways
    "elman", "jordan", "lstm", "lstm_classifier", "gru", "parity", "adding", "char_lm",
    "bidirectional_rnn",
    # word indices into an embedding table
    "skipgram", "cbow",
    # Slice (crop) and Expand (upsample); fcn8s and unet in small below
    "conv_autoencoder"])
def test_export_import_export_gives_the_same_outputs(name):
    _roundtrip(Case(os.path.join(ROOT, "specs", f"{name}.net")))


# specs/fcn8s.net and specs/unet.net in small (the same crops, skips and upsamplings, on
# 28-pixel images; the full ones round-trip too but take a minute)
SMALL = {
    "fcn": """network fcn
input  x : [3, 28, 28]
target y : class(4)[28, 28]
pool1 = x -> conv(8, 3, pad=10) -> relu -> maxpool(2, ceil=true)
pool2 = pool1 -> conv(8, 3, pad=1) -> relu -> maxpool(2, ceil=true)
score = pool2 -> conv(4, 3) -> relu -> conv(4, 1)
up2 = score -> conv_transpose(4, 4, stride=2, bias=false)
fuse = up2 + crop(pool1 -> conv(4, 1), up2)
logits = crop(fuse -> conv_transpose(4, 8, stride=4, bias=false), x)
loss cross_entropy(logits, y)
""",
    "small_unet": """network small_unet
input  x : [1, 36, 36]
target y : class(2)[28, 28]
block up(c) {
  in x, skip
  u = x -> conv_transpose(c, 2, stride=2)
  out concat(crop(skip, u), u) -> conv(c, 3) -> relu
}
d1 = x -> conv(4, 3) -> relu                              # [4, 34, 34]
d2 = d1 -> maxpool(2) -> conv(8, 3) -> relu               # [8, 15, 15]
logits = up(d2, d1, 4)                                    # [4, 28, 28]
           -> upsample(2) -> conv(2, 2, stride=2)         # [2, 28, 28]
loss cross_entropy(logits, y)
""",
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_crops_and_upsamplings_round_trip(name, tmp_path):
    path = tmp_path / f"{name}.net"
    path.write_text(SMALL[name])
    imported = _roundtrip(Case(str(path)))
    assert "crop(" in imported.text
    assert ("upsample" in imported.text) == ("upsample" in SMALL[name])


TWO_HEADS = """network twoheads
input  x : [4, 8, 8]
target y : class(3)
target z : class(3)

block unit(c) {
  in x
  r = x -> conv(c, 3, pad=1) -> relu -> conv(c, 3, pad=1)
  out x + r -> relu
}

mid = x -> unit(4) x 2
aux = mid -> global_avgpool -> dense(3)
logits = mid -> unit(4) x 2 -> global_avgpool -> dense(3)
loss cross_entropy(logits, y)
loss cross_entropy(aux, z)
"""


def test_a_side_output_keeps_the_trunk_s_blocks(tmp_path):
    """The trunk (the path to the deepest output) is recovered as blocks and repeats, cut
    where a side branch (an auxiliary head) reads it; the branch reads the cut's name."""
    path = tmp_path / "twoheads.net"
    path.write_text(TWO_HEADS)
    text = _roundtrip(Case(str(path))).text
    assert "block residual()" in text
    cut = next(line.split(" = ")[0] for line in text.splitlines()
               if line.endswith(" = x -> residual x 2"))
    assert f"logits = {cut} -> residual x 2 -> global_avgpool -> dense(3)" in text
    assert f"aux = {cut} -> global_avgpool -> dense(3)" in text


TWO_INPUTS = """network twoinputs
input  x : [4, 8, 8]
input  meta : [5]
target y : class(3)

block unit(c) {
  in x
  r = x -> conv(c, 3, pad=1) -> relu -> conv(c, 3, pad=1)
  out x + r -> relu
}

m = meta -> dense(4) -> relu
logits = x -> unit(4) x 2 -> global_avgpool -> concat(m) -> dense(3)
loss cross_entropy(logits, y)
"""


def test_a_second_input_joins_the_trunk_s_pipeline(tmp_path):
    """A branch from another input, read by one layer of the trunk after its trunk
    input, is written before the trunk, which reads it by name in its pipeline."""
    path = tmp_path / "twoinputs.net"
    path.write_text(TWO_INPUTS)
    text = _roundtrip(Case(str(path))).text
    assert "input  meta : [5]" in text  # the spec's own names, as ONNX's inputs keep them
    branch = next(line.split(" = ")[0] for line in text.splitlines()
                  if line.endswith(" = meta -> dense(4) -> relu"))
    assert f"logits = x -> residual x 2 -> global_avgpool -> concat({branch}) -> dense(3)" \
        in text
    assert text.index(f"{branch} = ") < text.index("logits = ")


def test_googlenet_s_auxiliary_heads_leave_its_inception_blocks(tmp_path):
    case = Case(os.path.join(ROOT, "specs", "googlenet.net"))
    text = import_proto(to_onnx(case.view, case.params, case.buffers), "googlenet.onnx",
                        "googlenet").text
    assert text.count("-> branches(") == 9 and "block branches(" in text
    assert sum(line.startswith("aux_classifier") for line in text.splitlines()) == 2


def _roundtrip(case: Case):
    """export -> import -> export of a spec: the same outputs in onnxruntime both times,
    and netdsl's executor on the imported spec gives them too."""
    name = case.name
    first = to_onnx(case.view, case.params, case.buffers)
    imported = import_proto(first, f"{name}.onnx", name)
    assert format_text(imported.text) == imported.text
    second = reexport(imported.text, imported.tensors)
    onnx.checker.check_model(second, full_check=True)
    feed = case.inputs(batch=2, steps=4)
    want = onnxruntime_outputs(first.SerializeToString(), feed)
    again = onnxruntime_outputs(second.SerializeToString(), dict(zip(
        [i.name for i in second.graph.input], feed.values())))
    ours = netdsl_outputs(imported.text, imported.tensors, list(feed.values()))
    for w, a, o in zip(want, again, ours):
        np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(o, w, rtol=1e-4, atol=1e-5)
    return imported


def test_an_imported_model_edited_checked_and_exported_runs_in_onnxruntime():
    case = Case(os.path.join(ROOT, "specs", "lenet5.net"))
    first = to_onnx(case.view, case.params, case.buffers)
    imported = import_proto(first, "lenet5.onnx", "lenet5")
    net = check_text(imported.text, "lenet5.net")
    conv = next(n for n, d in net.graph.nodes(data=True)
                if d["kind"] == "op" and d["op"].name == "conv")
    # the edit the TUI's "insert after" makes: a dropout after the first convolution
    edit = edits.insert_after(imported.text, net.graph, conv, "dropout(0.25)")
    text = imported.text[:edit.start] + edit.text + imported.text[edit.end:]
    assert "dropout(0.25)" in text and text != imported.text
    second = reexport(text, imported.tensors)  # every tensor keeps its name
    feed = case.inputs(batch=3)
    (want,) = onnxruntime_outputs(first.SerializeToString(), feed)
    (got,) = onnxruntime_outputs(second.SerializeToString(), feed)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # dropout: off in inference
