"""One training step of every feed-forward spec against its PyTorch twin, in float64.

Each spec in specs/ (the recurrent ones aside) is compiled, planned and run by the
NumPy executor; its hand-built twin from torch_models.py gets the same weights, the
same batch and the same noise. The loss values, the gradient of every parameter and
the batchnorm running statistics must agree to float64 rounding. The ImageNet-sized
specs run as their stand-ins (shrunk_specs.py), so that the whole file stays fast; the
twin is narrowed to match.

Dropout is made deterministic on both sides rather than matched mask for mask: its p
is set to 0 in our plan and in the twin, so both are the identity (batchnorm still runs
in training mode, on batch statistics). Dropout's own masks and scaling are checked
op by op in test_op_grads.py.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import torch_models  # noqa: E402
from shrunk_specs import EDITS, FCN8S_WIDTHS, UNET_WIDTHS  # noqa: E402
from netdsl.driver import check_text  # noqa: E402
from netdsl.runtime.execute import Executor  # noqa: E402
from netdsl.runtime.init import initial_params  # noqa: E402
from netdsl.runtime.optim import make_optimizer  # noqa: E402
from netdsl.lower import Lowered, Plan, lower  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"
# specs with a time axis: tests/test_recurrent_torch.py compares them
SEQUENCE = {"elman", "lstm", "lstm_classifier", "bidirectional_rnn", "parity", "jordan", "adding",
            "gru", "char_lm", "scrn", "cbow", "seq2seq"}
NOISE_OPS = ("normal", "gaussian_noise")  # sources whose draws the twin must be given

# float64 on both sides: what is left is summation order, far below these
LOSS_RTOL = 1e-10
GRAD_RTOL = 1e-9
GRAD_ATOL = 1e-10  # times the largest |gradient| of the parameter: entries near zero


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run torch on one thread here: on these small tensors its thread pool only fights
    NumPy's BLAS threads for CI's two cores (several times slower than one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- losses as the specs define them, on the twin's outputs


def classify(model, batch, noise):
    return {"loss": F.cross_entropy(model(batch["x"]), batch["y"])}


def hinge(model, batch, noise):
    # perceptron.net: hinge(score, y, margin=0) with class 0/1 read as -1/+1
    score = model(batch["x"])[:, 0]
    sign = 2.0 * batch["y"] - 1
    return {"loss": torch.clamp(0 - score * sign, min=0).mean()}


def logistic(model, batch, noise):
    return {"loss": F.binary_cross_entropy_with_logits(model(batch["x"]), batch["y"])}


def googlenet_losses(model, batch, noise):
    logits, aux1, aux2 = model(batch["x"])
    y = batch["y"]
    return {"loss": F.cross_entropy(logits, y), "aux1": 0.3 * F.cross_entropy(aux1, y),
            "aux2": 0.3 * F.cross_entropy(aux2, y)}


def unet_loss(model, batch, noise):
    weight = torch.tensor([1.0, 5.0], dtype=torch.float64)
    return {"loss": F.cross_entropy(model(batch["x"]), batch["y"], weight=weight)}


def reconstruct(model, batch, noise):
    return {"loss": F.mse_loss(model(batch["x"]), batch["x"])}


def denoise(model, batch, noise):
    # the twin sees the corrupted image our gaussian_noise made; the target is the clean one
    (noisy,) = noise
    return {"loss": F.mse_loss(model(noisy), batch["x"])}


def vae_losses(model, batch, noise):
    # the twin's forward draws its own noise, so the loss takes ours
    (eps,) = noise
    return model.losses(batch["x"], eps)


def gan_losses(model, batch, noise):
    (z,) = noise
    fake = model.G(z)
    real_scores, fake_scores = model.D(batch["x"]), model.D(fake.detach())
    ones, zeros = torch.ones_like(real_scores), torch.zeros_like(fake_scores)
    d = (F.binary_cross_entropy_with_logits(real_scores, ones)
         + F.binary_cross_entropy_with_logits(fake_scores, zeros))
    g = F.binary_cross_entropy_with_logits(model.D(fake), torch.ones_like(real_scores))
    return {"d": d, "g": g}


# ---- the order of our parameters in the twin's registration order


def ranked(*patterns: str) -> Callable[[list[str]], list[str]]:
    """Move the keys matching each pattern, in turn, behind all the others (stable).

    Our plan lists parameters in the order the layers first run; where the twin
    registers side branches or heads elsewhere, this puts them where it has them.
    """
    def order(keys):
        def rank(key):
            return next((i + 1 for i, p in enumerate(patterns) if re.match(p, key)), 0)
        return sorted(keys, key=rank)
    return order


def block_of(key: str) -> str:
    """'stage2/basic1/conv1.weight' -> 'stage2/basic1'; '' at the top level."""
    return key.rpartition(".")[0].rpartition("/")[0]


def projections_last(keys):
    """ResNet blocks: the shortcut's projection runs among the body's layers in our
    plan, but the twin registers the body first and the shortcut after it."""
    ordered = []
    for _, group in itertools.groupby(keys, key=block_of):
        ordered += sorted(group, key=lambda key: "/project" in key)
    return ordered


def layer_number(key: str) -> int:
    """'inception3/conv4.bias' -> 4: the position of the layer in the block's source."""
    return int(re.search(r"(\d+)$", key.partition(".")[0]).group(1))


