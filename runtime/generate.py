"""Decoding: a trained sequence network writes its own input, one step at a time.

Training feeds a decoder the true previous word (teacher forcing); to use the network,
its best guess must take that place. `generate` runs the network on a growing prefix of
the fed input and appends, at each step, the class the scores give the last position:
the most likely one (greedy), or one drawn from softmax(scores / temperature). Each
step reruns the prefix, so T steps cost T(T+1)/2 steps of the network: simple, exact,
and fast enough for the short outputs of a demo.
"""
from __future__ import annotations

import numpy as np

from netdsl.errors import SpecError
from netdsl.runtime.host import to_host
from netdsl.lower.plan import Plan

__all__ = ["fed_scores", "generate"]


def fed_scores(plan: Plan, feed: str) -> str:
    """The scores whose classes are fed back into the input `feed`: the first loss that
    judges class scores (cross-entropy) whose scores depend on `feed` and whose target
    has feed's classes."""
    t = plan.inputs.get(feed)
    if t is None or plan.graph.nodes[feed]["kind"] != "input":
        inputs = [n for n in plan.inputs if plan.graph.nodes[n]["kind"] == "input"]
        raise SpecError(f"--generate names '{feed}', which is not an input of the network",
                        None, f"its inputs: {', '.join(inputs)}")
    if not (t.seq and t.classes is not None):
        raise SpecError(f"--generate feeds classes back step by step, but '{feed}' is {t}",
                        None, "generate into a `seq class(N)` input, e.g. a decoder's target_in")
    for node in plan.losses.values():
        step = plan.step_of(node)
        if step.op.accuracy != "class":
            continue
        scores, target = step.inputs[:2]
        if plan.types[target] == t and _reads(plan, scores, feed):
            return scores
    raise SpecError(f"no cross-entropy scores classes like '{feed}' ({t}) from it, so there "
                    "is nothing to feed back", None,
                    "the network must predict the next item of the sequence it reads")


def _reads(plan: Plan, node: str, feed: str) -> bool:
    """Whether `node` is computed from `feed`."""
    return any(feed in s.inputs for s in plan.steps_for([node]))


def generate(executor, plan: Plan, batch: dict, feed: str, steps: int, prompt=(),
             temperature: float = 0.0, rng=None) -> np.ndarray:
    """(B, steps) classes written into `feed` after `prompt` (default: class 0, the start)."""
    scores = fed_scores(plan, feed)
    size = len(next(iter(batch.values()))) if batch else 1
    start = np.asarray(list(prompt) or [0], dtype=np.int64)
    tokens = np.tile(start, (size, 1))
    rng = rng or np.random.default_rng(0)
    for _ in range(steps):
        out = executor.forward({**batch, feed: tokens}, False, {scores}, losses=False)
        # the last position's scores, read back (the host picks the next token)
        last = to_host(executor.xp, out[scores][:, -1]).astype(np.float64)  # (B, classes)
        if temperature > 0:
            weights = np.exp((last - last.max(axis=1, keepdims=True)) / temperature)
            weights /= weights.sum(axis=1, keepdims=True)
            chosen = np.array([rng.choice(len(w), p=w) for w in weights])
        else:
            chosen = last.argmax(axis=1)
        tokens = np.concatenate([tokens, chosen[:, None]], axis=1)
    return tokens[:, len(start):]
