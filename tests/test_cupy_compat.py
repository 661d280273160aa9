"""The GPU path, checked on the CPU: no NumPy-only API on the executor's path, and the
training loop that does not wait for the device.

`strict_xp` is NumPy behind CuPy 14's namespace: a name CuPy lacks (np.errstate, a
Generator method it has not) is an AttributeError. It is not NumPy itself, so every
`xp is np` branch takes its GPU side: one slab and one chunk per op, no BLAS threads,
CountedRng for random draws, and the Trainer's deferred reads. Runs with it must work
and match NumPy's. No test here needs CuPy or a GPU; `--device gpu` must fail cleanly
on this machine, with one line and exit code 1.
"""
import os
import sys
import types

import numpy as np
import pytest

from conftest import SPECS, run_netc
from netdsl.driver import check_file, check_text
from netdsl.errors import SpecError
from netdsl.runtime.data import Dataset, load_data
from netdsl.lower import lower
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.rng import CountedRng
from netdsl.settings import resolve_settings
from netdsl.runtime.train import READ_EVERY, Reporter, Trainer, TrainingDiverged

# dir(cupy) of cupy-cuda13x 14.2.0 (public names NumPy has too), and of its submodules
CUPY_NAMES = set("""
abs absolute acos acosh add all allclose amax amin angle any append apply_along_axis
apply_over_axes arange arccos arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin
argpartition argsort argwhere around array array2string array_equal array_equiv array_repr
array_split array_str asanyarray asarray asarray_chkfinite ascontiguousarray asfortranarray
asin asinh astype atan atan2 atanh atleast_1d atleast_2d atleast_3d average bartlett
base_repr binary_repr bincount bitwise_and bitwise_count bitwise_invert bitwise_left_shift
bitwise_not bitwise_or bitwise_right_shift bitwise_xor blackman bool bool_ broadcast
broadcast_arrays broadcast_shapes broadcast_to byte c_ can_cast cbrt cdouble ceil choose
clip column_stack common_type complex128 complex64 complexfloating compress concat
concatenate conj conjugate convolve copy copysign copyto corrcoef correlate cos cosh
count_nonzero cov cross csingle cumprod cumsum cumulative_prod cumulative_sum deg2rad
degrees delete diag diag_indices diag_indices_from diagflat diagonal diff digitize divide
divmod dot double dsplit dstack dtype e ediff1d einsum empty empty_like equal euler_gamma
exceptions exp exp2 expand_dims expm1 extract eye fabs fft fill_diagonal finfo fix flatiter
flatnonzero flip fliplr flipud float16 float32 float64 float_power floating floor
floor_divide fmax fmin fmod format_float_positional format_float_scientific frexp
from_dlpack frombuffer fromfile fromfunction fromiter fromstring full full_like gcd generic
genfromtxt get_printoptions gradient greater greater_equal half hamming hanning heaviside
histogram histogram2d histogramdd hsplit hstack hypot i0 identity iinfo imag index_exp
indices inexact inf inner int16 int32 int64 int8 int_ intc integer interp intersect1d intp
invert isclose iscomplex iscomplexobj isdtype isfinite isfortran isin isinf isnan isneginf
isposinf isreal isrealobj isscalar issubdtype iterable ix_ kaiser kron lcm ldexp left_shift
less less_equal lexsort lib linalg linspace load loadtxt log log10 log1p log2 logaddexp
logaddexp2 logical_and logical_not logical_or logical_xor logspace long longlong
mask_indices matmul matrix_transpose max maximum may_share_memory mean median meshgrid mgrid
min min_scalar_type minimum mintypecode mod modf moveaxis multiply nan nan_to_num nanargmax
nanargmin nancumprod nancumsum nanmax nanmean nanmedian nanmin nanprod nanstd nansum nanvar
ndarray ndim ndindex negative newaxis nextafter nonzero not_equal number ogrid ones
ones_like outer packbits pad partition percentile permute_dims pi piecewise place poly
poly1d polyadd polyfit polymul polynomial polysub polyval positive pow power printoptions
prod promote_types ptp put put_along_axis putmask quantile r_ rad2deg radians random ravel
ravel_multi_index real real_if_close reciprocal remainder repeat require reshape resize
result_type right_shift rint roll rollaxis roots rot90 round row_stack s_ save savetxt savez
savez_compressed searchsorted select set_printoptions setdiff1d setxor1d shape shares_memory
short show_config sign signbit signedinteger sin sinc single sinh size sort sort_complex
split sqrt square squeeze stack std subtract sum swapaxes take take_along_axis tan tanh
tensordot testing tile trace transpose trapezoid tri tril tril_indices tril_indices_from
trim_zeros triu triu_indices triu_indices_from true_divide trunc typename typing ubyte ufunc
uint uint16 uint32 uint64 uint8 uintc uintp ulong ulonglong union1d unique unique_all
unique_counts unique_inverse unique_values unpackbits unravel_index unsignedinteger unwrap
ushort vander var vdot vectorize vsplit vstack where zeros zeros_like
""".split())
CUPY_RANDOM = set("""
beta binomial bytes chisquare choice default_rng dirichlet exponential f gamma geometric
gumbel hypergeometric laplace logistic lognormal logseries multinomial multivariate_normal
negative_binomial noncentral_chisquare noncentral_f normal pareto permutation poisson power
rand randint randn random random_integers random_sample ranf rayleigh seed shuffle
standard_cauchy standard_exponential standard_gamma standard_normal standard_t triangular
uniform vonmises wald weibull zipf
""".split())
CUPY_GENERATOR = set("""
beta binomial chisquare dirichlet exponential f gamma geometric hypergeometric integers
logseries poisson power random standard_exponential standard_gamma standard_normal uniform
""".split())
CUPY_LINALG = set("""
LinAlgError cholesky cond cross det eig eigh eigvals eigvalsh inv lstsq matmul matrix_power
matrix_rank matrix_transpose norm pinv qr slogdet solve svd tensorinv tensorsolve
""".split())
CUPY_STRIDE_TRICKS = {"as_strided", "sliding_window_view"}


