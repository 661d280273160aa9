"""netdsl on an NVIDIA GPU (CuPy) against netdsl on the CPU (NumPy), in float32.

Skipped at collection, with the reason, unless CuPy imports and sees a CUDA device
(`cupy.cuda.is_available()`); CI has no GPU. What runs on a GPU:

- every op of the registry (test_op_grads.CASES): forward and backward on CuPy equal
  to NumPy on the same float32 inputs; ops that draw random numbers (dropout, noise,
  `normal`) against their PyTorch twin fed the draws CuPy made, since CuPy's generator
  is not NumPy's;
- every spec in specs/ at a small size (the variants of test_train_torch.py; sequence
  specs at 3 examples of 5 steps): the same losses, parameter gradients and batchnorm
  statistics after one training step of the spec lowered for the cuda target (its
  elementwise runs as generated kernels) as of it lowered for the host on NumPy, from
  the same parameters, both fed the same noise;
- Trainer(xp=cupy) on specs/mlp.net: the validation accuracy of the CPU run within one
  percentage point, with the same dropout masks, and a run with CuPy's own generator
  learns;
- fusion: a chain of elementwise ops (add -> scale -> relu after two dense layers, and
  the add -> relu tail of each ResNet-20 block) runs as one kernel launch, counted by
  CUPTI through torch.profiler and by the count of programs launched.

On a machine with a GPU: `pip install -e '.[gpu,test]'`, then
`pytest tests/test_gpu.py`.

NETDSL_GPU_TEST_XP=numpy runs this file with NumPy standing in for CuPy: nothing is
then checked about a GPU, but the tests' own logic (and the cuda target's programs,
evaluated by NumPy) runs on the CPU. NETDSL_GPU_TEST_XP=emulated runs the GPU path itself, each
kernel compiled for the host. The kernel-counting tests skip in both modes.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

# NETDSL_GPU_TEST_XP: "numpy" stands NumPy in for CuPy; "emulated" a module named cupy
# that is NumPy, so the GPU path runs, every kernel launched from its source compiled
# for the host (tests/cpu_cuda.py)
EMULATED = os.environ.get("NETDSL_GPU_TEST_XP") == "emulated"
STAND_IN = os.environ.get("NETDSL_GPU_TEST_XP") == "numpy" or EMULATED


def _no_device(module) -> str | None:
    """Why CuPy cannot run here, or None when it sees a CUDA device."""
    try:
        if module.cuda.is_available():
            return None
    except Exception as exc:  # noqa: BLE001  a driver or runtime that cannot start
        return f"CuPy imports but cannot reach a CUDA device ({type(exc).__name__}: {exc})"
    return "CuPy imports but sees no CUDA device (cupy.cuda.is_available() is False)"


if STAND_IN:
    from cpu_cuda import launch_on_host, stand_in_cupy
    gpu = stand_in_cupy() if EMULATED else np
    NO_GPU = None
else:
    gpu = pytest.importorskip(
        "cupy", reason="CuPy is not installed: the GPU tests need it and an NVIDIA GPU "
        "(pip install netdsl[gpu])", exc_type=ImportError)
    NO_GPU = _no_device(gpu)

pytestmark = pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")


@pytest.fixture(autouse=True)
def kernels_on_host(monkeypatch):
    if EMULATED:
        launch_on_host(monkeypatch)


torch = pytest.importorskip("torch")

import test_op_grads as op_cases  # noqa: E402  the op cases and their runner
import test_train_torch as small_specs  # noqa: E402  specs shrunk to test sizes
from netdsl.driver import check_file, check_text  # noqa: E402
from netdsl.lower import Lowered, Plan, codegen, lower  # noqa: E402
from netdsl.lower.fuse import FusedChain  # noqa: E402
from netdsl.runtime.data import load_data, normalize  # noqa: E402
from netdsl.runtime.execute import Executor  # noqa: E402
from netdsl.runtime.init import initial_params  # noqa: E402
from netdsl.settings import resolve_settings  # noqa: E402
from netdsl.runtime.train import Trainer  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC_NAMES = sorted(p.stem for p in SPECS.glob("*.net"))
SEQ_BATCH, SEQ_STEPS = 3, 5

# float32 on both sides: what differs is the order of sums (cuBLAS against OpenBLAS,
# CUDA reductions against NumPy's pairwise ones), which deep networks amplify
OP_RTOL, OP_ATOL = 1e-4, 1e-5        # forward; atol scales with the largest |value|
GRAD_RTOL, GRAD_ATOL = 1e-3, 1e-4    # backward
SPEC_LOSS_RTOL = 1e-4
SPEC_GRAD_RTOL, SPEC_GRAD_ATOL = 1e-3, 1e-3  # atol times the parameter's largest |grad|


def host(a) -> np.ndarray:
    """A CuPy or NumPy array (or scalar) as a NumPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def synchronize() -> None:
    if not STAND_IN:
        gpu.cuda.Device().synchronize()


