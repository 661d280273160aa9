"""The generated kernels' plan and logic on the CPU: a lowering for the cuda or the
native target runs each elementwise chain as one generated program (evaluated by NumPy
for cuda here, a CUDA kernel under CuPy; compiled C for native) and must give the NumPy
executor's losses, gradients and running statistics."""
import functools

import numpy as np
import pytest

from netdsl.driver import check_text
from netdsl.lower import codegen, lower
from netdsl.lower.fuse import FusedChain
from netdsl.ops.base import Ctx
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from test_runtime import KNOTTY
from test_train_torch import FEED_FORWARD, VARIANTS, random_batch, spec_lowered


def _pair(name_or_text, edits=(), seed=0, outputs=(), target="cuda"):
    """The host lowering of one network and its lowering for a target of generated
    kernels, with executors on the same parameters."""
    graph = (check_text(KNOTTY).graph if name_or_text == "knotty"
             else spec_lowered(name_or_text, edits).graph)
    host, kernels = lower(graph, outputs=outputs), lower(graph, target, outputs=outputs)
    params = initial_params(host.built, "torch", seed=seed)
    return (Executor(host, params, seed=seed, dtype="float64"),
            Executor(kernels, params, seed=seed, dtype="float64"))


def _step(ex, batch):
    out = ex.forward(batch, training=True)
    ex.backward()
    return {k: float(v) for k, v in out.items()}, ex.flat_grads.copy()


def _fused(ex) -> list[FusedChain]:
    return [s.op for s in ex.plan.steps if isinstance(s.op, FusedChain)]


def _size(name):
    return ((), 3) if name == "knotty" else (VARIANTS[name].edits, VARIANTS[name].batch)


@functools.lru_cache(maxsize=1)   # each network's targets are tested one after the other
def _plain_run(name):
    """The NumPy executor's side of the comparison below, the same for every target: its
    batch, then per step its losses, gradients and its parameters after the update both
    sides take, then its running statistics and its evaluation."""
    edits, size = _size(name)
    plain, _ = _pair(name, edits, target="host")
    batch = random_batch(plain.plan, size, np.random.default_rng(0))
    steps = []
    for _ in range(2):   # the second step sees updated running statistics
        theirs, their_grads = _step(plain, batch)
        # both take the same update: a deep network's second step (ResNet-50's, at batch
        # 2) would otherwise compare the rounding of the first, amplified
        plain.flat_params -= 0.01 * their_grads
        steps.append((theirs, their_grads, plain.flat_params.copy()))
    buffers = {node: {key: np.array(value) for key, value in values.items()}
               for node, values in plain.buffers.items()}
    evaluation = {key: float(value) for key, value in
                  plain.forward(batch, training=False).items()}
    return batch, steps, buffers, evaluation


@pytest.mark.parametrize("target", ["cuda", "native"])
@pytest.mark.parametrize("name", FEED_FORWARD + ["knotty"])
def test_fused_step_equals_the_numpy_executor(name, target):
    _, fused = _pair(name, _size(name)[0], target=target)
    batch, steps, buffers, evaluation = _plain_run(name)
    for theirs, their_grads, updated in steps:
        ours, our_grads = _step(fused, batch)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12), key
        # ResNet-50's 53 batchnorms amplify rounding (a batchnorm summed in another
        # order, with NumPy as much as in C, moves its gradients by 4e-13 of the largest)
        scale = max(1.0, float(np.abs(their_grads).max()))
        np.testing.assert_allclose(our_grads, their_grads, rtol=1e-10, atol=1e-12 * scale)
        fused.flat_params[...] = updated
    for node, values in buffers.items():
        for key, value in values.items():
            # the native target's batchnorm sums in another order: a batch mean near zero
            # is known to the rounding of its terms
            np.testing.assert_allclose(fused.buffers[node][key], value, rtol=1e-10,
                                       atol=1e-14)
    ours = fused.forward(batch, training=False)
    for key, value in evaluation.items():
        assert float(ours[key]) == pytest.approx(value, rel=1e-12)