class _Strict(types.ModuleType):
    """A namespace whose missing names say that CuPy lacks them."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self.__name__}.{name} is NumPy's, not in CuPy 14's namespace")


def _namespace(name, source, names, **extra):
    module = _Strict(name)
    for key in names:
        if hasattr(source, key):
            setattr(module, key, getattr(source, key))
    for key, value in extra.items():
        setattr(module, key, value)
    return module


class StrictGenerator:
    """A NumPy Generator showing only the methods CuPy's Generator has."""

    def __init__(self, bit_generator):
        self._generator = np.random.Generator(bit_generator)

    def __getattr__(self, name):
        if name not in CUPY_GENERATOR:
            raise AttributeError(f"CuPy's random Generator has no {name}")
        return getattr(self._generator, name)


def _default_rng(seed=None):
    return StrictGenerator(np.random.PCG64(seed))


strict_xp = _namespace(
    "strict_xp", np, CUPY_NAMES, asnumpy=np.asarray,
    random=_namespace("strict_xp.random", np.random, CUPY_RANDOM, default_rng=_default_rng,
                      Generator=StrictGenerator, Philox4x3210=np.random.Philox),
    linalg=_namespace("strict_xp.linalg", np.linalg, CUPY_LINALG),
    lib=_namespace("strict_xp.lib", np.lib, (), stride_tricks=_namespace(
        "strict_xp.lib.stride_tricks", np.lib.stride_tricks, CUPY_STRIDE_TRICKS)))


def test_the_shim_has_cupy_s_names_and_no_others():
    assert not hasattr(strict_xp, "errstate") and hasattr(strict_xp, "asnumpy")
    assert hasattr(strict_xp.add, "at") and hasattr(strict_xp.lib.stride_tricks, "as_strided")
    with pytest.raises(AttributeError, match="CuPy"):
        strict_xp.random.default_rng(0).normal
    try:
        import cupy
    except Exception:  # noqa: BLE001  CuPy is not installed here: the lists stand
        return
    public = {n for n in dir(cupy) if not n.startswith("_") and hasattr(np, n)}
    assert CUPY_NAMES <= public, sorted(CUPY_NAMES - public)