def assert_close(ours, reference, rtol: float, atol: float, what: str) -> None:
    """Elementwise |ours - reference| <= atol * max(1, max|reference|) + rtol * |reference|,
    with the largest differences in the message."""
    ours, reference = host(ours), host(reference)
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape} != {reference.shape}"
    if reference.dtype.kind not in "fc":
        np.testing.assert_array_equal(ours, reference, err_msg=what)
        return
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    np.testing.assert_allclose(ours, reference, rtol=rtol, atol=atol * scale,
                               err_msg=f"{what}: {differences(ours, reference)}")


def differences(ours: np.ndarray, reference: np.ndarray) -> str:
    """The largest absolute and relative differences, and the norm-relative error."""
    if not reference.size:
        return "empty"
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    rel = diff / np.maximum(np.abs(reference.astype(np.float64)), 1e-30)
    norm = float(np.linalg.norm(reference.astype(np.float64)))
    return (f"max |diff| {diff.max():.3g}, max rel diff {rel.max():.3g}, "
            f"|diff|/|reference| {float(np.linalg.norm(diff)) / (norm or 1):.3g}, "
            f"max |reference| {np.abs(reference).max():.3g}")


# ---- every op: CuPy against NumPy


def draws_randomness(case) -> bool:
    """Whether the op's output depends on its generator (dropout in training, noise,
    `normal`): then CuPy's draws differ from NumPy's by design."""
    run = op_cases.Run(case, np, dtype="float32")
    _, a = run.forward()
    run.seed = 1  # only the generator's seed; the inputs stay
    _, b = run.forward()
    return not np.array_equal(host(a), host(b))


def both(case):
    """The case on NumPy and on the GPU, from the same float32 inputs and parameters."""
    return op_cases.Run(case, np, dtype="float32"), op_cases.Run(case, gpu, dtype="float32")


@pytest.mark.parametrize("c", op_cases.PARAMS)
def test_op_forward_matches_numpy(c):
    cpu, dev = both(c)
    _, expected = cpu.forward()
    ctx, y = dev.forward()
    assert isinstance(y, gpu.ndarray), f"{c.id}: the GPU forward returned {type(y).__name__}"
    assert y.shape == expected.shape and y.dtype == expected.dtype, (
        f"{c.id}: {y.shape} {y.dtype} on the GPU, {expected.shape} {expected.dtype} on the CPU")
    if draws_randomness(c):
        twin, _, _ = dev.torch_twin(ctx)  # fed the draws the GPU made
        expected = twin.detach().numpy()
    assert_close(y, expected, OP_RTOL, OP_ATOL, f"{c.id} forward")


@pytest.mark.parametrize("c", op_cases.PARAMS)
def test_op_backward_matches_numpy(c):
    cpu, dev = both(c)
    if not op_cases.floats_out(cpu):
        pytest.skip("no gradient flows through class labels")
    ctx_cpu, y_cpu = cpu.forward()
    ctx, y = dev.forward()
    gy = np.random.default_rng(1).standard_normal(y_cpu.shape).astype(np.float32)
    input_grads, param_grads = dev.op.backward(ctx, gpu.asarray(gy))
    if draws_randomness(c):
        twin, xs, params = dev.torch_twin(ctx)
        if twin.requires_grad:
            twin.backward(torch.tensor(gy))
        expected_inputs = [None if x.grad is None else x.grad.numpy() for x in xs]
        expected_params = {k: p.grad.numpy() for k, p in params.items()}
    else:
        expected_inputs, expected_params = cpu.op.backward(ctx_cpu, gy)
    assert len(input_grads) == len(expected_inputs)
    for i, (grad, expected) in enumerate(zip(input_grads, expected_inputs)):
        assert (grad is None) == (expected is None), f"{c.id}: input {i} gradient presence"
        if grad is not None:
            assert grad.dtype == np.float32, f"{c.id}: input {i} gradient is {grad.dtype}"
            assert_close(grad, expected, GRAD_RTOL, GRAD_ATOL, f"{c.id} d input {i}")
    assert set(param_grads) == set(expected_params)
    for name, grad in param_grads.items():
        assert_close(grad, expected_params[name], GRAD_RTOL, GRAD_ATOL, f"{c.id} d {name}")


# ---- every spec: the GPU executor against the NumPy executor


