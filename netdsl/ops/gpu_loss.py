"""Softmax cross-entropy on the GPU: one kernel and a sum forward, one kernel backward.

For logits (B, C, *S) and labels (B, *S), each position's row of C logits is
normalised by one thread: the max, the sum of exponentials, the probabilities (kept
for backward) and the position's share of the loss, -log p_y / (B * S). A reduction
sums the shares. Backward writes (p - onehot(y)) * gy / (B * S) in one pass, gy read
on the device, so nothing waits for the GPU. Class weights take the generic path.
"""
from __future__ import annotations

from netdsl.ops.gpu import CTYPES, grid_kernel, launch

__all__ = ["sources", "ROWS", "GRADIENT", "loss_source", "cross_entropy", "cross_entropy_backward"]

# i indexes the rows (B, S); a row's classes lie S apart
ROWS = """
    const T* z = logits + (i / S) * C * S + i % S;
    T* p = probs + (i / S) * C * S + i % S;
    T top = z[0];
    for (long long c = 1; c < C; ++c) top = z[c * S] > top ? z[c * S] : top;
    T total = 0;
    for (long long c = 0; c < C; ++c) total += exp(z[c * S] - top);
    for (long long c = 0; c < C; ++c) p[c * S] = exp(z[c * S] - top) / total;
    shares[i] = (top + log(total) - z[labels[i] * S]) * scale;
"""

# i indexes the logits (B, C, S)
GRADIENT = """
    const long long c = (i / S) % C;
    const long long row = (i / (C * S)) * S + i % S;
    dlogits[i] = (probs[i] - (labels[row] == c ? (T)1 : (T)0)) * gy[0] * scale;
"""


def loss_source(name: str, ctype: str) -> str:
    t = ctype
    if name == "ce_rows":
        params = (f"const {t}* __restrict__ logits, const long long* __restrict__ labels, "
                  f"{t}* __restrict__ probs, {t}* __restrict__ shares, const {t} scale")
        body = ROWS
    else:
        params = (f"const {t}* __restrict__ probs, const long long* __restrict__ labels, "
                  f"const {t}* __restrict__ gy, {t}* __restrict__ dlogits, const {t} scale")
        body = GRADIENT
    return grid_kernel(name, f"{params}, const long long C, const long long S", body, t)


def sources(ctype: str) -> dict[str, str]:
    """Every kernel of this module, by name."""
    return {name: loss_source(name, ctype) for name in ("ce_rows", "ce_gradient")}


def _launch(name: str, args: tuple, n: int, dtype) -> None:
    launch(loss_source(name, CTYPES[str(dtype)]), name, n, args)


def cross_entropy(xp, logits, labels):
    """(loss as a 0-d array, probs): the mean of -log softmax(logits)_y over positions."""
    logits = xp.ascontiguousarray(logits)
    labels = xp.ascontiguousarray(labels, dtype=xp.int64)
    c = logits.shape[1]
    s = logits.size // (logits.shape[0] * c)
    probs = xp.empty_like(logits)
    shares = xp.empty(labels.shape, dtype=logits.dtype)
    scale = logits.dtype.type(1 / labels.size)
    _launch("ce_rows", (logits, labels, probs, shares, scale, c, s), labels.size, logits.dtype)
    return xp.asarray(shares.sum()), probs   # 0-d, as the other losses return


def cross_entropy_backward(xp, gy, probs, labels):
    c = probs.shape[1]
    s = probs.size // (probs.shape[0] * c)
    dlogits = xp.empty_like(probs)
    gy = xp.asarray(gy, dtype=probs.dtype).reshape(1)
    scale = probs.dtype.type(1 / labels.size)
    _launch("ce_gradient", (probs, xp.ascontiguousarray(labels, dtype=xp.int64), gy, dlogits,
                            scale, c, s), probs.size, probs.dtype)
    return dlogits
