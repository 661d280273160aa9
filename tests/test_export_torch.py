"""PyTorch export: every spec's generated module (the ImageNet-sized ones as their smaller
stand-ins, shrunk_specs.py), run in a fresh interpreter where netdsl cannot be imported,
gives netdsl's outputs (eval mode) and parameter gradients (train mode), in float64. One
subprocess runs every module (torch_export_driver.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from export_cases import SPECS, Case
from netdsl.export.torch import to_torch

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_export_driver.py")
NAMES = [os.path.basename(p)[:-4] for p in SPECS]


def write_case(folder, case: Case, feed: dict) -> dict:
    """The generated module of `case`, its state_dict (float32, as exported) and its
    inputs; returns the state_dict's parameter names by parameter key."""
    os.makedirs(folder)
    module = to_torch(case.view, case.net.sources)
    with open(os.path.join(folder, "model.py"), "w") as handle:
        handle.write(module.source)
    state, names = {}, {}
    for name, source in module.state.items():
        if source[0] == "param":
            state[name], names[source[1]] = case.params[source[1]], name
        elif source[0] == "buffer":
            step = case.lowered.plan.step_of(source[1])
            state[name] = case.buffers.get(source[1], {}).get(
                source[2], step.op.buffers(*step.input_types)[source[2]])
        else:
            state[name] = source[1]
    save_file({k: np.asarray(v) for k, v in state.items()},
              os.path.join(folder, "model.safetensors"))
    np.savez(os.path.join(folder, "inputs.npz"),
             **{f"arg{i}": value for i, value in enumerate(feed.values())})
    losses = [i for i, name in enumerate(case.view.outputs) if name in case.losses()]
    with open(os.path.join(folder, "losses"), "w") as handle:
        handle.write(" ".join(map(str, losses)))
    return names


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """spec name -> (its case, the inputs, the file of the driver's results, parameter
    names by key), every module run by one subprocess. Weights and gradients stay on disk
    until a test reads its own."""
    root = tmp_path_factory.mktemp("torch_export")
    cases = {}
    for path in SPECS:
        case = Case(path, shrunk=True).with_losses()
        feed = case.inputs(batch=2, dtype=np.float64)
        cases[case.name] = (case, feed, write_case(root / case.name, case, feed))
        case.params = root / case.name / "model.safetensors"
    done = subprocess.run([sys.executable, "-I", DRIVER, str(root)], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: (case, feed, root / name / "results.npz", names)
            for name, (case, feed, names) in cases.items()}


def assert_close(got, want, name: str) -> None:
    """float64 agreement, rtol 1e-8, near zero to 1e-12 of the largest value (ResNet-50's
    53 batchnorms amplify the rounding of sums taken in another order)."""
    assert got.shape == want.shape, name
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12 * scale, err_msg=name)


def results(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def weighted(case: Case, names: dict) -> Case:
    """The case with its parameters, read back from the state_dict written for it."""
    state = load_file(case.params)
    weighted = Case.__new__(Case)
    weighted.__dict__.update(case.__dict__)
    weighted.params = {key: state[name] for key, name in names.items()}
    return weighted


@pytest.mark.parametrize("name", NAMES)
def test_outputs_equal_netdsls(runs, name):
    case, feed, got, names = runs[name]
    expected = weighted(case, names).forward(feed, "float64")
    got = results(got)
    for i, (output, want) in enumerate(expected.items()):
        assert_close(got[f"out{i}"], want, output)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_gradients_equal_netdsls(runs, name):
    case, feed, got, names = runs[name]
    ex = weighted(case, names).executor(feed, "float64")  # float64 copies of the weights
    ex.forward(case.batch(feed), True)
    ex.backward()
    ex.ctxs = {}  # the activations the backward pass read
    got = results(got)
    assert names and any(name in got for name in names.values())
    for key, name in names.items():
        want = ex.grads[key]
        # torch leaves the gradient of a parameter no loss reaches at None
        assert_close(got.get(name, np.zeros_like(want)), want, name)