# ---- the executors

def _spec(name):
    return lower(check_file(os.path.join(SPECS, f"{name}.net")))


def _batch(plan, size, steps=None, seed=0):
    rng = np.random.default_rng(seed)
    batch = {}
    for name, t in plan.inputs.items():
        shape = (size,) + ((steps,) if t.seq else ()) + t.dims
        batch[name] = (rng.integers(0, t.classes, shape) if t.classes is not None
                       else rng.standard_normal(shape))
    return batch


def _pass(lowered, xp, batch, seed=3):
    """Loss values and flat gradients of one training pass, in float64; the random
    draws (dropout) come from the same CountedRng stream for either module."""
    params = {k: v.astype(np.float64)
              for k, v in initial_params(lowered.built, "auto", 0).items()}
    ex = Executor(lowered, params, seed, xp, dtype="float64")
    ex.rng = CountedRng(strict_xp, seed)
    out = ex.forward(batch, True)
    ex.backward()
    losses = {name: float(out[node]) for name, node in lowered.plan.losses.items()}
    return losses, np.asarray(ex.flat_grads).copy()


@pytest.mark.parametrize("name, size", [("mlp", 5), ("lenet5", 3), ("resnet20", 2),
                                        ("gan", 4)])
def test_a_training_pass_runs_on_the_strict_namespace_as_on_numpy(name, size):
    lowered = _spec(name)
    batch = _batch(lowered.plan, size)
    (host_losses, host_grads), (losses, grads) = (_pass(lowered, np, batch),
                                                  _pass(lowered, strict_xp, batch))
    assert losses == pytest.approx(host_losses, rel=1e-10)
    np.testing.assert_allclose(grads, host_grads, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name, lengths", [("lstm", None), ("lstm", [6, 2, 4]),
                                           ("lstm_classifier", [6, 2, 4])])
def test_a_sequence_pass_runs_on_the_strict_namespace_as_on_numpy(name, lengths):
    lowered = _spec(name)
    batch = _batch(lowered.plan, 3, steps=6)
    if lengths is not None:  # a padded batch: the loss keeps the real rows only
        for key in [k for k in batch if lowered.plan.types[k].seq]:
            batch[f"{key}.lengths"] = np.array(lengths)
    host = _pass(lowered, np, batch)
    strict = _pass(lowered, strict_xp, batch)
    assert strict[0] == pytest.approx(host[0], rel=1e-10)
    np.testing.assert_allclose(strict[1], host[1], rtol=1e-8, atol=1e-12)


def test_counted_rng_state_is_two_numbers_and_restores_the_draws():
    mlp = _spec("mlp")
    ex = Executor(mlp, initial_params(mlp.built, "auto", 0), 5, strict_xp)
    batch = _batch(ex.plan, 4)
    ex.forward(batch, True)
    state = ex.rng_state()
    assert state == {"seed": 5, "count": 1}
    first = ex.forward(batch, True)["loss"]
    ex.set_rng_state(state)
    assert float(ex.forward(batch, True)["loss"]) == float(first)  # the same dropout mask
    # a NumPy executor restores a CountedRng state too (and the other way round)
    host = Executor(mlp, initial_params(mlp.built, "auto", 0), 5, np)
    host.load_state_dict(ex.state_dict())
    ex.load_state_dict(host.state_dict())
    assert set(ex.rng_state()) == {"seed", "count"}


# ---- the training loop off the host

class _Counting(Reporter):
    def __init__(self):
        self.steps = []

    def step(self, epoch, done, total, metrics):
        self.steps.append((done, dict(metrics)))


