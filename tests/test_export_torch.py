"""PyTorch export: every spec's generated module, run in a fresh interpreter where netdsl
cannot be imported, gives netdsl's outputs (eval mode) and parameter gradients (train
mode), in float64. One subprocess runs every module (torch_export_driver.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

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
    """spec name -> (its case, the inputs, the driver's results, parameter names by key),
    every module run by one subprocess."""
    root = tmp_path_factory.mktemp("torch_export")
    cases = {}
    for path in SPECS:
        case = Case(path).with_losses()
        feed = case.inputs(batch=1 if case.big() else 2, dtype=np.float64)
        cases[case.name] = (case, feed, write_case(root / case.name, case, feed))
    done = subprocess.run([sys.executable, "-I", DRIVER, str(root)], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {}
    for name, (case, feed, names) in cases.items():
        with np.load(root / name / "results.npz") as data:
            results[name] = (case, feed, {k: data[k] for k in data.files}, names)
    return results


@pytest.mark.parametrize("name", NAMES)
def test_outputs_equal_netdsls(runs, name):
    case, feed, got, _ = runs[name]
    expected = case.forward(feed, "float64")
    for i, (output, want) in enumerate(expected.items()):
        np.testing.assert_allclose(got[f"out{i}"], want, rtol=1e-8, atol=1e-12, err_msg=output)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_gradients_equal_netdsls(runs, name):
    case, feed, got, names = runs[name]
    ex = case.executor(feed, "float64")
    ex.forward(case.batch(feed), True)
    ex.backward()
    assert names and any(name in got for name in names.values())
    for key, name in names.items():
        want = ex.grads[key]
        # torch leaves the gradient of a parameter no loss reaches at None
        np.testing.assert_allclose(got.get(name, np.zeros_like(want)), want, rtol=1e-8,
                                   atol=1e-12, err_msg=name)