def googlenet_order(keys):
    """Auxiliary heads after the main network (aux1, then aux2), and each inception
    module's layers in source order, which is the twin's branch order (1x1, 3x3, 5x5,
    pool); our plan runs all four branches' first layers before their second ones."""
    ordered = []
    for block, group in itertools.groupby(ranked("aux_classifier1/", "aux_classifier2/")(keys),
                                          key=block_of):
        group = list(group)
        ordered += sorted(group, key=layer_number) if block.startswith("inception") else group
    return ordered


# ---- the twins, adjusted to the shrunk variants


def narrowed(model: nn.Module, widths: dict[int, int]) -> nn.Module:
    """Rebuild every linear, convolution and batchnorm layer with each feature or channel
    count n replaced by widths.get(n, n): the twin of a spec whose widths were edited."""
    def w(n):
        return widths.get(n, n)

    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            new = nn.Linear(w(module.in_features), w(module.out_features),
                            bias=module.bias is not None)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            new = type(module)(w(module.in_channels), w(module.out_channels), module.kernel_size,
                               stride=module.stride, padding=module.padding,
                               bias=module.bias is not None)
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(w(module.num_features))
        else:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)  # keeps the registration order
    return model


def googlenet_twin():
    # at 96x96 the auxiliary heads pool 4a and 4d (6x6) to 1x1, not 4x4; the final 7x7
    # average pool of the paper is global at 224x224 and stays global here
    model = narrowed(torch_models.googlenet(), {128 * 4 * 4: 128 * 1 * 1})
    model.head[0] = nn.AdaptiveAvgPool2d(1)
    return model




@dataclass(frozen=True)
class Variant:
    """How a spec is compared: its losses on the twin, and what makes it small.

    `edits` are (old, new) replacements in the spec text; `twin` builds the matching
    torch model; `order` puts our parameter keys in the twin's registration order;
    `groups` are the sets of losses differentiated together (None: all, summed).
    """

    losses: Callable
    twin: Callable[[], nn.Module]
    edits: tuple[tuple[str, str], ...] = ()
    order: Callable[[list[str]], list[str]] | None = None
    groups: tuple = (None,)
    batch: int = 2


MODELS = torch_models.MODELS


VARIANTS = {
    "perceptron": Variant(hinge, MODELS["perceptron"], batch=4),
    "logistic_regression": Variant(logistic, MODELS["logistic_regression"], batch=4),
    "mlp": Variant(classify, MODELS["mlp"], batch=4),
    "lenet5": Variant(classify, MODELS["lenet5"]),
    "alexnet": Variant(
        classify, lambda: narrowed(torch_models.alexnet(), {256 * 6 * 6: 256 * 2 * 2, 4096: 256}),
        edits=EDITS["alexnet"]),
    "vgg16": Variant(
        classify, lambda: narrowed(torch_models.vgg16(), {512 * 7 * 7: 512, 4096: 256}),
        edits=EDITS["vgg16"]),
    "nin": Variant(classify, MODELS["nin"]),
    # no batchnorm, so one example is enough
    "googlenet": Variant(googlenet_losses, googlenet_twin, edits=EDITS["googlenet"],
                         order=googlenet_order, batch=1),
    "resnet18": Variant(classify, MODELS["resnet18"], edits=EDITS["resnet18"],
                        order=projections_last),
    "resnet34": Variant(classify, MODELS["resnet34"], edits=EDITS["resnet34"],
                        order=projections_last),
    "resnet50": Variant(classify, MODELS["resnet50"], edits=EDITS["resnet50"],
                        order=projections_last),
    "resnet20": Variant(classify, MODELS["resnet20"], order=projections_last),
    "densenet121": Variant(classify, MODELS["densenet121"], edits=EDITS["densenet121"]),
    "fcn8s": Variant(
        classify, lambda: narrowed(torch_models.fcn8s(), FCN8S_WIDTHS),
        edits=EDITS["fcn8s"],
        order=ranked("score_pool4", "score_pool3", r"up\d")),
    "unet": Variant(
        unet_loss, lambda: narrowed(torch_models.unet(), UNET_WIDTHS), edits=EDITS["unet"],
        order=ranked(r"up\d/u\.", r"up\d/double_conv", "logits"), batch=1),
    "autoencoder": Variant(reconstruct, MODELS["autoencoder"]),
    "conv_autoencoder": Variant(denoise, MODELS["conv_autoencoder"]),
    "vae": Variant(vae_losses, MODELS["vae"]),
    # each loss on its own: d must not reach G (stop_gradient), g reaches both
    "gan": Variant(gan_losses, MODELS["gan"], order=ranked("D/"), groups=(("d",), ("g",))),
    "skipgram": Variant(classify, MODELS["skipgram"], batch=4,
                        edits=(("word", "x"), ("context", "y"), ("2000", "50"))),
}
FEED_FORWARD = sorted(VARIANTS)


