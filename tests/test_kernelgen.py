"""The GPU's generated kernels, checked without a GPU.

- every elementwise formula (ops.expr) equals its op's forward and backward, on each
  case of the op registry's tests (test_op_grads.CASES);
- every fused pattern's CUDA source equals its golden file (tests/golden_kernels/,
  update with --update-golden);
- every generated kernel, of every spec's chains and of every optimiser, compiles
  to PTX with NVRTC;
- the optimiser's update program equals runtime.optim's update.
"""
import os

import numpy as np
import pytest

from conftest import ROOT, SPECS, assert_golden, cli_main
from netdsl.driver import check_file
from netdsl.lower import lower
from netdsl.lower.codegen import (Chain, chain_backward, chain_forward, cuda_source,
                                  evaluate_program, fusable, update_program, update_scalars)
from netdsl.lower.fuse import FusedChain
from netdsl.ops import OPS
from netdsl.ops.base import Ctx, bind
from netdsl.ops.expr import Var, evaluate
from netdsl.runtime.cuda import conv as gpu_conv, loss as gpu_loss, norm as gpu_norm
from netdsl.runtime.cuda import pool as gpu_pool
from netdsl.runtime.optim import make_optimizer
import test_op_grads as op_cases
from cpu_cuda import HostKernels
from nvrtc import compile_ptx, library

GOLDEN = os.path.join(ROOT, "tests", "golden_kernels")

# elementwise ops that stay out of kernels: they draw random numbers (dropout,
# gaussian_noise), learn a per-channel parameter (prelu) or pass no gradient
NOT_FUSED = {"dropout", "gaussian_noise", "prelu", "stop_gradient"}

# the ops (with their defaults) whose kernels' source is kept in golden files
GOLDEN_OPS = ("relu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus", "exp", "log",
              "identity", "scale", "add", "sub", "mul", "div")
# the op registry's cases of ops with formulas, on inputs of one type (a kernel indexes
# every array alike: it does not broadcast)
FORMULA_CASES = [c for c in op_cases.CASES if fusable(c.op())
                 and all(t == c.inputs[0] for t in c.inputs)]


def op(name, **attrs):
    return bind(OPS[name], [], attrs)


def test_every_elementwise_op_has_a_formula_or_a_reason():
    elementwise = {name for name, cls in OPS.items() if cls.elementwise}
    with_formula = {name for name in elementwise if hasattr(OPS[name], "formula")}
    assert elementwise - with_formula == NOT_FUSED
    assert {c.name for c in FORMULA_CASES} == with_formula, "every formula is checked below"


@pytest.mark.parametrize("c", FORMULA_CASES, ids=lambda c: c.id)
def test_formula_equals_the_op(c):
    the_op, arity = c.op(), len(c.inputs)
    xs = op_cases.Run(c, np).xs   # drawn away from the op's kinks, in its domain
    ctx = Ctx(np, training=True, rng=np.random.default_rng(0))
    y = the_op.forward(ctx, *[x.copy() for x in xs])
    gy = np.random.default_rng(1).standard_normal(y.shape)
    grads, _ = the_op.backward(ctx, gy)
    env = {f"x{j}": x for j, x in enumerate(xs)}
    env.update(gy=gy, y=y)
    symbols = [Var(f"x{j}") for j in range(arity)]
    np.testing.assert_allclose(evaluate(the_op.formula(*symbols), env, np, "float64"), y,
                               rtol=1e-13, atol=1e-15)
    derivatives = the_op.derivative(Var("gy"), Var("y"), *symbols)
    for j, (ours, theirs) in enumerate(zip(derivatives, grads)):
        np.testing.assert_allclose(evaluate(ours, env, np, "float64"), theirs, rtol=1e-13,
                                   atol=1e-15, err_msg=f"gradient of input {j}")


def test_a_kernel_propagates_nan_as_numpy_does():
    x = np.array([np.nan, -1.0, 2.0])
    program = chain_forward(Chain((op("relu"),), ((0,),), 1))
    y = evaluate_program(program, {"x0": x}, {}, np, "float64")["y"]
    np.testing.assert_array_equal(y, np.maximum(x, 0))


# ---- fused patterns

RESIDUAL = Chain((op("add"), op("relu")), ((0, 1), (-1,)), 2)       # ResNet's block output
GATED = Chain((op("sigmoid"), op("mul")), ((0,), (-1, 1)), 2)        # a gate times a value
SQUARED = Chain((op("mul"), op("scale", factor=0.5)), ((0, 0), (-1,)), 1)   # x * x / 2
SOFT_TAIL = Chain((op("scale", factor=2.0, shift=0.1), op("elu", alpha=0.5), op("log")),
                  ((0,), (-1,), (-1,)), 1)


