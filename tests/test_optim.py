"""Optimisers, schedules, penalties and clipping against torch.optim and hand formulas."""
import copy
import re

import numpy as np
import pytest
import torch

from netdsl.optimizers import OPTIMIZERS
from netdsl.runtime.optim import clip_grad_norm, make_optimizer, penalize
from netdsl.schedules import SCHEDULES, make_schedule
from netdsl.train_clause import CALLS
from netdsl.train_clause import OPTIMIZERS as CLAUSE_OPTIMIZERS

N = 257  # odd, so nothing lines up with a vector width by chance

# (optimiser, settings, torch class, the same settings in torch's names)
CASES = [
    ("sgd", {"lr": 0.1}, torch.optim.SGD, {}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}, torch.optim.SGD, {"momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
     torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    ("sgd", {"lr": 0.1, "weight_decay": 1e-3}, torch.optim.SGD, {"weight_decay": 1e-3}),
    ("adagrad", {"lr": 0.1}, torch.optim.Adagrad, {}),
    ("adagrad", {"lr": 0.1, "eps": 1e-6, "weight_decay": 1e-2}, torch.optim.Adagrad,
     {"eps": 1e-6, "weight_decay": 1e-2}),
    ("rmsprop", {"lr": 0.01}, torch.optim.RMSprop, {}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.8, "weight_decay": 1e-2},
     torch.optim.RMSprop, {"alpha": 0.9, "momentum": 0.8, "weight_decay": 1e-2}),
    ("adam", {"lr": 0.01}, torch.optim.Adam, {}),
    ("adam", {"lr": 0.01, "beta1": 0.5, "beta2": 0.9, "eps": 1e-6, "weight_decay": 1e-2},
     torch.optim.Adam, {"betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 1e-2}),
    ("adam", {"lr": 0.01, "beta1": 0.0}, torch.optim.Adam, {"betas": (0.0, 0.999)}),
]
IDS = [f"{name}-{'-'.join(settings)}" for name, settings, _, _ in CASES]


def _grads(steps, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal((steps, N)).astype(dtype)


def _torch_run(cls, torch_settings, x0, grads, lrs):
    p = torch.tensor(x0.copy(), requires_grad=True)
    opt = cls([p], lr=lrs[0], **torch_settings)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g.copy())
        opt.step()
    return p.detach().numpy()


def _run(opt, grads, lrs):
    for g, lr in zip(grads, lrs):
        opt.step(g.copy(), lr)


@pytest.mark.parametrize("name,settings,cls,torch_settings", CASES, ids=IDS)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_matches_torch(name, settings, cls, torch_settings, dtype, rtol):
    x0 = np.random.default_rng(0).standard_normal(N).astype(dtype)
    grads = _grads(20, dtype)
    lrs = [settings["lr"] * (1 - i / 40) for i in range(20)]  # as a schedule would vary it
    params = x0.copy()
    _run(make_optimizer(name, settings, params), grads, lrs)
    expected = _torch_run(cls, torch_settings, x0, grads, lrs)
    np.testing.assert_allclose(params, expected, rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("name,settings", [(c[0], c[1]) for c in CASES], ids=IDS)
def test_state_dict_round_trip(name, settings):
    grads, lrs = _grads(15, np.float64), [settings["lr"]] * 15
    params = np.random.default_rng(0).standard_normal(N)
    opt = make_optimizer(name, settings, params)
    _run(opt, grads[:5], lrs[:5])
    saved_params, saved_state = params.copy(), copy.deepcopy(opt.state_dict())
    _run(opt, grads[5:10], lrs[5:10])  # moves on, so the saved state must not alias it
    _run(opt, grads[10:], lrs[10:])

    restored = saved_params.copy()
    fresh = make_optimizer(name, settings, restored)
    fresh.load_state_dict(saved_state)
    _run(fresh, grads[5:], lrs[5:])
    np.testing.assert_array_equal(restored, params)


def test_step_updates_in_place_and_scratches_grads():
    params = np.ones(N, np.float32)
    opt = make_optimizer("adam", {"lr": 0.1}, params)
    grads = np.full(N, 2.0, np.float32)
    opt.step(grads, 0.1)
    np.testing.assert_allclose(params, 0.9, rtol=1e-6)  # Adam's first step is lr * sign(g)
    assert opt.params is params and opt.state_dict()["step"] == 1
    assert opt.slots == 3  # two moments and one scratch vector


def test_settings_match_the_train_clause():
    assert {name: set(cls.defaults) for name, cls in OPTIMIZERS.items()} == CLAUSE_OPTIMIZERS
    for name in ("step", "linear", "to_zero", "plateau"):
        make_schedule((name, {}), 0.1, 10, 5)  # every default is valid
        assert set(SCHEDULES[name].keywords) == CALLS[name]


@pytest.mark.parametrize("name,settings,message", [
    ("sgd", {"lr": -0.1}, "sgd: lr must be >= 0, got -0.1"),
    ("sgd", {"lr": 0.1, "nesterov": True}, "nesterov=true needs momentum > 0"),
    ("sgd", {"lr": 0.1, "nesterov": "yes"}, "nesterov must be true or false"),
    ("sgd", {"lr": 0.1, "beta1": 0.9}, "sgd has no setting 'beta1'"),
    ("adam", {"beta1": 1.0}, "adam: beta1 must be in [0, 1), got 1.0"),
    ("adam", {"beta2": -0.5}, "adam: beta2 must be in [0, 1)"),
    ("adam", {"eps": float("nan")}, "adam: eps must be >= 0"),
    ("rmsprop", {"alpha": 1.5}, "rmsprop: alpha must be in [0, 1)"),
    ("adagrad", {"lr": "fast"}, "adagrad: lr must be >= 0, got 'fast'"),
    ("lbfgs", {}, "unknown optimizer 'lbfgs'; known: sgd, adagrad, rmsprop, adam"),
])
def test_bad_settings(name, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_optimizer(name, settings, np.zeros(N))


def test_bad_arguments():
    with pytest.raises(ValueError, match="one flat float vector"):
        make_optimizer("sgd", {}, np.zeros((2, 3)))
    opt = make_optimizer("sgd", {}, np.zeros(N))
    with pytest.raises(ValueError, match="grads have shape"):
        opt.step(np.zeros(N + 1), 0.1)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.step(np.zeros(N), -1.0)
    with pytest.raises(ValueError, match="state has keys"):
        make_optimizer("adam", {}, np.zeros(N)).load_state_dict({"step": 3})


# --- penalties and clipping ---

def test_penalize():
    rng = np.random.default_rng(2)
    params, grads = rng.standard_normal(N), rng.standard_normal(N)
    params[:3] = 0.0  # sign(0) = 0: no L1 push at zero
    expected = grads + 0.01 * np.sign(params) + 0.1 * params
    penalize(params, grads, l1=0.01, l2=0.1)
    np.testing.assert_allclose(grads, expected, rtol=1e-15)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        penalize(params, grads, 0.0, -1.0)


def test_l2_equals_weight_decay():
    params, grads = np.linspace(-1, 1, N), np.linspace(1, 2, N)
    penalized = grads.copy()
    penalize(params, penalized, 0.0, 1e-2)
    a, b = params.copy(), params.copy()
    make_optimizer("sgd", {"lr": 0.1}, a).step(penalized, 0.1)
    make_optimizer("sgd", {"lr": 0.1, "weight_decay": 1e-2}, b).step(grads.copy(), 0.1)
    np.testing.assert_allclose(a, b, rtol=1e-15)


@pytest.mark.parametrize("max_norm", [0.5, 5.0, 1e6])
def test_clip_grad_norm(max_norm):
    grads = np.random.default_rng(3).standard_normal(N)
    t = torch.tensor(grads.copy(), requires_grad=True)
    t.grad = torch.tensor(grads.copy())
    expected_norm = torch.nn.utils.clip_grad_norm_([t], max_norm).item()
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(expected_norm, rel=1e-12)
    np.testing.assert_allclose(grads, t.grad.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm(grads, 0)


# --- schedules ---

def _torch_lrs(make, epochs, losses=None):
    """The learning rate torch uses in each epoch, stepping the scheduler per epoch."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler, lrs = make(opt), []
    for epoch in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # nothing to update; keeps torch's call-order check quiet
        scheduler.step(*([] if losses is None else [losses[epoch]]))
    return lrs


def test_constant():
    schedule = make_schedule(None, 0.1, 10, 5)
    assert [schedule.lr(e, 5 * e) for e in range(10)] == [0.1] * 10


def test_step_matches_step_lr():
    schedule = make_schedule(("step", {"every": 3, "gamma": 0.5}), 0.1, 20, 7)
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5), 20)
    np.testing.assert_allclose([schedule.lr(e, 7 * e + 3) for e in range(20)], expected,
                               rtol=1e-12)
    assert make_schedule(("step", {}), 1.0, 100, 1).lr(30, 30) == pytest.approx(0.1)


LOSSES = [5.0, 4.0, 4.0, 3.9999, 4.1, 3.99, 3.0, 3.0, 3.0, 3.0, 3.0, 2.9999, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("patience", [0, 1, 2])
def test_plateau_matches_reduce_lr_on_plateau(patience):
    schedule = make_schedule(("plateau", {"factor": 0.5, "patience": patience}), 0.1, 16, 4)
    lrs = []
    for epoch, loss in enumerate(LOSSES):
        lrs.append(schedule.lr(epoch, 4 * epoch))
        schedule.end_epoch(loss)
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, factor=0.5, patience=patience), len(LOSSES), LOSSES)
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert min(lrs) < 0.1


def test_plateau_state_and_missing_loss():
    schedule = make_schedule(("plateau", {"patience": 1}), 0.1, 10, 1)
    for loss in (1.0, 2.0):
        schedule.end_epoch(loss)
    saved = schedule.state_dict()
    assert saved == {"best": 1.0, "bad_epochs": 1, "scale": 1.0}
    for _ in range(5):
        schedule.end_epoch(None)  # no validation set: nothing changes
    assert schedule.state_dict() == saved
    schedule.end_epoch(2.0)
    assert schedule.lr(3, 3) == pytest.approx(0.05)

    fresh = make_schedule(("plateau", {"patience": 1}), 0.1, 10, 1)
    fresh.load_state_dict(saved)
    fresh.end_epoch(2.0)
    assert fresh.state_dict() == schedule.state_dict()


def test_linear():
    base, to, steps = 0.1, 0.002, 4
    schedule = make_schedule(("linear", {"to": to, "epochs": 5}), base, 10, steps)
    tau = 5 * steps
    for k in range(10 * steps):
        expected = (1 - k / tau) * base + k / tau * to if k < tau else to
        assert schedule.lr(k // steps, k) == pytest.approx(expected, rel=1e-12)
    default = make_schedule(("linear", {}), base, 10, steps)
    assert default.lr(0, 0) == base
    assert default.lr(9, 10 * steps - 1) > base / 100 and default.lr(10, 10 * steps) == base / 100


def test_to_zero():
    schedule = make_schedule(("to_zero", {}), 0.1, 3, 5)
    lrs = [schedule.lr(k // 5, k) for k in range(15)]
    np.testing.assert_allclose(lrs, [0.1 * (1 - k / 15) for k in range(15)], rtol=1e-12)
    assert lrs[-1] == pytest.approx(0.1 / 15) and schedule.lr(3, 15) == 0.0


@pytest.mark.parametrize("spec,message", [
    (("step", {"every": 0}), "step: every must be a whole number >= 1, got 0"),
    (("step", {"every": 2.5}), "step: every must be a whole number"),
    (("step", {"gamma": -1}), "step: gamma must be > 0"),
    (("linear", {"to": -0.1}), "linear: to must be >= 0"),
    (("linear", {"epochs": 0}), "linear: epochs must be a whole number >= 1"),
    (("plateau", {"factor": 1.5}), r"plateau: factor must be in \(0, 1\)"),
    (("plateau", {"patience": -1}), "plateau: patience must be a whole number >= 0"),
    (("plateau", {"cooldown": 1}), "schedule plateau has no setting 'cooldown'"),
    (("to_zero", {"to": 0}), "schedule to_zero has no setting 'to'; accepted: none"),
    (("cosine", {}), "unknown schedule 'cosine'"),
])
def test_bad_schedules(spec, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(spec, 0.1, 10, 5)
    with pytest.raises(ValueError, match="schedule: base_lr must be >= 0"):
        make_schedule(None, -0.1, 10, 5)
