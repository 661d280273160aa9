"""The compiled plan and its executor: autodiff, fusion, memory plan, training, checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, SPECS, cli_main
from netdsl.driver import check_file, check_text
from netdsl.lower import lower
from netdsl.lower.printers import host_chains
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params
from netdsl.runtime.interpret import interpret
from netdsl.settings import resolve_settings
from netdsl.runtime.train import Trainer, TrainingDiverged, phases

SMALL_SPECS = ["perceptron", "logistic_regression", "mlp", "autoencoder", "conv_autoencoder",
               "vae", "gan", "lenet5", "resnet20", "nin"]

# forks and joins, a shared layer used twice, batchnorm, pooling whose argmax an
# unpooling borrows, concat and split: every way gradients meet in a graph
KNOTTY = """
network knotty
input  x : [2, 8, 8]
target y : class(3)
share D = dense(6)
a = x -> conv(4, 3, pad=1) -> batchnorm -> relu
p = a -> maxpool(2)
u = maxunpool(p -> scale(2.0), p, 2)
s = concat(a, u) -> conv(4, 1) -> tanh
l, r = split(s, 2)
h = (l * r + l) -> flatten -> dense(6) -> D -> sigmoid
logits = (h -> D) + (x -> flatten -> dense(6)) -> dense(3)
loss cross_entropy(logits, y)
"""


def batch_for(plan, size=4, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    batch = {}
    for name, t in plan.inputs.items():
        if t.classes is not None:
            batch[name] = rng.integers(0, t.classes, (size, *t.dims))
        else:
            batch[name] = rng.standard_normal((size, *t.dims)).astype(dtype)
    return batch


def small(name, **options):
    return lower(check_file(os.path.join(SPECS, f"{name}.net")), **options)


class TestAgainstTheInterpreter:
    """The executor (flat parameters, freed values, in-place chains) matches the oracle."""

    @pytest.mark.parametrize("name", SMALL_SPECS)
    def test_same_losses_and_gradients(self, name):
        lowered = small(name)
        plan = lowered.built
        params = initial_params(plan, "auto", 0)
        batch = batch_for(plan, dtype="float32")
        ex = Executor(lowered, params, seed=3)
        out = ex.forward(batch, True)
        ex.backward()
        values, grads = interpret(plan, params, batch, rng=np.random.default_rng(3))
        for node in plan.losses.values():
            assert float(out[node]) == pytest.approx(float(values[node]), rel=1e-6)
        assert set(grads) == set(lowered.backward().params)
        for key, grad in grads.items():
            np.testing.assert_allclose(ex.grads[key], grad, rtol=1e-5, atol=1e-6, err_msg=key)


class TestFiniteDifferences:
    def test_every_parameter_of_a_knotty_graph(self):
        lowered = lower(check_text(KNOTTY))
        plan = lowered.plan
        params = {k: v.astype(np.float64) for k, v in initial_params(plan, "auto", 1).items()}
        batch = batch_for(plan, size=3, seed=2)
        ex = Executor(lowered, params, seed=0, dtype="float64")

        def loss():
            return float(ex.forward(batch, True)[plan.losses["loss"]])

        loss()
        ex.backward()
        rng = np.random.default_rng(5)
        for key in plan.params:
            view = ex.params[key].reshape(-1)
            for index in rng.choice(view.size, size=min(3, view.size), replace=False):
                saved = view[index]
                view[index] = saved + 1e-6
                up = loss()
                view[index] = saved - 1e-6
                down = loss()
                view[index] = saved
                numeric = (up - down) / 2e-6
                analytic = ex.grads[key].reshape(-1)[index]
                assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), key

    def test_the_shared_layer_sums_both_uses(self):
        plan = lower(check_text(KNOTTY)).plan
        shared = [k for k in plan.params if k.startswith("D.")]
        assert shared == ["D.weight", "D.bias"]
        users = [s.node for s in plan.steps if s.params.get("weight") == "D.weight"]
        assert len(users) == 2


class TestPlan:
    def test_stop_gradient_cuts_the_generator_from_the_discriminator_loss(self):
        lowered = small("gan")
        d_params = set(lowered.backward(("d",)).params)
        g_params = set(lowered.backward(("g",)).params)
        assert d_params < g_params
        assert all(k.startswith("D/") for k in d_params)

    def test_gan_phases(self):
        lowered = small("gan")
        settings = resolve_settings(lowered.graph.graph["train"], {"gan_k": 2})
        disc, gen = phases(lowered, settings)
        assert (disc.losses, disc.repeat, gen.losses, gen.repeat) == (("d",), 2, ("g",), 1)
        assert set(disc.params).isdisjoint(gen.params)
        assert all(k.startswith("G/") for k in gen.params)

    def test_fusion_chains_follow_their_producer(self):
        plan = small("resnet20").plan
        chains = [nodes for nodes in host_chains(plan) if len(nodes) > 1]
        assert ["stage1/basic1/y", "stage1/basic1/add1", "stage1/basic1/relu2"] in chains
        # relu keeps its output for backward, so nothing may run over it in place
        for nodes in chains:
            assert all(plan.step_of(n).op.inplace for n in nodes[1:])
        covered = [n for nodes in host_chains(plan) for n in nodes]
        assert covered == [s.node for s in plan.steps]

    def test_memory_plan_shares_buffers(self):
        lowered = small("resnet20")
        plan = lowered.plan
        memory = lowered.memory.at(32, optimizer_slots=1)
        assert memory.slot_bytes < memory.unshared_bytes
        assert memory.activation_peak <= memory.slot_bytes
        biggest = max(b.bytes for b in memory.buffers)
        assert memory.activation_peak >= biggest
        assert memory.param_bytes == sum(p.size for p in plan.params.values()) * 4


def trainer_for(name, **overrides):
    from netdsl.runtime.data import load_data

    net = check_file(os.path.join(SPECS, f"{name}.net"))
    settings = resolve_settings(net.graph.graph["train"], overrides)
    data = load_data(net.graph, None, settings.seed)
    train, val = data.split(settings.val, settings.seed)
    return Trainer(lower(net), settings), train, val


class TestTraining:
    def test_mlp_learns_the_digits(self):
        trainer, train, val = trainer_for("mlp", epochs=5)
        history = trainer.fit(train, val)
        assert history[-1]["val_accuracy"] > 0.93
        assert history[-1]["loss"] < history[0]["loss"]

    def test_same_seed_same_numbers(self):
        runs = []
        for _ in range(2):
            trainer, train, val = trainer_for("mlp", epochs=1, steps=8)
            trainer.fit(train, val)
            runs.append(trainer.position.losses)
        assert runs[0] == runs[1]
        trainer, train, val = trainer_for("mlp", epochs=1, steps=8, seed=1)
        trainer.fit(train, val)
        assert trainer.position.losses != runs[0]

    def test_gan_trains_both_players(self):
        trainer, train, _ = trainer_for("gan", epochs=1, steps=3, gan_k=2)
        before = trainer.executor.flat_params.copy()
        trainer.fit(train, None)
        moved = {key for key, (a, b) in trainer.executor.offsets.items()
                 if not np.array_equal(before[a:b], trainer.executor.flat_params[a:b])}
        assert any(k.startswith("G/") for k in moved) and any(k.startswith("D/") for k in moved)

    def test_a_nan_names_the_node_and_its_line(self):
        text = ("network n\ninput x : [4]\ntarget y : class(2)\n"
                "h = x -> dense(4) -> log\nloss cross_entropy(h -> dense(2), y)\n")
        net = check_text(text, "n.net")
        from netdsl.runtime.data import Dataset

        rng = np.random.default_rng(0)
        data = Dataset({"x": rng.standard_normal((64, 4)).astype(np.float32),
                        "y": rng.integers(0, 2, 64)}, "test data")
        trainer = Trainer(lower(net), resolve_settings({}, {"epochs": 1}))
        with pytest.raises(TrainingDiverged) as info:
            trainer.fit(data, None)
        assert "'h' (log)" in info.value.message and info.value.span.line == 4


class TestCheckpoints:
    def test_kill_9_mid_epoch_then_resume_gives_the_same_losses(self, tmp_path):
        spec = os.path.join(SPECS, "mlp.net")
        flags = ["--epochs", "3", "--checkpoint-every", "0", "--quiet", "--seed", "4"]
        # the kill needs a real process; the runs it is compared with are called here
        whole = tmp_path / "whole"
        assert cli_main("run", spec, "--checkpoint", str(whole), *flags).returncode == 0
        killed = tmp_path / "killed"
        code = "import sys; from netdsl.cli import main; sys.exit(main(sys.argv[1:]))"
        proc = subprocess.Popen([sys.executable, "-c", code, "run", spec, "--checkpoint",
                                 str(killed), *flags], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            position = _position(killed)
            if position and position["epoch"] == 1 and position["batch"] >= 3:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stopped = _position(killed)
        assert stopped["epoch"] < 3, "the run finished before it could be killed"
        result = cli_main("run", spec, "--checkpoint", str(killed), *flags, "--resume")
        assert result.returncode == 0, result.stderr
        assert "resuming" in result.stderr
        assert _position(killed)["losses"] == _position(whole)["losses"]
        assert _position(killed)["history"][-1]["val_loss"] == \
            pytest.approx(_position(whole)["history"][-1]["val_loss"], rel=1e-6)

    def test_resume_of_another_network_is_refused(self, tmp_path):
        folder = str(tmp_path / "run")
        cli_main("run", os.path.join(SPECS, "mlp.net"), "--checkpoint", folder, "--steps", "1")
        result = cli_main("run", os.path.join(SPECS, "perceptron.net"), "--checkpoint", folder,
                          "--resume")
        assert result.returncode == 1
        assert "different network" in result.stderr and "Traceback" not in result.stderr


def _position(folder):
    from netdsl.runtime.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(str(folder))[1]["position"]
    except (CheckpointError, json.JSONDecodeError):
        return None


class TestCommandLine:
    def test_run_eval_predict(self, tmp_path):
        folder = str(tmp_path / "mlp")
        spec = os.path.join(SPECS, "mlp.net")
        result = cli_main("run", spec, "--checkpoint", folder, "--epochs", "2")
        assert result.returncode == 0, result.stderr
        assert "scikit-learn digits" in result.stderr and "val_accuracy" in result.stdout
        result = cli_main("eval", spec, "--checkpoint", folder)
        assert result.returncode == 0 and "accuracy" in result.stdout
        out = str(tmp_path / "pred.npz")
        result = cli_main("predict", spec, "--checkpoint", folder, "-o", out)
        assert result.returncode == 0, result.stderr
        with np.load(out) as saved:
            assert saved["logits"].shape == (1797, 10)
            assert saved["logits_class"].shape == (1797,)

    @pytest.mark.parametrize("flags, message, code", [
        (["--data", "missing.npz"], "missing.npz", 1),
        (["--device", "gpu"], "--device gpu needs CuPy", 1),
        (["--resume", "--checkpoint", "nowhere"], "no checkpoint to resume from", 1),
        (["--lr", "-1"], "expected a positive number", 2),   # usage errors: exit 2
        (["--epochs", "0"], "at least 1", 2),
    ])
    def test_bad_input_is_one_clear_line(self, flags, message, code, tmp_path):
        if flags[:2] == ["--device", "gpu"]:
            try:
                import cupy
                if cupy.cuda.is_available():
                    pytest.skip("a GPU is present")
            except Exception:
                pass
        result = cli_main("run", os.path.join(SPECS, "mlp.net"), *flags, cwd=str(tmp_path))
        assert result.returncode == code
        assert message in result.stderr and "Traceback" not in result.stderr

    def test_eval_before_training_says_what_to_do(self, tmp_path):
        result = cli_main("eval", os.path.join(SPECS, "mlp.net"), cwd=str(tmp_path))
        assert result.returncode == 1 and "netc run" in result.stderr
