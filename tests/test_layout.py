"""The layout pass (netdsl/lower/layout.py) and the NHWC ops it puts in a region
(netdsl/ops/nhwc.py, nhwc_kernels.py).

- a spec with a region (conv-bn-relu-pool, three branches concatenated, global pooling,
  dense) and a ResNet block with a skip add and a projection train the same under
  `nhwc` as under `nchw` and as float64 PyTorch, forward values and every gradient,
  float32 and float64, odd sizes, on the host and native targets;
- the plan has exactly the layout changes expected: one at the input, none inside a
  region, none after a global pooling, one before a flatten; a spec whose 4-D ops are
  all NCHW-only gets none; `netc compile` prints each region's layout;
- the choice: the cheaper layout given recorded costs (a made-up table), NCHW with no
  measurements, never a change under `nchw`; measured costs are kept in the choices
  file and found by a later lowering;
- each NHWC kernel against the NCHW op on odd shapes (strides, pads, dilation, 1x1).
"""
from __future__ import annotations

import ast

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_netc
from netdsl.driver import check_text
from netdsl.lower import lower
from netdsl.lower.layout import NCHW, NHWC, cost_key, find_regions, layout
from netdsl.ops import OPS
from netdsl.ops.base import Ctx, bind
from netdsl.ops.layouts import TO_NCHW, TO_NHWC
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.types import TensorType

BRANCHES = """
network branches
input  x : [3, 11, 9]
target y : class(5)
h = x -> conv(6, 3, pad=1) -> batchnorm -> relu -> maxpool(3, stride=2, pad=1)
a = h -> conv(5, 1) -> relu
b = h -> conv(4, 3, pad=1, bias=false) -> batchnorm
c = h -> avgpool(3, stride=1, pad=1)
logits = concat(a, b, c) -> global_avgpool -> dense(5)
loss cross_entropy(logits, y)
train sgd(lr=0.1), batch=4
"""

RESNET = """
network resblock
input  x : [3, 9, 7]
target y : class(5)
block basic(c, stride=1) {
  in x
  y = x -> conv(c, 3, stride=stride, pad=1, bias=false) -> batchnorm -> relu
        -> conv(c, 3, pad=1, bias=false) -> batchnorm
  out relu(y + project(x, c, stride))
}
features = x -> conv(8, 3, pad=1, bias=false) -> batchnorm -> relu -> basic(8) -> basic(12, 2)
logits = features -> global_avgpool -> dense(5)
loss cross_entropy(logits, y)
train sgd(lr=0.1), batch=4
"""

FLATTENED = """
network flattened
input  x : [2, 8, 7]
target y : class(3)
logits = x -> conv(4, 3, stride=2) -> relu -> flatten -> dense(3)
loss cross_entropy(logits, y)
"""

NCHW_ONLY = """
network grouped
input  x : [4, 8, 8]
target y : class(3)
logits = x -> conv(4, 3, groups=2) -> flatten -> dense(3)
loss cross_entropy(logits, y)
"""


def _net(text: str):
    return check_text(text, "layout.net")


def _changes(lowered):
    return [(s.op.name, s.inputs[0]) for s in lowered.laid_out.plan.steps
            if getattr(s.op, "perm", None)]


# ---- PyTorch, float64, op by op over the NCHW build plan


def _torch_step(step, xs, p):
    op, g = step.op, step.geometry
    name = op.name
    if name == "conv":
        return F.conv2d(xs[0], p["weight"], p.get("bias"), g.stride, g.lows, g.dilation)
    if name == "batchnorm":
        return F.batch_norm(xs[0], None, None, p["weight"], p["bias"], True, 0.1, op.eps)
    if name == "project":
        if not p:
            return xs[0]
        z = F.conv2d(xs[0], p["weight"], None, g.stride)
        return F.batch_norm(z, None, None, p["bn_weight"], p["bn_bias"], True, 0.1, 1e-5)
    if name == "relu":
        return torch.relu(xs[0])
    if name == "add":
        return xs[0] + xs[1]
    if name == "maxpool":
        return F.max_pool2d(xs[0], g.kernel, g.stride, g.lows)
    if name == "avgpool":
        return F.avg_pool2d(xs[0], g.kernel, g.stride, g.lows, count_include_pad=True)
    if name == "concat":
        return torch.cat(xs, dim=op.axis + 1)
    if name == "global_avgpool":
        return xs[0].mean(dim=(2, 3))
    if name == "flatten":
        return xs[0].reshape(len(xs[0]), -1)
    if name == "dense":
        return F.linear(xs[0], p["weight"], p.get("bias"))
    if name == "cross_entropy":
        return F.cross_entropy(xs[0], xs[1])
    raise AssertionError(f"no PyTorch twin for {name}")


