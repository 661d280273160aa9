"""The lowering pipeline: its passes keep the plan's invariants, verify_plan catches a
broken one, and the reference interpreter (plain reverse mode over every time step) is
the oracle of the executor on every recurrent spec."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_main
from netdsl.driver import check_file, check_text
from netdsl.lower import PASSES, lower
from netdsl.lower.fuse import FusedChain
from netdsl.lower.printers import format_pass
from netdsl.lower.schedule import Segment, schedule
from netdsl.lower.verify import PlanError, verify_plan
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.interpret import interpret
from test_runtime import KNOTTY

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC_NAMES = sorted(p.stem for p in SPECS.glob("*.net"))


def network(name):
    net = check_file(str(SPECS / f"{name}.net"))
    for _, op in net.graph.nodes(data="op"):
        if op is not None and op.name == "dropout":
            op.p = 0.0  # the interpreter and the executor draw in another order
    return net


RECURRENT = [name for name in SPEC_NAMES if lower(network(name)).plan.sequential]


@pytest.mark.parametrize("target", ["host", "native", "cuda"])
@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_pass_keeps_the_invariants(name, target):
    lowered = lower(network(name), target, verify=True)
    assert [name for name, _ in PASSES] == list(lowered.stages)


class TestVerifyCatches:
    """Each invariant, broken by hand, is reported: verify_plan can fail."""

    def lowered(self, target="host"):
        return lower(check_text(KNOTTY), target)

    def test_a_value_read_before_it_is_made(self):
        plan = self.lowered().plan
        first = plan.steps[0]
        reader = next(s for s in plan.steps if first.node in s.inputs)
        steps = [reader] + [s for s in plan.steps if s is not reader]
        with pytest.raises(PlanError, match=f"reads {first.node} before it is defined"):
            verify_plan(replace(plan, steps=steps))

    def test_a_freed_value_read_later(self):
        lowered = self.lowered()
        (segment,) = lowered.schedule.segments
        first = segment.steps[0].node
        frees = ((first,),) + tuple(() for _ in segment.steps[1:])
        broken = replace(lowered.schedule, segments=(Segment(segment.steps, frees),))
        with pytest.raises(PlanError, match=f"{first} is read after it was freed"):
            verify_plan(lowered.plan, broken)

    def test_a_fused_chain_wired_to_other_values(self):
        lowered = self.lowered("cuda")
        plan = lowered.plan
        index, step = next((i, s) for i, s in enumerate(plan.steps)
                           if isinstance(s.op, FusedChain) and len(s.inputs) > 1)
        swapped = replace(step, inputs=step.inputs[::-1])
        broken = replace(plan, steps=plan.steps[:index] + [swapped] + plan.steps[index + 1:])
        with pytest.raises(PlanError, match="feeds"):
            verify_plan(broken, before=lowered.stages["hoist"])

    def test_an_in_place_step_over_a_value_read_twice(self):
        lowered = self.lowered()
        plan = lowered.plan
        readers = {}
        for step in plan.steps:
            for source in step.inputs:
                readers[source] = readers.get(source, 0) + 1
        # knotty's relu output `a` feeds the max-pooling and the concat
        index, step = next((i, s) for i, s in enumerate(plan.steps)
                           if s.inputs and readers[s.inputs[0]] > 1)
        steps = plan.steps[:index] + [replace(step, in_place=True)] + plan.steps[index + 1:]
        with pytest.raises(PlanError, match="read elsewhere"):
            verify_plan(replace(plan, steps=steps), before=lowered.stages["hoist"])

    def test_a_state_typed_unlike_its_value(self):
        plan = lower(network("elman")).plan
        (node, state), = plan.states.items()
        types = dict(plan.types)
        types[node] = replace(types[node], dims=(types[node].dims[0] + 1,))
        with pytest.raises(PlanError, match="typed"):
            verify_plan(replace(plan, types=types))


def oracle_batch(plan, size=3, steps=5, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    batch = {}
    for name, t in plan.inputs.items():
        shape = (size, steps, *t.dims) if t.seq else (size, *t.dims)
        batch[name] = (rng.integers(0, t.classes, shape) if t.classes is not None
                       else rng.standard_normal(shape))
    return batch


@pytest.mark.parametrize("target", ["host", "native", "cuda"])
@pytest.mark.parametrize("name", RECURRENT)
def test_the_interpreter_is_the_bptt_oracle(name, target):
    """Every recurrent spec: the executor's loss and gradients (hoisted, fused, folded
    over time) equal the interpreter's, which calls every op at every step, in float64."""
    lowered = lower(network(name), target)
    params = {k: v.astype(np.float64) + 0.1 for k, v in
              initial_params(lowered.built, "auto", 0).items()}
    batch = oracle_batch(lowered.plan)
    ex = Executor(lowered, params, dtype="float64")
    out = ex.forward(batch, True)
    ex.backward()
    values, grads = interpret(lowered.built, params, batch)
    for loss, node in lowered.plan.losses.items():
        assert float(out[node]) == pytest.approx(float(values[node]), rel=1e-12), loss
    assert set(grads) == set(lowered.backward().params)
    for key, grad in grads.items():
        np.testing.assert_allclose(ex.grads[key], grad, rtol=1e-9, atol=1e-12, err_msg=key)


def test_the_interpreter_differs_when_the_executor_does():
    """The oracle can fail: a recurrence run for one step fewer changes loss and grads."""
    lowered = lower(network("elman"))
    params = {k: v.astype(np.float64) for k, v in
              initial_params(lowered.built, "auto", 0).items()}
    batch = oracle_batch(lowered.plan)
    shorter = {k: v[:, :-1] for k, v in batch.items()}
    ex = Executor(lowered, params, dtype="float64")
    out = ex.forward(shorter, True)
    values, _ = interpret(lowered.built, params, batch)
    assert float(out["loss"]) != pytest.approx(float(values["loss"]), rel=1e-6)


@pytest.mark.parametrize("name", [name for name, _ in PASSES])
def test_netc_compile_emits_every_pass(name):
    result = cli_main("compile", str(SPECS / "lstm.net"), "--emit", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stdout.strip() == format_pass(lower(network("lstm")), name).strip()


def test_schedule_frees_a_value_after_its_last_reader():
    lowered = lower(network("mlp"))
    (segment,) = lowered.schedule.segments
    freed = [name for names in segment.frees for name in names]
    assert "x" in freed and "logits" not in freed and "loss" not in freed
    assert schedule(lowered.plan, {"loss"}).outputs == frozenset({"loss"})


def test_a_convolutions_geometry_is_made_once_and_read_by_the_step():
    """The planner stores the op's geometry on the step; its windows are the output size
    the shape rule gave, and the executor hands it to forward."""
    lowered = lower(network("lenet5"))
    for step in lowered.plan.steps:
        if step.op.name in ("conv", "maxpool"):
            assert step.geometry.out == lowered.plan.types[step.node].dims[1:], step.node
    ex = Executor(lowered, initial_params(lowered.built, "auto", 0))
    ex.forward(oracle_batch(lowered.plan), True)
    conv = next(s for s in lowered.plan.steps if s.op.name == "conv")
    assert ex.ctxs[conv.node].saved["geometry"] is conv.geometry