def test_a_chain_is_one_launch_each_way():
    """mlp: dense -> relu twice; each relu is one kernel forward and one backward."""
    _, fused = _pair("mlp")
    batch = random_batch(fused.plan, 4, np.random.default_rng(0))
    before = codegen.launches["float64"]
    fused.forward(batch, training=True)
    assert codegen.launches["float64"] - before == 2
    fused.backward()
    assert codegen.launches["float64"] - before == 4


def test_a_value_asked_for_stays_out_of_kernels():
    """Asking for a chain's inner value (the add before ResNet's relu) splits the chain."""
    _, whole = _pair("resnet20")
    inner = next(s.node for s in whole.lowered.built.steps if s.op.name == "add")
    assert any(inner in op.nodes and len(op.nodes) == 2 for op in _fused(whole))
    with pytest.raises(ValueError, match="not an output"):
        whole.forward(random_batch(whole.plan, 2, np.random.default_rng(1)), True, keep=[inner])
    plain, fused = _pair("resnet20", outputs=[inner])
    assert all(inner not in op.nodes[:-1] for op in _fused(fused))
    batch = random_batch(plain.plan, 2, np.random.default_rng(1))
    ours = fused.forward(batch, training=True, keep=[inner])[inner]
    np.testing.assert_allclose(ours, plain.forward(batch, training=True, keep=[inner])[inner])


def test_dense_gradients_are_written_into_the_flat_vector():
    """Ctx.grad_out: a dense layer's weight and bias gradients land in the executor's
    flat gradient storage itself, with no temporary to copy from."""
    from netdsl.ops import OPS
    from netdsl.ops.base import Ctx, bind

    dense = bind(OPS["dense"], [3], {})
    ctx = Ctx(np, training=True)
    x, weight, bias = np.ones((4, 2)), np.ones((3, 2)), np.zeros(3)
    dense.forward(ctx, x, weight, bias)
    storage = {"weight": np.empty((3, 2)), "bias": np.empty(3)}
    ctx.grad_out = dict(storage)
    _, grads = dense.backward(ctx, np.ones((4, 3)))
    assert grads["weight"] is storage["weight"] and grads["bias"] is storage["bias"]
    np.testing.assert_array_equal(storage["weight"], np.full((3, 2), 4.0))


SEQUENCE_SPECS = ["elman", "lstm", "gru", "jordan", "scrn", "bidirectional_rnn", "seq2seq",
                  "lstm_classifier", "char_lm"]


@pytest.mark.parametrize("target", ["cuda", "native"])
@pytest.mark.parametrize("name", SEQUENCE_SPECS)
def test_fused_sequence_step_equals_the_plain_one(name, target):
    """Chains inside recurrences (an Elman cell's add -> tanh) run as one program per
    time step; the loop's states stay values. Losses and gradients as without fusion."""
    from conftest import SPECS
    from netdsl.driver import check_file

    net = check_file(f"{SPECS}/{name}.net")
    host, kernels = lower(net), lower(net, target)
    plan = host.plan
    rng = np.random.default_rng(0)
    batch = {}
    for key, t in plan.inputs.items():
        shape = (3, 5, *t.dims) if t.seq else (3, *t.dims)
        batch[key] = (rng.integers(0, t.classes, shape) if t.classes is not None
                      else rng.standard_normal(shape))
    params = initial_params(host.built, "torch", seed=0)
    plain = Executor(host, params, seed=0, dtype="float64")
    fused = Executor(kernels, params, seed=0, dtype="float64")
    results = []
    for ex in (plain, fused):
        out = ex.forward(batch, training=True)
        ex.backward()
        results.append(({k: float(v) for k, v in out.items()}, ex.flat_grads.copy()))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)
    in_loops = [s for loop in fused.plan.loops for s in loop.steps if s.op.name == "fused"]
    if name == "elman":
        assert [s.op.chain.name for s in in_loops] == ["add_tanh"]