def _patterns():
    programs = {}
    for name in GOLDEN_OPS:
        chain = Chain((op(name),), (tuple(range(OPS[name].arity)),), OPS[name].arity)
        programs[chain_forward(chain).name] = chain_forward(chain)
        every = chain_backward(chain, (True,) * chain.inputs)
        programs[every.name] = every
    for chain in (RESIDUAL, GATED, SQUARED, SOFT_TAIL):
        for program in (chain_forward(chain), chain_backward(chain, (True,) * chain.inputs)):
            programs[program.name] = program
    partial = chain_backward(GATED, (False, True))
    programs[partial.name] = partial
    for label, settings in OPTIMIZER_CONFIGS.items():
        name, values = settings
        optimizer = make_optimizer(name, values, np.zeros(4, np.float32))
        programs[f"update_{label}"] = update_program(optimizer.rule, tuple(optimizer.state))
    return programs


OPTIMIZER_CONFIGS = {
    "sgd": ("sgd", {"lr": 0.1}),
    "sgd_momentum": ("sgd", {"lr": 0.1, "momentum": 0.9}),
    "sgd_nesterov_decay": ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True,
                                   "weight_decay": 1e-3}),
    "adam": ("adam", {"lr": 1e-3}),
    "adam_decay": ("adam", {"lr": 1e-3, "weight_decay": 0.01}),
    "rmsprop_momentum": ("rmsprop", {"lr": 1e-2, "momentum": 0.5}),
    "adagrad": ("adagrad", {"lr": 1e-2}),
}

PATTERNS = _patterns()


@pytest.mark.parametrize("label", sorted(PATTERNS))
def test_kernel_source_matches_golden(label, update_golden):
    assert_golden(os.path.join(GOLDEN, f"{label}.cu"), cuda_source(PATTERNS[label]),
                  update_golden)


def test_every_golden_kernel_has_a_pattern():
    stale = sorted(set(f[:-3] for f in os.listdir(GOLDEN)) - set(PATTERNS))
    assert not stale, f"golden kernels without a pattern: {stale}"


@pytest.mark.parametrize("chain", [RESIDUAL, GATED, SQUARED, SOFT_TAIL], ids=lambda c: c.name)
def test_fused_chain_equals_its_ops_one_by_one(chain):
    """Forward and every subset of input gradients against the ops run in turn."""
    rng = np.random.default_rng(3)
    xs = [np.abs(rng.standard_normal((2, 7))) + 0.2 for _ in range(chain.inputs)]
    ctxs, value = [], None
    for the_op, wires in zip(chain.ops, chain.wiring):
        ctx = Ctx(np, training=True)
        args = [value if w < 0 else xs[w] for w in wires]
        value = the_op.forward(ctx, *args)
        ctxs.append(ctx)
    arrays = {f"x{j}": x for j, x in enumerate(xs)}
    np.testing.assert_allclose(evaluate_program(chain_forward(chain), arrays, {}, np,
                                                "float64")["y"], value, rtol=1e-13)
    gy = rng.standard_normal(value.shape)
    expected = [np.zeros_like(x) for x in xs]
    grad = gy
    for the_op, wires, ctx in reversed(list(zip(chain.ops, chain.wiring, ctxs))):
        grads, _ = the_op.backward(ctx, grad)
        for w, g in zip(wires, grads):
            if w < 0:
                grad = g
            else:
                expected[w] = expected[w] + g
    for mask in range(1, 2 ** chain.inputs):
        needs = tuple(bool(mask >> j & 1) for j in range(chain.inputs))
        got = evaluate_program(chain_backward(chain, needs), {**arrays, "gy": gy}, {}, np,
                               "float64")
        assert set(got) == {f"dx{j}" for j in range(chain.inputs) if needs[j]}
        for name, value in got.items():
            np.testing.assert_allclose(value, expected[int(name[2:])], rtol=1e-12)


# ---- the optimiser's update


@pytest.mark.parametrize("label", sorted(OPTIMIZER_CONFIGS))
def test_update_program_equals_the_optimizer(label):
    name, settings = OPTIMIZER_CONFIGS[label]
    rng = np.random.default_rng(7)
    params = rng.standard_normal(50)
    optimizer = make_optimizer(name, settings, params.copy())
    program = update_program(optimizer.rule, tuple(optimizer.state))
    ours = {"params": params.copy(), **{k: np.zeros(50) for k in optimizer.state}}
    for step in range(1, 5):
        grads = rng.standard_normal(50)
        lr = settings["lr"] / step   # a schedule changes it between steps
        optimizer.step(grads.copy(), lr)
        scalars = update_scalars(optimizer.rule, step, lr)
        evaluate_program(program, {**ours, "grads": grads}, scalars, np, "float64")
        np.testing.assert_allclose(ours["params"], optimizer.params, rtol=1e-12, atol=1e-15)
        for key, value in optimizer.state.items():
            np.testing.assert_allclose(ours[key], value, rtol=1e-12, atol=1e-15)


