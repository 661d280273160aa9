"""Executor.calls: what each step's calls pass, listed for a profiler
(benchmarks/op_profile.py), which wraps the forwards the calls keep."""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from test_train_torch import random_batch, spec_lowered


def test_the_calls_are_listed_and_a_wrapped_forward_runs():
    lowered = spec_lowered("mlp")
    ex = Executor(lowered, initial_params(lowered.built, "he", seed=0))
    batch = random_batch(lowered.plan, 4, np.random.default_rng(0))
    assert dict(ex.calls()) == {}   # made at a step's first call
    before = ex.forward(batch, True)
    calls = ex.calls()
    assert set(calls) == {step.node for step in lowered.plan.steps}
    with pytest.raises(TypeError):
        calls["x"] = None   # listed, not replaced
    ran = []
    for node, call in calls.items():
        call.forward = (lambda forward, node=node: lambda *a, **k: ran.append(node)
                        or forward(*a, **k))(call.forward)
    after = ex.forward(batch, True)
    assert sorted(ran) == sorted(calls)
    for node in lowered.plan.losses.values():
        np.testing.assert_array_equal(after[node], before[node])
