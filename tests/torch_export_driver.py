"""Runs generated PyTorch modules where netdsl cannot be imported, as their users will.

    python torch_export_driver.py FOLDER

FOLDER holds one folder per case with `model.py`, `model.safetensors`, `inputs.npz` (in
the order of the model's arguments, as arg0, arg1, ...) and `losses` (the positions of the
outputs that are losses). For each it writes `results.npz`: the eval-mode outputs (out0,
...) in float64, and the train-mode gradients of the summed losses by parameter name.
"""
import importlib.util
import os
import sys

sys.modules["netdsl"] = None  # an `import netdsl` anywhere below fails

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.nn import functional as F  # noqa: E402

# an exported model's random numbers are torch's, which netdsl's cannot match: in train
# mode dropout keeps every unit (still scaling by 1/(1-p)) and noise adds zero, as the
# netdsl side of the test has it
F.dropout = lambda x, p=0.5, training=True, inplace=False: x / (1 - p) if training else x
torch.randn_like = torch.zeros_like


def run(folder: str) -> None:
    spec = importlib.util.spec_from_file_location(f"model_{os.path.basename(folder)}",
                                                  os.path.join(folder, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Model()
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    model.double()  # the float32 weights exactly, in float64
    with np.load(os.path.join(folder, "inputs.npz")) as data:
        args = [torch.from_numpy(data[f"arg{i}"]) for i in range(len(data.files))]
    losses = [int(i) for i in open(os.path.join(folder, "losses")).read().split()]
    with torch.no_grad():
        outputs = model.eval()(*args)
    results = {f"out{i}": out.numpy() for i, out in enumerate(_tuple(outputs))}
    outputs = _tuple(model.train()(*args))
    sum(outputs[i] for i in losses).backward()
    results.update({name: p.grad.numpy() for name, p in model.named_parameters()
                    if p.grad is not None})
    np.savez(os.path.join(folder, "results.npz"), **results)


def _tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)

if __name__ == "__main__":
    torch.set_num_threads(2)
    root = sys.argv[1]
    for name in sorted(os.listdir(root)):
        run(os.path.join(root, name))
