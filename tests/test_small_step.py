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
