"""safetensors of a network's tensors: PyTorch-style names, and reading them back."""
import numpy as np
import pytest

from netdsl.driver import check_text
from netdsl.errors import SpecError
from netdsl.export.weights import (decode, encode, match, network_tensors, spec_metadata,
                                   tensor_sources)
from netdsl.lower.plan import build_plan

NET = """\
network small
input x : [3, 8, 8]
target y : class(4)
block unit(c) {
  in x
  out x -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu
}
features = x -> unit(4) -> unit(8)
logits = features -> gap -> dense(4)
loss cross_entropy(logits, y)
"""


@pytest.fixture
def plan():
    return build_plan(check_text(NET, "small.net").graph)


def tensors(plan):
    params = {key: np.full(p.shape, i, np.float32) for i, (key, p) in
              enumerate(plan.params.items())}
    trained = {"unit2/batchnorm1": {"running_mean": np.full(8, 0.5, np.float32),
                                    "running_var": np.full(8, 2.0, np.float32)}}
    return network_tensors(plan, params, trained)


def test_names_follow_the_blocks_and_hold_the_running_statistics(plan):
    named = tensors(plan)
    assert set(named) == {
        "unit1.conv1.weight", "unit1.batchnorm1.weight", "unit1.batchnorm1.bias",
        "unit1.batchnorm1.running_mean", "unit1.batchnorm1.running_var",
        "unit2.conv1.weight", "unit2.batchnorm1.weight", "unit2.batchnorm1.bias",
        "unit2.batchnorm1.running_mean", "unit2.batchnorm1.running_var",
        "logits.weight", "logits.bias"}
    assert named["unit2.conv1.weight"].shape == (8, 4, 3, 3)
    assert (named["unit2.batchnorm1.running_var"] == 2).all()   # trained
    assert (named["unit1.batchnorm1.running_var"] == 1).all()   # as it starts


def test_a_file_read_back_gives_every_tensor_its_place(plan):
    named = tensors(plan)
    data = encode(named, spec_metadata("small", NET))
    placed = match(plan, decode(data, "small.safetensors"), "small.safetensors").loaded
    assert (placed[("buffer", "unit2/batchnorm1", "running_mean")] == 0.5).all()
    key = next(k for k in plan.params if k.startswith("logits"))
    np.testing.assert_array_equal(placed[("param", key)], named["logits." + key.split(".")[-1]])


def test_what_does_not_fit_is_listed(plan):
    named = tensors(plan)
    del named["logits.bias"]
    named["head.weight"] = np.zeros(3, np.float32)
    named["unit1.conv1.weight"] = np.zeros((5, 3, 3, 3), np.float32)
    with pytest.raises(SpecError) as error:
        match(plan, named, "other.safetensors")
    message = error.value.message
    assert "missing from the file: logits.bias" in message
    assert "not in the network: head.weight" in message
    assert "shapes differ: unit1.conv1.weight (5, 3, 3, 3) (the network's: (4, 3, 3, 3))" in message


def test_a_file_that_is_not_safetensors():
    with pytest.raises(SpecError, match="not a readable safetensors file"):
        decode(b"not a safetensors file", "bad.safetensors")


def test_partly_fitting_tensors_load_with_partial(plan):
    named = tensors(plan)
    named["logits.weight"] = np.zeros((3, 2), np.float32)  # a new head
    del named["logits.bias"]
    named["old_head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(SpecError) as error:
        match(plan, named, "other.safetensors")
    assert "--init-partial" in error.value.hint
    found = match(plan, named, "other.safetensors", partial=True)
    assert "logits.weight" not in found.names and "logits.bias" in found.missing
    assert "unit1.conv1.weight" in found.names and found.unknown == ["old_head.weight"]
    assert found.differ["logits.weight"][0] == (3, 2)
    assert len(found.loaded) == len(tensor_sources(plan)) - 2
    assert all(key[0] in ("param", "buffer") for key in found.loaded)


def test_partial_needs_one_that_fits(plan):
    with pytest.raises(SpecError, match="none of its tensors fits"):
        match(plan, {"other.weight": np.zeros(2, np.float32)}, "x.safetensors", partial=True)