class HostRandom:
    """A generator that draws on the host from one NumPy seed and hands out arrays of
    `xp`: given to both executors, it feeds the GPU the noise and dropout masks the CPU
    gets. `bit_generator` is NumPy's, so Trainer can save and restore its state."""

    def __init__(self, xp, seed: int = 0):
        self.xp, self.rng = xp, np.random.default_rng(seed)
        self.bit_generator = self.rng.bit_generator

    def random(self, size=None, dtype=np.float64):
        return self.xp.asarray(self.rng.random(size, dtype=np.dtype(dtype)))

    def standard_normal(self, size=None, dtype=np.float64):
        return self.xp.asarray(self.rng.standard_normal(size, dtype=np.dtype(dtype)))


def small_spec(name: str, target: str) -> tuple[Lowered, int]:
    """The spec at test size (dropout's p set to 0) lowered for `target`, and its batch
    size."""
    if name in small_specs.VARIANTS:
        variant = small_specs.VARIANTS[name]
        return small_specs.spec_lowered(name, variant.edits, target), variant.batch
    return small_specs.spec_lowered(name, (), target), SEQ_BATCH


def small_batch(plan: Plan, size: int, rng) -> dict[str, np.ndarray]:
    """Every input and target: class labels, or values in [0, 1); sequences of SEQ_STEPS."""
    batch = {}
    for name, t in plan.inputs.items():
        shape = (size, SEQ_STEPS, *t.dims) if t.seq else (size, *t.dims)
        if t.classes is not None:
            batch[name] = rng.integers(0, t.classes, shape)
        else:
            batch[name] = rng.random(shape, dtype=np.float32)
    return batch


def one_step(ex, batch: dict) -> dict:
    ex.rng = HostRandom(ex.xp, 0)
    out = ex.forward(batch, True)
    ex.backward()
    synchronize()
    return out


def _error(ours, reference) -> float:
    """The largest difference, relative to the largest entry of the reference."""
    ours, reference = host(ours).astype(np.float64), host(reference).astype(np.float64)
    if not reference.size:
        return 0.0
    return float(np.abs(ours - reference).max()) / (float(np.abs(reference).max()) or 1.0)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_step_matches_numpy(name):
    """One training step of the spec: the same loss values, gradients of every parameter
    and batchnorm statistics on the GPU as on the CPU. Each executor gets its own plan.

    Gradients are measured against the CPU in float64. At these sizes (batchnorm over
    two examples of 1x1 pixels in a deep ResNet or DenseNet) float32 itself is off by
    several percent on the CPU too, so the GPU's float32 error may be up to ten times
    the CPU's, or SPEC_GRAD_ATOL, whichever is larger."""
    host_spec, size = small_spec(name, "host")
    cuda_spec, _ = small_spec(name, "cuda")
    plan_cpu = host_spec.plan
    params = initial_params(host_spec.built, "torch", seed=0)
    batch = small_batch(plan_cpu, size, np.random.default_rng(0))
    cpu, dev = Executor(host_spec, params, 0, xp=np), Executor(cuda_spec, params, 0, xp=gpu)
    exact = Executor(host_spec, params, 0, dtype="float64")
    out_cpu, out_gpu = one_step(cpu, batch), one_step(dev, batch)
    one_step(exact, batch)

    failures = []
    for loss, node in plan_cpu.losses.items():
        ours, theirs = float(out_gpu[node]), float(out_cpu[node])
        if not np.isclose(ours, theirs, rtol=SPEC_LOSS_RTOL, atol=1e-6):
            failures.append(f"loss {loss}: {ours!r} on the GPU, {theirs!r} on the CPU")
    cpu_error = max(_error(cpu.grads[key], exact.grads[key]) for key in plan_cpu.params)
    bound = max(SPEC_GRAD_ATOL, 10 * cpu_error)
    worst = (0.0, "")
    for key in plan_cpu.params:
        ours, reference = host(dev.grads[key]), exact.grads[key]
        if ours.shape != reference.shape:
            failures.append(f"{key}: gradient shape {ours.shape} != {reference.shape}")
        elif _error(ours, reference) > bound:
            failures.append(f"d {key}: {differences(ours, reference)} (float64 reference; "
                            f"the CPU's float32 is off by {cpu_error:.2g} of the largest entry)")
        else:
            worst = max(worst, (_error(ours, reference), key))
    for node, buffers in cpu.buffers.items():
        for stat, value in buffers.items():
            ours = dev.buffers.get(node, {}).get(stat)
            if ours is None:
                failures.append(f"{node} {stat}: missing on the GPU")
            elif not np.allclose(host(ours), host(value), rtol=SPEC_GRAD_RTOL, atol=1e-5):
                failures.append(f"{node} {stat}: {differences(host(ours), host(value))}")
    assert not failures, (f"{name} (cuda target against host), {len(failures)} differences:"
                          "\n  " + "\n  ".join(failures[:25]))
    print(f"{name}: largest gradient difference {worst[0]:.2g} of the largest entry ({worst[1]})")