def _torch_loss_and_grads(plan, params, batch):
    weights = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
               for k, v in params.items()}
    values = {k: torch.tensor(v if v.dtype.kind == "i" else v.astype(np.float64))
              for k, v in batch.items()}
    for step in plan.steps:
        p = {name: weights[key] for name, key in step.params.items()}
        values[step.node] = _torch_step(step, [values[s] for s in step.inputs], p)
    loss = values[plan.losses["loss"]]
    loss.backward()
    return float(loss.detach()), values["logits"].detach().numpy(), {k: w.grad.numpy() for k, w in weights.items() if w.grad is not None}


def _batch(plan, size=3, seed=0):
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, t.classes, (size, *t.dims)) if t.classes is not None
                   else rng.standard_normal((size, *t.dims)))
            for name, t in plan.inputs.items()}


@pytest.mark.parametrize("target", ["host", "native"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", [BRANCHES, RESNET, FLATTENED], ids=["branches", "resnet",
                                                                     "flattened"])
def test_nhwc_trains_as_nchw_and_pytorch(spec, dtype, target):
    net = _net(spec)
    results = {}
    for mode in ("nchw", "nhwc"):
        lowered = lower(net, target, verify=True, layout_mode=mode)
        params = initial_params(lowered.built, "torch", seed=0)
        batch = _batch(lowered.plan)
        ex = Executor(lowered, params, dtype=dtype)
        made = ex.forward(batch, training=True, keep=("logits",))
        ex.backward()
        results[mode] = (float(made["loss"]), np.array(made["logits"]),
                         {k: np.array(v) for k, v in ex.grads.items()})
    want_loss, want_logits, want = _torch_loss_and_grads(lowered.built, params, batch)
    rtol = 1e-9 if dtype == "float64" else 2e-4
    # near zero against the largest gradient (a bias before batchnorm gets ~0)
    scale = max(float(np.abs(grad).max()) for grad in want.values())
    for mode, (loss, logits, grads) in results.items():
        assert loss == pytest.approx(want_loss, rel=rtol), mode
        np.testing.assert_allclose(logits, want_logits, rtol=rtol,
                                   atol=rtol * float(np.abs(want_logits).max()))
        for key, grad in want.items():
            np.testing.assert_allclose(grads[key], grad, rtol=rtol, atol=rtol * scale,
                                       err_msg=f"{mode} {key}")


def test_the_changes_are_on_the_edges_only():
    branches = lower(_net(BRANCHES), layout_mode="nhwc")
    assert _changes(branches) == [("to_nhwc", "x")]     # none inside, none after the pooling
    [region] = branches.laid_out.regions
    assert region.layout == NHWC and region.leaving == ()
    resnet = lower(_net(RESNET), layout_mode="nhwc")
    assert _changes(resnet) == [("to_nhwc", "x")]
    flattened = lower(_net(FLATTENED), layout_mode="nhwc")
    [(_, into), (to, before)] = _changes(flattened)
    assert to == "to_nchw" and flattened.plan.step_of(before).op.name == "relu"
    flatten = [s for s in flattened.plan.steps if s.op.name == "flatten"]
    assert flatten[0].inputs == (f"{before}.nchw",)


