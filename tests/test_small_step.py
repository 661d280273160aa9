"""The small networks' training step: the shortcuts it takes give today's values bit for bit."""
import numpy as np
import pytest
import torch

from netdsl.ops.loss import FEW_CLASSES, softmax_cross_entropy


def reference_cross_entropy(logits, y, weights=None):
    """The loss as written before the shortcuts: max and pick along the class axis."""
    from netdsl.ops.loss import _share

    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    total = probs.sum(axis=1, keepdims=True)
    probs /= total
    picked = np.take_along_axis(shifted, y[:, None], axis=1) - np.log(total)
    return np.asarray(-(picked * _share(np, y, weights, logits.dtype)).sum()), probs


@pytest.mark.parametrize("shape", [(128, 10), (3, FEW_CLASSES - 1), (5, FEW_CLASSES),
                                   (6, 100), (4, 3, 2, 5)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_shortcuts_are_bit_identical(shape, dtype, weighted):
    rng = np.random.default_rng(len(shape) * 7 + shape[1])
    classes = shape[1]
    logits = (rng.standard_normal(shape) * 6).astype(dtype)
    y = rng.integers(0, classes, (shape[0],) + shape[2:])
    weights = tuple(rng.uniform(0.5, 2.0, classes)) if weighted else None
    given = logits.copy()
    loss, probs = softmax_cross_entropy(np, logits, y, weights)
    want_loss, want_probs = reference_cross_entropy(given, y, weights)
    assert np.array_equal(logits, given)  # the logits are read, not written
    assert loss.dtype == want_loss.dtype and probs.dtype == want_probs.dtype
    assert loss.tobytes() == want_loss.tobytes()
    assert probs.tobytes() == want_probs.tobytes()
    if dtype == "float64":   # and the value is torch's
        expected = torch.nn.functional.cross_entropy(
            torch.from_numpy(given), torch.from_numpy(y),
            weight=None if weights is None else torch.tensor(weights, dtype=torch.float64))
        assert float(loss) == pytest.approx(float(expected), rel=1e-12)


# ---- the executor's straight path: a feed-forward network's steps, bound once

MLP = """
network mlp
input  x : [12]
target y : class(5)
logits = x -> dense(16) -> relu -> dense(16) -> tanh -> dense(5)
loss cross_entropy(logits, y)
train sgd(lr=0.1, momentum=0.9), batch=8
"""

CONV = """
network small_lenet
input  x : [1, 8, 8]
target y : class(4)
logits = x -> conv(3, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(6) -> relu -> dense(4)
loss cross_entropy(logits, y)
train sgd(lr=0.1, momentum=0.9), batch=8
"""


class Recorder:
    """An observer (as `netc run --diagnose`'s probe) that keeps a copy of what it is shown."""

    def __init__(self):
        self.values, self.gradients = {}, {}

    def value(self, name, array):
        self.values[name] = np.array(array, copy=True)

    def gradient(self, name, array):
        self.gradients[name] = np.array(array, copy=True)


def one_step(lowered, batch, lodge=False, check_finite=False, observer=None):
    from netdsl.runtime.execute import Executor
    from netdsl.runtime.init import initial_params

    ex = Executor(lowered, initial_params(lowered.built, "he", seed=5), seed=2)
    ex.lodge_values, ex.observer = lodge, observer
    losses = []
    for _ in range(2):   # the second step runs on the calls bound in the first
        out = ex.forward(batch, True, check_finite=check_finite)
        ex.backward(check_finite=check_finite)
        losses.append(float(out["loss"]))
        ex.flat_params -= 0.05 * ex.flat_grads
    return losses, ex.flat_grads.copy(), ex.flat_params.copy()


@pytest.mark.parametrize("spec", [MLP, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("target", ["host", "native"])
def test_straight_steps_agree_on_every_route(check, spec, target):
    from netdsl.lower import lower
    from netdsl.runtime.interpret import interpret
    from netdsl.runtime.init import initial_params

    if target == "native":
        pytest.importorskip("netdsl.runtime.native")
        from netdsl.runtime.native.toolchain import NativeUnavailable
    lowered = lower(check(spec), target)
    rng = np.random.default_rng(0)
    shape = lowered.plan.inputs["x"].dims
    batch = {"x": rng.standard_normal((8, *shape)).astype("float32"),
             "y": rng.integers(0, lowered.plan.inputs["y"].classes, 8)}
    try:
        plain = one_step(lowered, batch)
    except NativeUnavailable:
        pytest.skip("no C compiler")
    recorder = Recorder()
    for other in (one_step(lowered, batch, lodge=True),
                  one_step(lowered, batch, check_finite=True),
                  one_step(lowered, batch, observer=recorder)):
        assert other[0] == plain[0]
        assert other[1].tobytes() == plain[1].tobytes()
        assert other[2].tobytes() == plain[2].tobytes()
    # the observer saw every value of the pass and every gradient that flowed
    assert set(recorder.values) == {s.node for s in lowered.plan.steps}
    assert set(recorder.gradients) == set(lowered.backward().order)
    # and the first step's loss is the reference interpreter's
    params = initial_params(lowered.built, "he", seed=5)
    values, _ = interpret(lowered.built, params, batch, rng=np.random.default_rng(2))
    assert plain[0][0] == pytest.approx(float(values["loss"]), rel=1e-5)