# ---- optimisers on a flat CuPy vector


OPTIMIZER_CASES = [("sgd", {"lr": 0.1}), ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                   ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
                   ("adam", {"lr": 1e-2}), ("adagrad", {"lr": 0.1}), ("rmsprop", {"lr": 1e-2})]


@pytest.mark.parametrize("name, settings", OPTIMIZER_CASES, ids=lambda v: str(v))
def test_optimizer_steps_match_numpy(name, settings):
    """Five steps of the optimiser on a flat vector, with clipping and penalties as the
    training loop applies them: the same parameters on the GPU as on the CPU."""
    from netdsl.runtime.optim import clip_grad_norm, make_optimizer, penalize

    rng = np.random.default_rng(0)
    start = rng.standard_normal(1000).astype(np.float32)
    grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(5)]
    results = []
    for xp in (np, gpu):
        params = xp.asarray(start.copy())
        optimizer = make_optimizer(name, dict(settings), params)
        for g in grads:
            g = xp.asarray(g.copy())
            penalize(params, g, 1e-3, 1e-2)
            clip_grad_norm(g, 10.0)
            optimizer.step(g, settings["lr"])
        results.append(host(params))
    assert_close(results[1], results[0], 1e-5, 1e-6, f"{name} {settings}")


# ---- training: Trainer on the GPU against Trainer on the CPU


def train_mlp(xp, epochs: int, same_masks: bool) -> list[dict]:
    """Train specs/mlp.net for `epochs` as `netc run` does (bundled digits, the spec's
    settings and split); with `same_masks`, dropout draws from HostRandom."""
    pytest.importorskip("sklearn", reason="the bundled 8x8 digits come with scikit-learn")
    net = check_file(str(SPECS / "mlp.net"))
    lowered = lower(net, "host" if xp is np else "cuda")  # as netc run lowers for --device
    settings = resolve_settings(net.graph.graph["train"], {"epochs": epochs},
                                net.program.train_spans)
    data = load_data(net.graph, settings.data, settings.seed)
    train, val = data.split(settings.val, settings.seed)
    if settings.normalize and data.normalize:
        _, (train, val) = normalize(train, val)
    trainer = Trainer(lowered, settings, None, xp=xp)
    if same_masks:
        trainer.executor.rng = HostRandom(xp, settings.seed)
    history = trainer.fit(train, val)
    synchronize()
    return history


def test_mlp_trains_to_the_cpus_accuracy():
    """8 epochs on the digits with the same dropout masks: the validation accuracy of the
    CPU run within one percentage point (about two of the 180 held-out digits)."""
    epochs = 8
    cpu = train_mlp(np, epochs, same_masks=True)
    dev = train_mlp(gpu, epochs, same_masks=True)
    ours, theirs = dev[-1]["val_accuracy"], cpu[-1]["val_accuracy"]
    curves = (f"GPU {[round(r['val_accuracy'], 4) for r in dev]}, "
              f"CPU {[round(r['val_accuracy'], 4) for r in cpu]}")
    assert abs(ours - theirs) <= 0.01, curves
    assert dev[-1]["loss"] < dev[0]["loss"], curves


def test_mlp_learns_with_cupys_generator():
    """With CuPy's own generator for the dropout masks the run differs from the CPU's,
    but learns as well (the CPU reaches 97-98% in 8 epochs whatever the masks)."""
    history = train_mlp(gpu, 8, same_masks=False)
    assert history[-1]["val_accuracy"] >= 0.93, [r["val_accuracy"] for r in history]


# ---- fusion: one kernel per chain


needs_cupti = pytest.mark.skipif(STAND_IN, reason="counts CUDA kernels: needs the real GPU")

FUSION_SPEC = """
input  x : [32]
target y : class(4)
h = (dense(x, 64) + dense(x, 64)) {tail}
logits = h -> dense(4)
loss cross_entropy(logits, y)
"""


def cuda_kernels(run, repeats: int = 2) -> Counter:
    """The CUDA kernels (by name) that `run()` launches, per call, seen by CUPTI through
    torch.profiler: it records every kernel of the process, CuPy's included."""
    from torch.profiler import ProfilerActivity, profile

    run()  # compiles what is new
    synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            run()
        synchronize()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    names = Counter(e.get("name", "?") for e in events
                    if e.get("ph") == "X" and str(e.get("cat", "")).lower() == "kernel")
    return Counter({name: n / repeats for name, n in names.items()})