def _trainer(name, xp, folder=None, **overrides):
    net = check_file(os.path.join(SPECS, f"{name}.net"))
    settings = resolve_settings(net.graph.graph["train"], overrides)
    data = load_data(net.graph, None, settings.seed)
    train, val = data.split(settings.val, settings.seed)
    return (Trainer(_lowered(net, xp), settings, folder, xp=xp, reporter=_Counting()),
            train, val)


def _lowered(net, xp):
    """Lowered as netc run lowers it for the device: the cuda target off the host."""
    return lower(net, "host" if xp is np else "cuda")


def test_deferred_reads_give_the_host_s_numbers_and_report_every_few_steps():
    steps = READ_EVERY + 5
    host, train, val = _trainer("lenet5", np, epochs=1, steps=steps, batch=16)
    host.fit(train, val)
    strict, train, val = _trainer("lenet5", strict_xp, epochs=1, steps=steps, batch=16)
    strict.fit(train, val)
    assert strict.deferred and not host.deferred
    assert len(strict.position.losses) == len(host.position.losses) == steps
    for mine, theirs in zip(strict.position.losses, host.position.losses):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    assert [done for done, _ in strict.reporter.steps] == [READ_EVERY, steps]
    last = strict.reporter.steps[-1][1]
    assert last["loss"] == strict.position.losses[-1]["loss"]
    assert last["accuracy"] == pytest.approx(host.reporter.steps[-1][1]["accuracy"])
    assert strict.evaluate(val)["loss"] == pytest.approx(host.evaluate(val)["loss"], rel=1e-4)


def test_deferred_resume_gives_the_same_losses(tmp_path):
    """mlp has dropout: its masks come from CountedRng, whose state the checkpoint holds."""
    whole, train, val = _trainer("mlp", strict_xp, epochs=2, steps=17, batch=64)
    whole.fit(train, val)
    folder = str(tmp_path / "run")
    first, train, val = _trainer("mlp", strict_xp, folder, epochs=2, steps=9, batch=64)
    first.fit(train, val)
    second, train, val = _trainer("mlp", strict_xp, folder, epochs=2, steps=17, batch=64)
    second.restore(folder)
    second.fit(train, val)
    assert len(whole.position.losses) == 17
    assert second.position.losses == whole.position.losses


def test_deferred_training_on_padded_sequences_counts_the_real_steps():
    text = ("import rnn\ninput x : seq[4]\ntarget y : seq class(3)\n"
            "logits = x -> lstm(5) -> dense(3)\nloss cross_entropy(logits, y)\n")
    net = check_text(text, "p.net")
    rng = np.random.default_rng(0)
    data = Dataset({"x": rng.standard_normal((24, 6, 4)).astype(np.float32),
                    "y": rng.integers(0, 3, (24, 6)), "x.lengths": rng.integers(2, 7, 24)},
                   "padded")
    runs = []
    for xp in (np, strict_xp):
        trainer = Trainer(_lowered(net, xp), resolve_settings({}, {"epochs": 2, "batch": 8}),
                          xp=xp)
        runs.append(trainer.fit(data, data))
    for host, strict in zip(*runs):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert strict[key] == pytest.approx(host[key], rel=1e-5), key


def test_a_deferred_nan_stops_training_with_a_located_message():
    text = ("network n\ninput x : [4]\ntarget y : class(2)\n"
            "h = x -> dense(4) -> log\nloss cross_entropy(h -> dense(2), y)\n")
    net = check_text(text, "n.net")
    rng = np.random.default_rng(0)
    data = Dataset({"x": rng.standard_normal((64, 4)).astype(np.float32),
                    "y": rng.integers(0, 2, 64)}, "test data")
    trainer = Trainer(_lowered(net, strict_xp), resolve_settings({}, {"epochs": 1, "batch": 32}),
                      xp=strict_xp)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(data, None)
    # read back at step 2, it is located at step 1, by rerunning from the state before it
    assert info.value.message == ("the loss became NaN or Inf at step 1: the forward pass "
                                  "of 'h' (log) produced it first")
    assert info.value.span.line == 4


