"""`netc compile`'s summary: mult-adds as torchinfo counts them (checked against its rule
run on the same network in PyTorch), blocks rolled up by --depth, trainable and
non-trainable parameters, buffers; and `netc diff`."""
import json
import math
import os

import pytest

from conftest import SPECS, cli_main
from netdsl.cost import cost_rows, roll_up
from netdsl.report import trained_params

SMALL = """\
network small
input  x : [3, 16, 16]
target y : class(10)
h = x -> conv(8, 3, pad=1, bias=false) -> batchnorm -> relu
     -> conv(16, 3, stride=2, pad=1) -> relu -> flatten -> dense(10)
loss cross_entropy(h, y)
"""


def torchinfo_mult_adds(model, example) -> int:
    """torchinfo's rule (LayerInfo.calculate_macs), run with forward hooks: a Conv's
    weight and bias once per output position (batch included), any other layer's
    parameters once per example."""
    import torch

    total = 0

    def hook(module, _, output):
        nonlocal total
        for param in module.parameters(recurse=False):
            if "Conv" in type(module).__name__:
                total += param.numel() * output.shape[0] * math.prod(output.shape[2:])
            else:
                total += param.numel() * output.shape[0]

    for module in model.modules():
        module.register_forward_hook(hook)
    with torch.no_grad():
        model(example)
    return total


def test_mult_adds_as_torchinfo_counts_them(check):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    net = check(SMALL)
    rows = cost_rows(net.graph, batch=4)
    assert sum(r.mult_adds for r in rows) == torchinfo_mult_adds(model, torch.zeros(4, 3, 16, 16))
    # batchnorm's running statistics: torch's buffers less its step counter
    buffers = sum(b.numel() for name, b in model.named_buffers() if "num_batches" not in name)
    assert sum(r.buffers for r in rows) == buffers
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())


def test_resnet20_reports_torchinfos_40_81m():
    result = cli_main("compile", os.path.join(SPECS, "resnet20.net"), "--json")
    total = json.loads(result.stdout)["total"]
    assert total["mult_adds"] == 40_814_762 and total["flops"] == 2 * 40_814_762
    assert total["params"] == total["trainable"] == 272_474 and total["non_trainable"] == 0
    # a mean and a variance for each of 784 channels: 19 batchnorms, 2 projections
    assert total["buffers"] == 1_568


def test_depth_rolls_blocks_up(check):
    from netdsl.driver import check_file

    net = check_file(os.path.join(SPECS, "resnet20.net"))
    rows = cost_rows(net.graph)
    for depth in (1, 2):
        rolled = roll_up(net.graph, rows, depth)
        for field in ("params", "mult_adds", "memory", "buffers"):
            assert sum(getattr(r, field) for r in rolled) == sum(getattr(r, field) for r in rows)
    stages = {r.node: r for r in roll_up(net.graph, rows, 1)}
    assert [n for n in stages if n.startswith("stage")] == ["stage1", "stage2", "stage3"]
    assert stages["stage2"].op == "stage" and stages["stage2"].type == "[32,16,16]"
    assert stages["stage2"].inputs == ("stage1/basic3/relu2",)
    blocks = [r.node for r in roll_up(net.graph, rows, 2) if r.op == "basic"]
    assert blocks[:2] == ["stage1/basic1", "stage1/basic2"] and len(blocks) == 9
    table = cli_main("compile", os.path.join(SPECS, "resnet20.net"), "--depth", "1").stdout
    assert any(line.split()[:4] == ["stage3", "stage", "stage2/basic3/relu2", "[64,8,8]"]
               for line in table.splitlines())


def test_parameters_no_loss_reaches_are_non_trainable(check):
    net = check("network frozen\ninput x : [8]\ntarget y : class(2)\n"
                "h = x -> dense(4)\nz = stop_gradient(h) -> dense(2)\n"
                "loss cross_entropy(z, y)\n")
    result = {r.node: r for r in cost_rows(net.graph)}
    trained = trained_params(net)
    assert trained == {f"{result['z'].node}.weight", f"{result['z'].node}.bias"}
    from netdsl.report import format_cost_table

    assert "parameters: 10 trainable, 36 non-trainable" in format_cost_table(net, 1, None, trained)


def test_diff_names_what_changed_by_block_path(check, tmp_path):
    from netdsl.diff import diff_json

    resnet = open(os.path.join(SPECS, "resnet20.net")).read()
    wider = resnet.replace("stage(32, 3, stride=2)", "stage(48, 3, stride=2)")
    assert wider != resnet
    a, b = check(resnet, "a.net"), check(wider, "b.net")
    data = diff_json(a, b)
    changed = {n["node"]: n for n in data["nodes"]}
    assert all(name.startswith(("stage2/", "stage3/basic1/")) for name in changed)
    conv = changed["stage2/basic1/conv1"]
    assert conv["a"]["output"] == "[32,16,16]" and conv["b"]["output"] == "[48,16,16]"
    assert conv["b"]["params"] == 48 * 16 * 3 * 3
    assert set(data["blocks"]) == {"stage2", "stage3"}
    rows = {r.node: r for r in cost_rows(b.graph)}
    assert data["total"]["b"]["params"] == sum(r.params for r in rows.values())
    assert [n["node"] for n in diff_json(a, b, depth=1)["nodes"]] == ["stage2", "stage3"]

    smaller = tmp_path / "mlp2.net"
    smaller.write_text(open(os.path.join(SPECS, "mlp.net")).read().replace(
        "-> dense(256) -> relu -> dense(10)", "-> relu -> dense(10)"))
    result = cli_main("diff", os.path.join(SPECS, "mlp.net"), str(smaller))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "parameters  85,002 -> 19,210 (-77.4%)"
    assert any(line.split()[:3] == ["dense2", "removed", "dense"] for line in lines)
    assert not any(line.startswith("logits ") for line in lines)  # the same dense(10)
