"""The GPU's softmax cross-entropy (runtime.cuda.loss) on the host: its kernels, compiled
from their CUDA source for the CPU, against the cross_entropy op on NumPy."""
import numpy as np
import pytest

from netdsl.ops import OPS
from netdsl.ops.base import Ctx, bind
from netdsl.runtime.cuda import loss as gpu_loss


@pytest.mark.parametrize("shape", [(5, 10), (3, 4, 2, 3), (2, 1)], ids=str)
def test_gpu_cross_entropy_equals_the_op(kernels_on_host, shape):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape) * 4
    labels = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    op, ctx = bind(OPS["cross_entropy"], [], {}), Ctx(np, training=True)
    expected = op.forward(ctx, logits, labels)
    loss, probs = gpu_loss.cross_entropy(np, logits, labels)
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    np.testing.assert_allclose(probs, ctx.saved["probs"], rtol=1e-12)
    gy = np.asarray(0.7)
    (dlogits, _), _ = op.backward(ctx, gy)
    np.testing.assert_allclose(gpu_loss.cross_entropy_backward(np, gy, probs, labels), dlogits,
                               rtol=1e-12, atol=1e-15)