def fusion_case(tail: str, fused: bool):
    """An executor for FUSION_SPEC with `tail` and a training step to count."""
    lowered = lower(check_text(FUSION_SPEC.format(tail=tail)), "cuda" if fused else "host")
    params = initial_params(lowered.built, "auto", seed=0)
    ex = Executor(lowered, params, 0, xp=gpu)
    batch = {"x": gpu.asarray(np.random.default_rng(0).random((8, 32), dtype=np.float32)),
             "y": gpu.asarray(np.arange(8) % 4)}

    def step():
        ex.forward(batch, True)
        ex.backward()

    return ex, step


def fused_chains(ex) -> list[FusedChain]:
    """The fused steps' ops of the plan the executor runs."""
    return [step.op for step in ex.plan.steps if isinstance(step.op, FusedChain)]


def test_elementwise_chain_is_one_fused_step():
    """The structure behind the launch counts below (checked in the stand-in mode too):
    add -> scale -> relu after two dense layers is one fused step of the executor's plan."""
    ex, step = fusion_case("-> scale(2, 1) -> relu", fused=True)
    step()
    assert [op.nodes for op in fused_chains(ex)] == [("add1", "scale1", "h")]


@needs_cupti
def test_a_longer_chain_launches_no_more_kernels():
    """add -> relu and add -> scale -> relu: one fused kernel each, forward and backward,
    so a training step launches as many kernels with the extra member as without it.
    The plain Executor, which launches a kernel per op, launches more with it: that shows
    CUPTI sees CuPy's kernels at all."""
    counts = {}
    for fused in (True, False):
        for tail in ("-> relu", "-> scale(2, 1) -> relu"):
            _, step = fusion_case(tail, fused)
            counts[fused, tail] = cuda_kernels(step)
    total = {key: sum(c.values()) for key, c in counts.items()}
    short, long = "-> relu", "-> scale(2, 1) -> relu"
    detail = "; ".join(f"{'fused' if f else 'plain'} {t!r}: {n:g} kernels"
                       for (f, t), n in total.items())
    assert total[False, long] > total[False, short], f"CUPTI missed CuPy's kernels? {detail}"
    extra = counts[True, long] - counts[True, short]
    assert total[True, long] == total[True, short], (
        f"the fused chain launched more kernels with one more member: {detail}; "
        f"extra: {dict(extra)}")


def resnet20_case():
    """ResNet-20 at test size: a fused and a plain executor on the GPU, and a batch."""
    host_spec, size = small_spec("resnet20", "host")
    params = initial_params(host_spec.built, "torch", seed=0)
    batch = {k: gpu.asarray(v) for k, v in
             small_batch(host_spec.plan, size, np.random.default_rng(0)).items()}
    fused = Executor(small_spec("resnet20", "cuda")[0], params, 0, xp=gpu)
    fused.forward(batch, False)
    return fused, Executor(host_spec, params, 0, xp=gpu), batch


def test_resnet_block_tails_are_fused_steps():
    """Each of the 9 blocks of ResNet-20 ends in add -> relu (after conv -> batchnorm,
    which keep their own kernels): one fused step each."""
    fused, _, _ = resnet20_case()
    ops = [[op.name for op in chain.chain.ops] for chain in fused_chains(fused)]
    assert ops.count(["add", "relu"]) == 9, f"3 stages x 3 blocks; fused steps: {ops}"


@needs_cupti
def test_resnet_block_tails_run_as_one_kernel_each():
    """The fused executor's launch counter goes up once per fused step and forward, and
    CUPTI counts, per fused step, one kernel for all its members: the plain Executor
    launches len(members) - 1 more."""
    fused_ex, plain_ex, batch = resnet20_case()
    before = codegen.launches["float32"]
    fused_ex.forward(batch, False)
    assert codegen.launches["float32"] - before == len(fused_chains(fused_ex))

    fused = cuda_kernels(lambda: fused_ex.forward(batch, False))
    plain = cuda_kernels(lambda: plain_ex.forward(batch, False))
    saved = sum(len(op.nodes) - 1 for op in fused_chains(fused_ex))
    assert sum(plain.values()) - sum(fused.values()) == saved, (
        f"plain {sum(plain.values()):g} kernels, fused {sum(fused.values()):g}, expected "
        f"{saved} fewer; only in plain: {dict(plain - fused)}; only in fused: "
        f"{dict(fused - plain)}")