# ---- helpers


def spec_lowered(name: str, edits=(), target: str = "host") -> Lowered:
    """specs/NAME.net after `edits`, with every dropout's p set to 0, lowered for `target`;
    the draws of noise sources are outputs, which a twin is given."""
    text = (SPECS / f"{name}.net").read_text()
    for old, new in edits:
        assert old in text, f"{name}.net no longer contains {old!r}"
        text = text.replace(old, new)
    net = check_text(text, f"{name}.net")
    noise = []
    for node, op in net.graph.nodes(data="op"):
        if op is not None and op.name == "dropout":
            op.p = 0.0  # this network's own op instance: the identity, as in the twin
        elif op is not None and op.name in NOISE_OPS:
            noise.append(node)
    return lower(net, target, outputs=noise)


def twin(build: Callable[[], nn.Module]) -> nn.Module:
    """The torch model `build` makes, in float64, training mode and without dropout.

    It is built without initialising its weights (they are copied from ours), and its
    batchnorm statistics start as torch's do, at zeros and ones.
    """
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device="cpu").double().train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
    return model


def jitter_constants(ex: Executor, rng) -> None:
    """Perturb parameters that start constant (batchnorm's scale 1 and shift 0), so that
    a missing scale or a scale and shift mixed up cannot hide behind ones and zeros."""
    for value in ex.params.values():
        if value.size > 1 and np.all(value == value.flat[0]):
            value += 0.1 * rng.standard_normal(value.shape)


def paired(plan: Plan, model: nn.Module, order=None) -> list[tuple[str, str]]:
    """(our key, twin's parameter name) for every parameter, checked shape by shape."""
    keys = list(plan.params)
    keys = order(keys) if order else keys
    theirs = list(model.named_parameters())
    assert sorted(keys) == sorted(plan.params), "the order must be a permutation"
    assert len(keys) == len(theirs), f"{len(keys)} parameters here, {len(theirs)} in the twin"
    for key, (name, param) in zip(keys, theirs):
        assert plan.params[key].shape == tuple(param.shape), (
            f"{key} {plan.params[key].shape} is paired with {name} {tuple(param.shape)}")
    return [(key, name) for key, (name, _) in zip(keys, theirs)]


def random_batch(plan: Plan, size: int, rng) -> dict[str, np.ndarray]:
    """Inputs and targets for every value the plan reads: labels for class targets,
    values in [0, 1) otherwise (reconstruction and sigmoid targets need them there)."""
    batch = {}
    for name, t in plan.inputs.items():
        shape = (size, *t.dims)
        if t.classes is not None:
            batch[name] = rng.integers(0, t.classes, shape)
        else:
            batch[name] = rng.random(shape)
    return batch


def assert_grad_close(ours, theirs, what: str) -> None:
    """Equal to float64 rounding; the absolute slack scales with the largest entry, for
    entries that are small because large contributions cancel."""
    scale = float(np.abs(theirs).max()) if theirs.size else 0.0
    np.testing.assert_allclose(ours, theirs, rtol=GRAD_RTOL, atol=GRAD_ATOL * scale or 1e-300,
                               err_msg=what)


def running_stats(plan: Plan, ex: Executor, model: nn.Module, pairs) -> list[tuple]:
    """(our node, its buffers, the twin's batchnorm) for every node with running statistics.

    A batchnorm's twin is the module of its scale; a projection's, that of its bn_weight.
    """
    twin_of = dict(pairs)
    found = []
    for node, buffers in ex.buffers.items():
        if not buffers:
            continue
        key = f"{node}.bn_weight" if f"{node}.bn_weight" in plan.params else f"{node}.weight"
        module = model.get_submodule(twin_of[key].rpartition(".")[0])
        assert isinstance(module, nn.BatchNorm2d), f"{node} is paired with {module}"
        found.append((node, buffers, module))
    assert len(found) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return found