def test_nchw_only_ops_get_no_change_and_nchw_keeps_the_plan():
    grouped = lower(_net(NCHW_ONLY), layout_mode="nhwc")
    assert _changes(grouped) == [] and not find_regions(grouped.built)
    for spec in (BRANCHES, RESNET):
        plain = lower(_net(spec), layout_mode="nchw")
        assert _changes(plain) == []
        assert [s.op for s in plain.laid_out.plan.steps] == [s.op for s in plain.stages[
            "hoist"].steps]


def _table(plan, region, nchw: float, nhwc: float, change: float):
    """A made-up cost table: every step `nchw` or `nhwc` seconds, a change `change`."""
    table = {}
    for node in region.steps:
        step = plan.step_of(node)
        table[cost_key(step, NCHW, 4, "float32", "host")] = nchw
        table[cost_key(step, NHWC, 4, "float32", "host")] = nhwc
    for value in region.entering:
        table[cost_key(("to_nhwc", plan.types[value]), NHWC, 4, "float32", "host")] = change
    return table


def test_the_choice_takes_the_cheaper_measured_layout():
    plan = lower(_net(BRANCHES), layout_mode="nchw").stages["hoist"]
    [region] = find_regions(plan)
    steps = len(region.steps)
    cheaper = _table(plan, region, 2.0, 1.0, 0.5)
    laid = layout(plan, mode="auto", costs=cheaper.get, batch=4)
    assert laid.regions[0].layout == NHWC
    assert laid.regions[0].costs == {NCHW: 2.0 * steps, NHWC: 1.0 * steps + 0.5}
    assert [s.op.name for s in laid.plan.steps][0] == "to_nhwc"
    # the change outweighs what the steps gain
    dearer = _table(plan, region, 1.0, 0.99, steps * 0.02)
    assert layout(plan, mode="auto", costs=dearer.get, batch=4).regions[0].layout == NCHW
    # a time missing: NCHW
    missing = dict(cheaper)
    missing.pop(next(iter(missing)))
    kept = layout(plan, mode="auto", costs=missing.get, batch=4)
    assert kept.regions[0].layout == NCHW and kept.regions[0].why == "not measured"
    assert kept.plan is plan
    assert layout(plan, mode="auto", costs={}.get, batch=4).plan is plan
    assert layout(plan, mode="nchw", costs=cheaper.get, batch=4).plan is plan


def test_measured_costs_are_kept_and_read_back(tmp_path, monkeypatch):
    from netdsl.runtime import layout_costs

    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path))
    layout_costs.COSTS.forget()
    net = _net(BRANCHES)
    assert lower(net, layout_mode="auto").laid_out.regions[0].why == "not measured"
    made = layout_costs.measure(net, "host", batch=4, steps=1)
    assert made and all(v >= 0 for v in made.values())
    assert list(tmp_path.rglob("layout_costs.json"))
    layout_costs.COSTS.forget()
    [region] = lower(net, layout_mode="auto").laid_out.regions
    assert region.why == "the cheaper measured" and set(region.costs) == {NCHW, NHWC}
    layout_costs.COSTS.forget()


def test_netc_compile_prints_each_region(tmp_path, monkeypatch):
    path = tmp_path / "branches.net"
    path.write_text(BRANCHES)
    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path / "cache"))   # nothing measured
    monkeypatch.delenv("NETDSL_LAYOUT", raising=False)
    done = run_netc("compile", str(path), "--emit", "layout")
    assert done.returncode == 0, done.stderr
    assert "layout (auto): 1 region" in done.stdout
    assert "region conv1..global_avgpool1 (11 steps, 1 in, 0 out): NCHW" in done.stdout
    monkeypatch.setenv("NETDSL_LAYOUT", "nhwc")
    done = run_netc("compile", str(path), "--emit", "plan")
    assert done.returncode == 0, done.stderr
    assert "NHWC (NETDSL_LAYOUT=nhwc)" in done.stdout and "x.nhwc = to_nhwc(x)" in done.stdout


