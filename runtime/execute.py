"""The executor: runs a plan's training and evaluation steps on an array module.

Parameters, and their gradients, live in one flat vector each (the parameters
of a layer are views into it), so the optimiser updates the whole network in a
handful of vector operations and a checkpoint is one array. Forward values are
dropped as soon as no later step reads them (memory.forward_frees); what
backward needs stays in each node's saved arrays until that node's backward has
run. The elementwise followers of a fused chain (runtime.fuse) write their result
over their predecessor's output. The same class runs NumPy and CuPy: `xp` is the
only difference, and the random generator (`CountedRng` off the host, whose state
CuPy keeps on the device where a checkpoint cannot read it).
"""
from __future__ import annotations

import json
import zlib

import numpy as np

from netdsl.ops.base import Ctx
from netdsl.ops.kernels import on_host, one_blas_thread, to_host
from netdsl.runtime.fuse import fuse
from netdsl.runtime.memory import forward_frees
from netdsl.runtime.plan import Backward, Plan

__all__ = ["Executor", "NonFinite", "CountedRng"]


class CountedRng:
    """A random generator whose state is two host numbers, (seed, count).

    NumPy's generator state can be read and restored (a checkpoint stores it); CuPy's
    lives in device memory, and its Generator exposes none. So on a device each forward
    pass draws from a stream of its own: `advance` (an executor calls it as a pass starts)
    counts the passes, and the pass draws from the generator seeded with
    SeedSequence([seed, count]), made on its first draw (passes without dropout, noise or
    `normal` make none). Reading or setting `state` never touches the device, so the
    training loop may take it every step and a resumed run draws what the whole run
    drew. Draws are CuPy's Philox4x32-10 (cheap to seed: no skip-ahead per thread) where
    `xp.random` has it, else `xp.random.default_rng`.
    """

    def __init__(self, xp, seed: int = 0):
        self.xp, self.seed, self.count = xp, int(seed), 0
        self._generator = None

    def advance(self) -> None:
        """Start the next pass's stream."""
        self.count += 1
        self._generator = None

    @property
    def state(self) -> dict:
        """{"seed": int, "count": int}: a JSON document, as a checkpoint stores it."""
        return {"seed": self.seed, "count": self.count}

    @state.setter
    def state(self, value: dict) -> None:
        if isinstance(value, dict) and set(value) == {"seed", "count"}:
            self.seed, self.count = int(value["seed"]), int(value["count"])
        else:  # another generator's state (a checkpoint written on the CPU): a stream from it
            text = json.dumps(value, sort_keys=True, default=str)
            self.seed, self.count = zlib.crc32(text.encode()), 0
        self._generator = None

    def generator(self):
        """The generator of the current pass's stream."""
        if self._generator is None:
            sequence = np.random.SeedSequence([self.seed, self.count])
            random = self.xp.random
            if hasattr(random, "Philox4x3210"):
                self._generator = random.Generator(random.Philox4x3210(sequence))
            else:
                self._generator = random.default_rng(sequence)
        return self._generator

    def random(self, size=None, dtype="float64"):
        return self.generator().random(size, dtype=dtype)

    def standard_normal(self, size=None, dtype="float64"):
        return self.generator().standard_normal(size, dtype=dtype)

    def __getattr__(self, name):  # the generator's other distributions
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.generator(), name)


class NonFinite(Exception):
    """A NaN or Inf appeared: `node` made it, in the forward or the backward pass."""

    def __init__(self, node: str, phase: str):
        super().__init__(f"{phase} of {node} produced NaN or Inf")
        self.node, self.phase = node, phase


