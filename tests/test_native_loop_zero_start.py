"""A compiled loop's recurrent weight gradient leaves out the product with a state's
values before step 0 where those are zeros by the state's declaration
(runtime.native.loops.ZERO_START, NETDSL_LOOP_ZERO_START=0: multiplied as before).

Each test records the GEMMs the loop's weight gradients make (whether each multiplies
by values that are all zeros) and checks the gradients against the other path, the
interpreted loop and PyTorch in float64.
"""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.driver import check_text
from netdsl.lower import lower
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.native import loops as native_loops
from test_recurrent_torch import CELLS, IN, T, Pair, assert_same_grads, batch, spec


def _zero_products(monkeypatch) -> list[bool]:
    """Per GEMM of the loop's weight gradients from now on: whether it multiplies by
    values that are all zeros."""
    seen = []
    split = native_loops.split_matmul

    def recorded(a, b, out=None):
        seen.append(not b.any())
        return split(a, b, out)
    monkeypatch.setattr(native_loops, "split_matmul", recorded)
    return seen


def _grads(ex, data, carry=None) -> dict:
    ex.forward(data, True, carry=carry)
    ex.backward()
    return dict(ex.grads)


@pytest.mark.parametrize("every", [None, 3], ids=["full", "checkpointed"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_no_product_with_zero_initial_states(name, every, monkeypatch):
    pair = Pair(name, target="native")
    pair.ex.checkpoint = every
    data = batch()
    zeros = _zero_products(monkeypatch)
    grads = _grads(pair.ex, data)
    assert pair.ex.compiled_loops.calls == {"forward": 1, "backward": 1}
    # step 0's rows are not multiplied by the zeros before it (a later span's are, by
    # its checkpointed states)
    assert zeros and not any(zeros)
    theirs, _ = pair.torch_loss(data["x"], data["y"])
    assert_same_grads(grads, pair.torch_grads(theirs))
    monkeypatch.setattr(native_loops, "ZERO_START", False)
    zeros.clear()
    before = _grads(pair.ex, data)
    assert any(zeros)
    for key, grad in before.items():
        np.testing.assert_allclose(grads[key], grad, rtol=1e-12, atol=1e-15, err_msg=key)


def test_a_carried_state_keeps_its_product(monkeypatch):
    """Truncated BPTT: the second chunk starts from the first's states, not from zeros."""
    pair = Pair("lstm", target="native")
    host = Pair("lstm")
    first, second = batch(seed=0), batch(seed=1)
    for ex in (pair.ex, host.ex):
        ex.forward(first, True)
    zeros = _zero_products(monkeypatch)
    ours = _grads(pair.ex, second, carry=pair.ex.carry)
    theirs = _grads(host.ex, second, carry=host.ex.carry)
    assert len(zeros) == 2 and not any(zeros)   # step 0's product by the carried states
    for key, grad in theirs.items():
        np.testing.assert_allclose(ours[key], grad, rtol=1e-10, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("start", ["learned", "0.5", "0"])
def test_a_learned_or_nonzero_start_keeps_its_product(start, monkeypatch):
    text = f"""
input  x : seq[{IN}]
target y : seq class(4)
state h : [6] = {start}
h = tanh(dense(x, 6) + dense(h[t-1], 6, bias=false))
logits = h -> dense(4)
loss cross_entropy(logits, y)
"""
    net = check_text(text)
    params = initial_params(lower(net).built, "torch", seed=0)
    if start == "learned":   # not zeros, as a trained start would be
        assert not params["h[t-1].init"].any()
        params["h[t-1].init"] = params["h[t-1].init"] + 0.25
    host, native = (Executor(lower(net, target), params, dtype="float64")
                    for target in ("host", "native"))
    data = batch()
    zeros = _zero_products(monkeypatch)
    ours, theirs = _grads(native, data), _grads(host, data)
    assert native.compiled_loops.calls == {"forward": 1, "backward": 1}
    assert len(zeros) == (1 if start == "0" else 2) and not any(zeros)
    assert ours.keys() == theirs.keys()
    for key, grad in theirs.items():
        np.testing.assert_allclose(ours[key], grad, rtol=1e-10, atol=1e-13, err_msg=key)


def test_one_step_with_zeros_before_it_gives_a_zero_gradient(monkeypatch):
    """A sequence no longer than the delay: no product at all, the weight's gradient 0."""
    pair, host = Pair("elman", target="native"), Pair("elman")
    data = {"x": batch()["x"][:, :1], "y": batch()["y"][:, :1]}
    zeros = _zero_products(monkeypatch)
    ours, theirs = _grads(pair.ex, data), _grads(host.ex, data)
    assert not zeros
    assert not ours["elman1/dense2.weight"].any()
    for key, grad in theirs.items():
        np.testing.assert_allclose(ours[key], grad, rtol=1e-12, atol=1e-15, err_msg=key)
    assert T > 1