# ---- NVRTC


def _spec_programs():
    """Every kernel the spec's fused plan launches in training (each chain's forward and
    the backward with every input needing a gradient)."""
    programs = {}
    for path in sorted(os.listdir(SPECS)):
        fused = lower(check_file(os.path.join(SPECS, path)), "cuda").plan
        for step in fused.steps:
            if isinstance(step.op, FusedChain):
                chain = step.op.chain
                for program in (chain_forward(chain),
                                chain_backward(chain, (True,) * chain.inputs)):
                    programs[cuda_source(program)] = program.name
    return programs


@pytest.fixture(scope="module")
def nvrtc():
    lib = library()
    assert lib is not None, "NVRTC is missing: pip install -e '.[test]' installs it"
    return lib


def test_every_kernel_compiles_to_ptx(nvrtc):
    sources = {cuda_source(p): name for name, p in PATTERNS.items()}
    sources.update(_spec_programs())
    sources[cuda_source(PATTERNS["update_adam"], "float64")] = "update_adam (double)"
    for source, name in sources.items():
        ptx = compile_ptx(nvrtc, source, f"{name}.cu")
        entry = source.split("void ", 1)[1].split("(", 1)[0]
        assert f".entry {entry}(" in ptx, name


@pytest.mark.parametrize("ctype", ["float", "double"])
def test_every_hand_written_kernel_compiles_to_ptx(nvrtc, ctype):
    for module in (gpu_conv, gpu_pool, gpu_norm, gpu_loss):
        for kernel in module.KERNELS:
            ptx = compile_ptx(nvrtc, kernel.source(ctype), f"{kernel.name}.cu")
            assert f".entry {kernel.name}(" in ptx, kernel.name


def test_a_broken_kernel_is_reported_by_nvrtc(nvrtc):
    with pytest.raises(RuntimeError, match="undefined"):
        compile_ptx(nvrtc, cuda_source(PATTERNS["relu_forward"]).replace("a_x0[i]", "a_z[i]"))


def test_specs_fuse_the_chains_they_have():
    """ResNet's add -> relu is one kernel; every fused run is elementwise ops only."""
    plan = lower(check_file(os.path.join(SPECS, "resnet20.net")), "cuda").plan
    runs = [s.op.chain.ops for s in plan.steps if isinstance(s.op, FusedChain)]
    names = [tuple(op.name for op in run) for run in runs]
    assert names.count(("add", "relu")) == 9
    assert all(fusable(op) for run in runs for op in run)


def test_netc_compile_emits_each_kernel_once(nvrtc):
    result = cli_main("compile", os.path.join(SPECS, "resnet20.net"), "--emit", "kernels")
    assert result.returncode == 0, result.stderr
    sources = result.stdout.split("\n// ")
    assert len(sources) == 5   # relu and add -> relu, each both ways, and the update
    assert "9 uses: stage1/basic1/add1 -> stage1/basic1/relu2" in sources[2]
    assert "// sgd over all parameters" in "\n// " + sources[-1]
    for source in sources:
        compile_ptx(nvrtc, source.split("\n", 1)[1])


# ---- the kernels' own source, run on the host


@pytest.fixture(scope="module")
def host():
    sources = [cuda_source(p) for p in PATTERNS.values()]
    return HostKernels(sources + list(_spec_programs()))


def _run_on_host(host, program, arrays, scalars):
    source = cuda_source(program)
    size = next(iter(arrays.values())).size
    given = {name: arrays[name].copy() for name in arrays}
    buffers = [given.get(name, np.empty(size, np.float32)) for name in program.arrays]
    host.run(source, *buffers, *(scalars[s] for s in program.scalars), size)
    return dict(zip(program.arrays, buffers))


@pytest.mark.parametrize("label", sorted(PATTERNS))
def test_kernel_source_computes_its_program(host, label):
    """The CUDA text itself (precedence, literals, conditionals), compiled for the host,
    against the program evaluated by NumPy, in float32."""
    program = PATTERNS[label]
    rng = np.random.default_rng(5)
    arrays = {name: (np.abs(rng.standard_normal(64)) + 0.1).astype(np.float32)
              for name in program.reads}
    if "x0" in arrays and "log" not in label:
        arrays["x0"] = rng.standard_normal(64).astype(np.float32)   # both signs
    scalars = {"lr": 0.05, "c1": 0.19, "c2": 0.0447}
    ours = _run_on_host(host, program, arrays, scalars)
    expected = evaluate_program(program, {k: v.copy() for k, v in arrays.items()}, scalars, np,
                                "float32")
    for name, value in expected.items():
        np.testing.assert_allclose(ours[name], value, rtol=2e-6, atol=1e-7, err_msg=name)