class Executor:
    """Parameters, running statistics and per-node contexts of one network.

    Parameters
    ----------
    plan : Plan
    params : dict
        Parameter key -> initial array (runtime.init.initial_params).
    seed : int
        Seeds dropout masks, noise and `normal` sources: a NumPy Generator on the host, a
        CountedRng elsewhere (see `rng_state`).
    xp : module
        numpy or cupy.
    order : list of str, optional
        Parameter keys in the order of the flat vectors (default: the plan's).
    """

    def __init__(self, plan: Plan, params: dict, seed: int = 0, xp=np, dtype: str = "float32",
                 order=None):
        self.plan, self.xp, self.dtype = plan, xp, dtype
        self.offsets: dict[str, tuple[int, int]] = {}
        start = 0
        # `order` lays the flat vectors out (a GAN keeps each player's parameters together)
        for key in order or plan.params:
            param = plan.params[key]
            self.offsets[key] = (start, start + param.size)
            start += param.size
        self.flat_params = xp.zeros(start, dtype=dtype)
        self.flat_grads = xp.zeros(start, dtype=dtype)
        self.params = self._views(self.flat_params)
        self.grads = self._views(self.flat_grads)
        for key, value in params.items():
            self.params[key][...] = xp.asarray(value, dtype=dtype)
        self.rng = xp.random.default_rng(seed) if on_host(xp) else CountedRng(xp, seed)
        self.buffers: dict[str, dict] = {step.node: {} for step in plan.steps}
        self.ctxs: dict[str, Ctx] = {}
        self._split = False  # whether the last forward ran ops that split (host_split)
        self._schedules: dict[frozenset, tuple] = {}  # kept values -> (steps, frees)

    def _views(self, flat) -> dict:
        return {key: flat[a:b].reshape(self.plan.params[key].shape)
                for key, (a, b) in self.offsets.items()}

    def param_slice(self, keys) -> slice:
        """The part of the flat vectors holding `keys`, which must be contiguous."""
        spans = sorted(self.offsets[k] for k in keys)
        if any(a != b for (_, a), (b, _) in zip(spans, spans[1:])):
            raise ValueError("parameters are not contiguous in the flat layout")
        return slice(spans[0][0], spans[-1][1]) if spans else slice(0, 0)

    # ---- forward

    def forward(self, batch: dict, training: bool, keep=(), check_finite: bool = False,
                losses: bool = True) -> dict:
        """Run the forward steps; return the loss values and the values named in `keep`.

        In training mode each node keeps what its backward needs (until `backward`).
        With `losses` False only what `keep` needs runs, so targets may be absent.
        With `check_finite`, the first node whose output holds NaN or Inf raises NonFinite.
        """
        xp, plan = self.xp, self.plan
        self._begin_pass()
        keep = frozenset(keep) | (frozenset(plan.losses.values()) if losses else frozenset())
        if keep not in self._schedules:
            steps = plan.steps_for(keep)
            chained = {node for group in fuse(plan, set(keep)) for node in group.nodes[1:]}
            self._schedules[keep] = (steps, forward_frees(steps, set(keep)),
                                     [s.node in chained for s in steps])
        steps, frees, in_place = self._schedules[keep]
        self._split = any(getattr(s.op, "host_split", False) for s in steps)
        size = len(next(iter(batch.values())))
        values = {name: self._as_input(batch[name], name) for name in plan.inputs if name in batch}
        ctxs = self.ctxs = {}
        with one_blas_thread(xp, self._split):
            for step, free, chained in zip(steps, frees, in_place):
                ctx = ctxs[step.node] = Ctx(xp, training, self.rng, self.buffers[step.node],
                                            size, self.dtype)
                xs = [values[s] for s in step.inputs]
                if chained:  # a fused chain's follower writes over its predecessor's output
                    ctx.out = xs[0]
                kwargs = {name: self.params[key] for name, key in step.params.items()}
                for kw, (node, saved) in step.borrows.items():
                    kwargs[kw] = ctxs[node].saved[saved]
                y = step.op.forward(ctx, *xs, **kwargs)
                if check_finite and y.dtype.kind == "f" and not bool(xp.isfinite(y).all()):
                    raise NonFinite(step.node, "forward")
                values[step.node] = y
                for name in free:
                    del values[name]
        return {name: values[name] for name in keep}

    def _begin_pass(self) -> None:
        """A forward pass starts: off the host it draws from a stream of its own."""
        if isinstance(self.rng, CountedRng):
            self.rng.advance()

    def _as_input(self, array, name):
        dtype = "int64" if self.plan.inputs[name].classes is not None else self.dtype
        return self.xp.asarray(array, dtype=dtype)

    # ---- backward

    def backward(self, backward: Backward, check_finite: bool = False) -> None:
        """Fill `grads` for `backward.params` from the last training forward.

        Gradients of a value are summed where it forks. A contribution is stored as
        given (it may alias another value's gradient) and copied before the first sum.
        """
        xp, plan = self.xp, self.plan
        # dL/dL = 1 in the executor's precision: losses scale it by Python numbers
        value_grads = {seed: xp.ones((), dtype=self.dtype) for seed in backward.seeds}
        owned: set[str] = set()
        written: set[str] = set()
        with one_blas_thread(xp, self._split):
            for node in backward.order:
                gy = value_grads.pop(node, None)
                if gy is None:
                    continue  # no loss depends on it through a differentiable path
                step = plan.step_of(node)
                ctx = self.ctxs[node]
                targets = backward.grad_inputs[node]
                ctx.needs_input_grad = tuple(t is not None for t in targets)
                # a parameter's first gradient may be written straight into its storage
                ctx.grad_out = {name: self.grads[key] for name, key in step.params.items()
                                if key not in written and name not in step.slices}
                input_grads, param_grads = step.op.backward(ctx, gy)
                ctx.saved.clear()
                self._store_input_grads(node, backward.grad_inputs[node], input_grads,
                                        value_grads, owned, check_finite)
                self._store_param_grads(step, param_grads, written)
                # the parameter gradients are copied and the input gradients stored: drop them
                # now, not when the next node's backward returns
                del input_grads, param_grads
        for key in backward.params:
            if key not in written:
                self.grads[key][...] = 0

    def _store_input_grads(self, node: str, targets, input_grads, value_grads: dict,
                           owned: set, check_finite: bool) -> None:
        """Keep each input gradient as its value's gradient, or add it to the one there."""
        for target, grad in zip(targets, input_grads):
            if target is None or grad is None:
                continue
            if check_finite and not bool(self.xp.isfinite(grad).all()):
                raise NonFinite(node, "backward")
            if target not in value_grads:
                value_grads[target] = grad
            elif target in owned:
                value_grads[target] += grad
            else:
                value_grads[target] = value_grads[target] + grad
                owned.add(target)

    def _store_param_grads(self, step, param_grads: dict, written: set) -> None:
        """Copy (or add, for a shared parameter's later uses) a node's parameter gradients
        into the flat gradient vector; one the op wrote there already (Ctx.grad_out) is
        only marked written."""
        for name, grad in param_grads.items():
            key = step.params[name]
            if key in written:
                self.grads[key] += grad
            elif grad is not self.grads[key]:
                self.grads[key][...] = grad
            written.add(key)

    # ---- state

    def rng_state(self) -> dict:
        """The random state as a JSON document, read on the host: NumPy's bit generator
        state, or a CountedRng's (seed, count)."""
        if isinstance(self.rng, CountedRng):
            return self.rng.state
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        """Restore what `rng_state` returned (a state of the other kind, from a checkpoint
        written on the other device, seeds a generator of this kind from it)."""
        if isinstance(self.rng, CountedRng):
            self.rng.state = state
        elif isinstance(state, dict) and set(state) == {"seed", "count"}:
            self.rng = np.random.default_rng(np.random.SeedSequence([int(state["seed"]),
                                                                     int(state["count"])]))
        else:
            self.rng.bit_generator.state = state

    def state_dict(self) -> dict:
        """Parameters, running statistics and the random state, as host arrays."""
        xp = self.xp
        buffers = {f"{node}:{name}": to_host(xp, value)
                   for node, entries in self.buffers.items() for name, value in entries.items()}
        return {"params": to_host(xp, self.flat_params).copy(), "buffers": buffers,
                "rng": self.rng_state()}

    def load_state_dict(self, state: dict) -> None:
        xp = self.xp
        if state["params"].shape != self.flat_params.shape:
            raise ValueError(f"checkpoint holds {state['params'].size} parameters but the "
                             f"network has {self.flat_params.size}")
        self.flat_params[...] = xp.asarray(state["params"])
        for entries in self.buffers.values():
            entries.clear()
        for name, value in state["buffers"].items():
            node, _, key = name.rpartition(":")
            self.buffers.setdefault(node, {})[key] = xp.asarray(value)
        self.set_rng_state(state["rng"])