def test_a_deferred_nan_read_late_is_located_at_its_step():
    """Too high a learning rate makes the loss overflow some steps in, between two reads:
    the diagnosis reruns the steps since the last read and says what the host says."""
    net = check_text("network d\ninput x : [4]\ntarget t : [1]\n"
                     "p = x -> dense(1)\nloss mse(p, t)\n", "d.net")
    x = np.random.default_rng(0).standard_normal((640, 4)).astype(np.float32)
    data = Dataset({"x": x, "t": x.sum(axis=1, keepdims=True)}, "sums")
    errors = []
    for xp in (np, strict_xp):
        trainer = Trainer(_lowered(net, xp),
                          resolve_settings({}, {"epochs": 1, "batch": 16, "lr": 2.0}), xp=xp)
        with pytest.raises(TrainingDiverged) as info:
            trainer.fit(data, None)
        errors.append((info.value.message, info.value.span.line))
    assert errors[0] == errors[1]
    step = int(errors[0][0].split("at step ")[1].split(":")[0])
    assert READ_EVERY < step < 2 * READ_EVERY, errors[0]


# ---- --device gpu without a usable GPU

def _without_gpu():
    try:
        import cupy

        if cupy.cuda.is_available():
            pytest.skip("a GPU is present")
    except Exception:  # noqa: BLE001  no cupy, or one that cannot start: what is tested
        pass


@pytest.mark.parametrize("command", ["run", "eval", "predict", "tui"])
def test_device_gpu_without_cupy_is_one_line_and_exit_1(command, tmp_path):
    _without_gpu()
    args = [command, os.path.join(SPECS, "mlp.net"), "--device", "gpu"]
    if command != "tui":
        args += ["--checkpoint", str(tmp_path / "run")]
    result = run_netc(*args, cwd=str(tmp_path))
    assert result.returncode == 1
    assert "--device gpu needs CuPy and an NVIDIA GPU" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _fake_cupy(monkeypatch, available=True, arange=None):
    cupy = types.ModuleType("cupy")
    cupy.float32 = np.float32
    cupy.cuda = types.SimpleNamespace(is_available=lambda: available)
    cupy.arange = arange or np.arange
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


def test_array_module_says_when_cupy_sees_no_device(monkeypatch):
    from netdsl.runtime.device import array_module

    _fake_cupy(monkeypatch, available=False)
    with pytest.raises(SpecError, match="CuPy sees no CUDA device") as info:
        array_module("gpu")
    assert "--device cpu" in info.value.message and "\n" not in info.value.message


def test_array_module_says_when_the_first_allocation_fails(monkeypatch):
    from netdsl.runtime.device import array_module

    class CUDARuntimeError(RuntimeError):
        pass

    def arange(*args, **kwargs):
        raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                               "insufficient for CUDA runtime version\nmore detail")

    _fake_cupy(monkeypatch, arange=arange)
    with pytest.raises(SpecError, match="could not use the GPU") as info:
        array_module("gpu")
    assert "CUDARuntimeError: cudaErrorInsufficientDriver" in info.value.message
    assert "\n" not in info.value.message


def test_array_module_says_when_cupy_is_missing(monkeypatch):
    from netdsl.runtime.device import array_module

    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(SpecError, match="CuPy is not installed"):
        array_module("gpu")
    cupy = _fake_cupy(monkeypatch)
    assert array_module("gpu") is cupy and array_module("cpu") is np


def test_clipping_on_a_device_scales_without_reading_the_norm_back(monkeypatch):
    from netdsl.runtime import optim

    monkeypatch.setattr(optim, "_array_module", lambda x: strict_xp)  # as for a CuPy array
    grads = np.array([3.0, 4.0])
    norm = optim.clip_grad_norm(grads, 1.0)
    assert type(norm) is not float and float(norm) == 5.0  # the module's, not read back
    np.testing.assert_allclose(grads, [0.6, 0.8], rtol=1e-6)
    small = np.array([0.3, 0.4])
    optim.clip_grad_norm(small, 1.0)
    np.testing.assert_array_equal(small, [0.3, 0.4])