# ---- the tests


def test_every_feed_forward_spec_is_compared():
    names = {p.stem for p in SPECS.glob("*.net")}
    assert set(FEED_FORWARD) == names - SEQUENCE


@pytest.mark.parametrize("name", FEED_FORWARD)
def test_step_matches_torch(name):
    """Loss values, every parameter's gradient and the running statistics after one
    training step equal those of the twin with the same weights, batch and noise."""
    variant = VARIANTS[name]
    rng = np.random.default_rng(0)
    lowered = spec_lowered(name, variant.edits)
    plan = lowered.plan
    ex = Executor(lowered, initial_params(lowered.built, "torch", seed=0), seed=0,
                  dtype="float64")
    jitter_constants(ex, rng)
    model = twin(variant.twin)
    pairs = paired(plan, model, variant.order)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, twin_name in pairs:
            params[twin_name].copy_(torch.from_numpy(ex.params[key]))
    batch = random_batch(plan, variant.batch, rng)
    torch_batch = {k: torch.from_numpy(v) for k, v in batch.items()}
    noise_nodes = [s.node for s in plan.steps if s.op.name in NOISE_OPS]

    compared = set()
    for index, group in enumerate(variant.groups):
        out = ex.forward(batch, training=True, keep=noise_nodes)
        noise = [torch.from_numpy(np.array(out[node])) for node in noise_nodes]  # copies
        model.zero_grad(set_to_none=True)
        theirs = variant.losses(model, torch_batch, noise)
        assert set(theirs) == set(plan.losses)
        for loss, node in plan.losses.items():
            np.testing.assert_allclose(float(out[node]), theirs[loss].item(), rtol=LOSS_RTOL,
                                       err_msg=f"{name}: loss {loss}")
        if index == 0:  # one forward so far on both sides
            for node, buffers, bn in running_stats(plan, ex, model, pairs):
                for stat in ("running_mean", "running_var"):
                    np.testing.assert_allclose(buffers[stat], getattr(bn, stat).numpy(),
                                               rtol=1e-9, atol=1e-12,
                                               err_msg=f"{name}: {node} {stat}")

        backward = lowered.backward(group)
        ex.backward(backward)
        sum(theirs[loss] for loss in backward.losses).backward()
        trained = set(backward.params)
        for key, twin_name in pairs:
            grad = params[twin_name].grad
            if key in trained:
                assert grad is not None, f"{name}: {twin_name} gets no gradient in torch"
                assert_grad_close(ex.grads[key], grad.numpy(),
                                  f"{name} {backward.losses}: {key} (torch {twin_name})")
            else:  # e.g. G under gan's loss d: stop_gradient must cut it off
                assert grad is None or not grad.any(), f"{name}: torch trains {twin_name}"
        compared |= trained
    assert compared == set(plan.params), f"never compared: {set(plan.params) - compared}"


def test_mlp_training_matches_torch():
    """Ten SGD steps with momentum on mlp.net give the loss curve and weights torch gives."""
    lr, momentum, steps, size = 0.01, 0.9, 10, 16
    lowered = spec_lowered("mlp")
    plan = lowered.plan
    ex = Executor(lowered, initial_params(lowered.built, "torch", seed=0), seed=0,
                  dtype="float64")
    model = twin(torch_models.mlp)
    pairs = paired(plan, model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, twin_name in pairs:
            params[twin_name].copy_(torch.from_numpy(ex.params[key]))
    opt = make_optimizer("sgd", {"lr": lr, "momentum": momentum}, ex.flat_params)
    torch_opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    rng = np.random.default_rng(1)
    ours, theirs = [], []
    for _ in range(steps):
        batch = random_batch(plan, size, rng)
        out = ex.forward(batch, training=True)
        ours.append(float(out[plan.losses["loss"]]))
        ex.backward()
        opt.step(ex.flat_grads, lr)

        torch_opt.zero_grad()
        loss = F.cross_entropy(model(torch.from_numpy(batch["x"])), torch.from_numpy(batch["y"]))
        loss.backward()
        torch_opt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)
    assert ours[-1] < ours[0]  # it did learn something
    for key, twin_name in pairs:
        np.testing.assert_allclose(ex.params[key], params[twin_name].detach().numpy(),
                                   rtol=1e-8, atol=1e-12, err_msg=key)