@pytest.mark.parametrize("name", ["resnet20", "elman", "lstm"])
def test_a_chain_whose_gradients_follow_from_its_output_keeps_only_that(name):
    """relu(x + skip) and tanh(a + b) keep their output for backward, one array in place
    of their two inputs; lstm's sigmoid(i) * g needs its inputs. Both forms of a
    backward give the same gradients. (On the native target ResNet's chains run inside
    its batchnorms: tests/test_native_batchnorm.py.)"""
    chains = [s.op for s in spec_lowered(name, target="cuda").plan.steps
              if isinstance(s.op, FusedChain)]
    assert any(op.from_output for op in chains)
    assert all(op.from_output for op in chains) == (name != "lstm")
    rng = np.random.default_rng(3)
    for op in chains:
        every = (True,) * op.chain.inputs
        inputs = {f"x{j}": rng.standard_normal(5) for j in range(op.chain.inputs)}
        y = codegen.evaluate_program(op.program, inputs, {}, np, "float64")["y"]
        gy = rng.standard_normal(5)
        plain = codegen.evaluate_program(op.backward_program(every, output=False),
                                         {**inputs, "gy": gy}, {}, np, "float64")
        if not op.from_output:
            assert op.keeps == ()
            continue
        assert op.keeps == ("y",)
        program = op.backward_program(every, merged=False)
        assert set(program.reads) <= {"y", "gy"}
        ours = codegen.evaluate_program(program, {"y": y, "gy": gy}, {}, np, "float64")
        for key, value in plain.items():
            np.testing.assert_allclose(ours[key], value, rtol=1e-12)


def test_relu_backward_overwrites_a_gradient_the_executor_owns():
    """Ctx.gy_owned: relu's input gradient is written over gy when the executor made gy
    and nobody reads it afterwards; otherwise gy is left alone."""
    from netdsl.ops import OPS
    from netdsl.ops.base import Ctx, bind

    relu = bind(OPS["relu"], [], {})
    for owned in (False, True):
        ctx = Ctx(np, training=True)
        relu.forward(ctx, np.array([[-1.0, 2.0, 3.0]]))
        gy = np.array([[5.0, 6.0, 7.0]])
        ctx.gy_owned = owned
        (dx,), _ = relu.backward(ctx, gy)
        np.testing.assert_array_equal(dx, [[0.0, 6.0, 7.0]])
        assert (dx is gy) == owned
        np.testing.assert_array_equal(gy, [[0.0, 6.0, 7.0]] if owned else [[5.0, 6.0, 7.0]])


def test_an_adds_two_gradients_are_written_once():
    """relu(x + skip): both inputs' gradients are where(y > 0, gy, 0); the kernel writes
    one array and both inputs receive it (the executor copies before it sums). (On the
    native target ResNet's add -> relu runs inside the batchnorm before it.)"""
    [op] = [s.op for s in spec_lowered("resnet20", target="cuda").plan.steps
            if isinstance(s.op, FusedChain) and s.op.chain.name == "add_relu"][:1]
    program = op.backward_program((True, True))
    assert program.outputs == ("dx0",) and op.shared_grads((True, True)) == {"dx1": "dx0"}
    every = op.backward_program((True, True), merged=False)
    assert every.outputs == ("dx0", "dx1")
    rng = np.random.default_rng(0)
    x0, x1, gy = (rng.standard_normal((3, 4)) for _ in range(3))
    ctx = Ctx(np, training=True, dtype="float64")
    y = op.forward(ctx, x0, x1)
    ctx.needs_input_grad = (True, True)
    (dx0, dx1), _ = op.backward(ctx, gy)
    assert dx0 is dx1
    np.testing.assert_array_equal(dx0, np.where(np.maximum(x0 + x1, 0) > 0, gy, 0))
    np.testing.assert_array_equal(y, np.maximum(x0 + x1, 0))