def test_netc_compile_times_the_layouts_and_prints_the_choice(tmp_path, monkeypatch):
    from conftest import cli_main
    from netdsl.runtime import layout_costs
    from netdsl.runtime.native.choice_file import ChoiceFile

    path = tmp_path / "branches.net"
    path.write_text(BRANCHES)
    # the costs alone kept apart: the compiled kernels stay in the shared cache
    kept = ChoiceFile("layout_costs.json", layout_costs.COSTS.valid, tmp_path)
    monkeypatch.setattr(layout_costs, "COSTS", kept)
    done = cli_main("compile", str(path), "--target", "native", "-q")
    assert done.returncode == 0, done.stderr
    assert "(not measured)" in done.stdout
    done = cli_main("compile", str(path), "--target", "native", "-q", "--time-layouts")
    assert done.returncode == 0, done.stderr
    assert "the cheaper measured, measured NCHW" in done.stdout
    assert (tmp_path / "layout_costs.json").exists()
    done = cli_main("compile", str(path), "--time-layouts")
    assert done.returncode == 2 and "--target native" in done.stderr
    # a network of sequences has no region: nothing is timed, nothing fails
    done = cli_main("compile", "specs/lstm.net", "--target", "native", "-q", "--time-layouts")
    assert done.returncode == 0, done.stderr
    assert "layout (auto): 0 regions" in done.stdout


# ---- each kernel against the NCHW op


def _run(op, x, params, dtype, gy_seed=1):
    ctx = Ctx(np, training=True)
    y = op.forward(ctx, x, **params)
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(dtype)
    return y, gy, ctx


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("call, dims", [
    ("conv(5, 3, pad=1)", (3, 7, 9)),
    ("conv(4, 3, stride=2, pad=1, bias=false)", (3, 9, 8)),
    ("conv(4, [3, 2], stride=[2, 1], pad=[0, 1], dilation=[1, 2])", (2, 10, 9)),
    ("conv(6, 1)", (5, 5, 3)),
    ("conv(6, 1, stride=2)", (5, 7, 6)),
    ("conv(3, 5, pad='same')", (2, 6, 7)),
    ("maxpool(3, stride=2, pad=1)", (3, 9, 8)),
    ("maxpool(2)", (2, 7, 6)),
    ("avgpool(3, stride=1, pad=1)", (3, 7, 5)),
    ("avgpool(2, stride=2)", (2, 8, 6)),
    ("batchnorm", (4, 5, 3)),
    ("project(6, 2)", (3, 7, 5)),
    ("global_avgpool", (4, 3, 5)),
])
def test_each_nhwc_kernel_equals_the_nchw_op(call, dims, dtype):
    name, _, args = call.partition("(")
    op = _bound(name, args.rstrip(")"))
    t = TensorType(dims)
    assert NHWC in op.layouts(t)
    nhwc = op.in_layout(NHWC, t)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *dims)).astype(dtype)
    params = {k: v.astype(dtype) + 0.1 for k, v in op.init(rng, t).items()}
    y, gy, ctx = _run(op, x, params, dtype)
    (dx,), grads = op.backward(ctx, gy)
    xt = np.ascontiguousarray(x.transpose(TO_NHWC))
    y2, _, ctx2 = _run(nhwc, xt, params, dtype)
    gy2 = gy if y.ndim == 2 else np.ascontiguousarray(gy.transpose(TO_NHWC))
    (dx2,), grads2 = nhwc.backward(ctx2, gy2)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == "float64" else dict(rtol=1e-4, atol=1e-4)
    back = (lambda a: a) if y.ndim == 2 else (lambda a: a.transpose(TO_NCHW))
    np.testing.assert_allclose(back(y2), y, **tol)
    np.testing.assert_allclose(dx2.transpose(TO_NCHW), dx, **tol)
    assert set(grads2) == set(grads)
    for key in grads:
        np.testing.assert_allclose(grads2[key], grads[key], **tol, err_msg=key)


def _bound(name: str, args: str):
    text = f"f({args.replace('false', 'False')})"
    call = ast.parse(text).body[0].value
    positional = [ast.literal_eval(a) for a in call.args]
    keyword = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    return bind(OPS[name], positional, keyword)
