"""A LeNet-5 trained by `netc run`, exported to ONNX, PyTorch and safetensors: on the
held-out split `netc eval` scores, each reproduces netdsl's test accuracy exactly."""
import os
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, cli_main
from netdsl.app.session import prepare
from netdsl.driver import check_file

SPEC = os.path.join(ROOT, "specs", "lenet5.net")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The checkpoint folder of LeNet-5 after one epoch, and `netc eval`'s accuracy."""
    folder = tmp_path_factory.mktemp("lenet")
    run = cli_main("run", SPEC, "--epochs", "1", "--quiet", "--checkpoint", str(folder / "run"))
    assert run.returncode == 0, run.stderr
    scored = cli_main("eval", SPEC, "--checkpoint", str(folder / "run"))
    assert scored.returncode == 0, scored.stderr
    count, accuracy = re.search(r"([\d,]+) examples: .*accuracy ([\d.]+)%",
                                scored.stdout).groups()
    return folder, int(count.replace(",", "")), float(accuracy)


def held_out():
    """The examples `netc eval` scores: the spec's data, its validation split."""
    session = prepare(check_file(SPEC), native=False)
    _, held = session.load_data().split(session.settings.val, session.settings.seed)
    return held.arrays["x"].astype(np.float32), held.arrays["y"]


def exported(folder, to: str) -> str:
    path = str(folder / f"lenet5_{to}")
    result = cli_main("export", SPEC, "--to", to, "-o", path, "--checkpoint",
                      str(folder / "run"))
    assert result.returncode == 0, result.stderr
    return path


def torch_model(folder, state_file: str):
    namespace = {}
    exec(open(folder / "lenet5_torch" / "model.py").read(), namespace)
    model = namespace["Model"]()
    model.load_state_dict(load_file(state_file))
    return model.eval()


def percent(predicted, y) -> float:
    return round(100 * float((predicted == y).mean()), 2)


def test_every_format_reproduces_the_test_accuracy(trained):
    folder, count, accuracy = trained
    x, y = held_out()
    assert len(y) == count and accuracy > 50  # the split eval scores, of a network that learned
    (logits,) = ort.InferenceSession(exported(folder, "onnx"),
                                     providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert percent(logits.argmax(1), y) == accuracy
    state = os.path.join(exported(folder, "torch"), "model.safetensors")
    weights = exported(folder, "safetensors")
    with torch.no_grad():
        for model in (torch_model(folder, state), torch_model(folder, weights)):
            assert percent(model(torch.as_tensor(x)).argmax(1).numpy(), y) == accuracy
