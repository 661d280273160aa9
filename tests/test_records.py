"""Run records: what `netc run` leaves in runs/NAME, `netc runs` and `netc plot`."""
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from conftest import SPECS, cli_main, run_netc, tensorboard_values

MLP = os.path.join(SPECS, "mlp.net")
STEP_KEYS = {"kind", "step", "epoch", "loss", "accuracy", "samples/s", "lr", "grad_norm"}


def metrics(folder) -> list[dict]:
    with open(os.path.join(folder, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/whole: 3 epochs at once; runs/resumed: the same run stopped at step 15, a kill's
    leftovers appended to its metrics, then resumed."""
    root = tmp_path_factory.mktemp("records")
    common = ("--examples", "600", "--batch", "32", "--quiet")
    whole, resumed = (str(root / "runs" / n) for n in ("whole", "resumed"))
    for args in ((MLP, "--epochs", "3", "--checkpoint", whole),
                 (MLP, "--epochs", "3", "--steps", "15", "--checkpoint", resumed)):
        result = cli_main("run", *args, *common)
        assert result.returncode == 0, result.stderr
    with open(os.path.join(resumed, "metrics.jsonl"), "a") as handle:
        # what a run killed after its last checkpoint leaves: a line past it, half a line
        handle.write(json.dumps({"kind": "step", "step": 16, "loss": 9.0}) + '\n{"kind": "st')
    result = cli_main("run", MLP, "--epochs", "3", "--resume", "--checkpoint", resumed, *common)
    assert result.returncode == 0, result.stderr
    return root


def test_the_record_holds_the_spec_its_hash_and_the_settings(runs):
    folder = runs / "runs" / "whole"
    text = open(MLP).read()
    assert (folder / "spec.net").read_text() == text
    run = json.loads((folder / "run.json").read_text())
    assert run["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert run["settings"]["epochs"] == 3 and run["settings"]["batch"] == 32
    assert run["settings"]["optimizer_settings"] == {"lr": 0.1, "momentum": 0.9}
    assert run["command"].startswith("netc run ") and "--epochs 3" in run["command"]
    assert (folder / "checkpoint.npz").is_file()


def test_metrics_have_a_line_per_logged_step_and_per_epoch(runs):
    lines = metrics(runs / "runs" / "whole")
    steps = [e for e in lines if e["kind"] == "step"]
    epochs = [e for e in lines if e["kind"] == "epoch"]
    # 540 training examples in batches of 32: 17 steps an epoch, a line every 10 steps
    assert [e["step"] for e in steps] == [10, 20, 30, 40, 50]
    assert [(e["epoch"], e["step"]) for e in epochs] == [(1, 17), (2, 34), (3, 51)]
    assert all(set(e) == STEP_KEYS for e in steps)
    assert all({"loss", "accuracy", "val_loss", "val_accuracy", "lr", "samples/s",
                "grad_norm"} <= set(e) for e in epochs)
    assert all(e["grad_norm"] > 0 and e["lr"] == 0.1 for e in lines)
    assert [e["step"] for e in lines] == sorted(e["step"] for e in lines)


def test_a_resumed_run_reads_as_one_that_never_stopped(runs):
    whole, resumed = metrics(runs / "runs" / "whole"), metrics(runs / "runs" / "resumed")
    assert [(e["kind"], e["step"]) for e in resumed] == [(e["kind"], e["step"]) for e in whole]
    assert 9.0 not in [e["loss"] for e in resumed]  # the kill's line past the checkpoint
    for mine, theirs in zip(resumed, whole):
        # a step's own numbers, and the validation after each epoch, are the same (the
        # means over the epoch it resumed in cover the steps since the checkpoint)
        keys = ("loss", "lr", "grad_norm") if mine["kind"] == "step" else (
            "lr", "val_loss", "val_accuracy")
        for key in keys:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), (mine, key)
    assert len(json.loads((runs / "runs" / "resumed" / "run.json").read_text())["resumed"]) == 1


def test_gradient_norm_is_the_norm_before_clipping():
    """Cross-checked against a backward pass of the executor's own (and, with clipping,
    the norm before scaling, as torch's clip_grad_norm_ returns)."""
    from netdsl.app.session import prepare
    from netdsl.driver import check_file
    from netdsl.runtime.train import Reporter

    logged = []

    class Keep(Reporter):
        def log(self, entry):
            logged.append(entry)

    session = prepare(check_file(MLP), {"epochs": 1, "steps": 1, "batch": 64})
    data = session.load_data(examples=64)
    fresh = session.trainer()
    ex, phase = fresh.executor, fresh.phases[0]
    ex.forward(next(data.batches(64, None)), True)
    ex.backward(fresh.lowered.backward(phase.losses, phase.params))
    expected = float(np.linalg.norm(ex.flat_grads.astype(np.float64)))
    for clip in (None, 1e-3):
        session.settings = dataclasses.replace(session.settings, clip=clip, shuffle=False)
        trainer = session.trainer(reporter=Keep())
        trainer.log_every = 1
        logged.clear()
        trainer.fit(data, None)
        assert logged[0]["grad_norm"] == pytest.approx(expected, rel=1e-4)


def test_runs_lists_best_metrics(runs):
    result = run_netc("runs", str(runs / "runs"), "--json")
    assert result.returncode == 0, result.stderr
    listed = {r["run"]: r for r in json.loads(result.stdout)}
    assert set(listed) == {"whole", "resumed"}
    epochs = [e for e in metrics(runs / "runs" / "whole") if e["kind"] == "epoch"]
    assert listed["whole"]["epochs"] == 3 and listed["whole"]["steps"] == 51
    assert listed["whole"]["best"]["val_loss"] == min(e["val_loss"] for e in epochs)
    assert listed["whole"]["best"]["val_accuracy"] == max(e["val_accuracy"] for e in epochs)
    table = run_netc("runs", str(runs / "runs"))  # piped: whole lines, never cut at 80
    rows = table.stdout.splitlines()
    assert rows[0].split()[:2] == ["run", "spec"] and len(rows) == 3
    assert f"{100 * listed['whole']['best']['val_accuracy']:.2f}%" in table.stdout
    assert MLP in table.stdout and "\x1b[" not in table.stdout


def test_plot_in_the_terminal_and_to_a_file(runs):
    folders = [str(runs / "runs" / n) for n in ("whole", "resumed")]
    text = run_netc("plot", *folders)
    assert text.returncode == 0, text.stderr
    assert "* whole loss  o whole val loss  + resumed loss  x resumed val loss" in text.stdout
    assert "accuracy" in text.stdout.splitlines()[text.stdout.splitlines().index(
        "* whole loss  o whole val loss  + resumed loss  x resumed val loss") + 1]
    pytest.importorskip("matplotlib")
    svg = runs / "curves.svg"
    result = run_netc("plot", *folders, "-o", str(svg))
    assert result.returncode == 0, result.stderr
    assert svg.read_text().lstrip().startswith("<?xml") and "whole val loss" in svg.read_text()
    assert oct(os.stat(svg).st_mode & 0o777) == oct(0o666 & ~_umask())


def test_plot_errors(runs, tmp_path):
    missing = run_netc("plot", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no run" in missing.stderr
    wrong = run_netc("plot", str(runs / "runs" / "whole"), "-o", str(tmp_path / "c.txt"))
    assert wrong.returncode == 2 and "name a .png, .svg or .pdf file" in wrong.stderr


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_tensorboard_event_files_hold_the_same_numbers(runs):
    pytest.importorskip("tensorboardX")
    folder = runs / "runs" / "whole"
    scalars, _ = tensorboard_values(folder)
    lines = metrics(folder)
    steps = {e["step"]: e for e in lines if e["kind"] == "step"}
    epochs = {e["step"]: e for e in lines if e["kind"] == "epoch"}
    assert sorted(scalars["train/loss"]) == sorted(steps)
    for step, entry in steps.items():
        assert scalars["train/loss"][step] == pytest.approx(entry["loss"], rel=1e-6)
        assert scalars["train/grad_norm"][step] == pytest.approx(entry["grad_norm"], rel=1e-6)
    for step, entry in epochs.items():
        assert scalars["val/accuracy"][step] == pytest.approx(entry["val_accuracy"], rel=1e-6)
        assert scalars["epoch/loss"][step] == pytest.approx(entry["loss"], rel=1e-6)


def test_resuming_an_edited_spec_says_so(tmp_path, check):
    from types import SimpleNamespace

    from netdsl.app.record import RecordingReporter
    from netdsl.runtime.train import Reporter
    from netdsl.settings import TrainSettings

    warnings = []

    class Keep(Reporter):
        def warning(self, text):
            warnings.append(text)

    text = open(MLP).read()
    folder = str(tmp_path / "run")
    for spec_text, resumed_at in ((text, None), (text.replace("0.2", "0.3"), 5)):
        trainer = SimpleNamespace(reporter=Keep(), settings=TrainSettings(),
                                  position=SimpleNamespace(iteration=0))
        RecordingReporter(trainer, folder, check(spec_text, "mlp.net"), "mlp.net",
                          resumed_at).start("data", TrainSettings(), 1, 1)
    assert warnings == [f"mlp.net has changed since this run started; {folder}/spec.net now "
                        "holds the new text"]
    assert open(os.path.join(folder, "spec.net")).read() == text.replace("0.2", "0.3")


def test_variants_of_one_network_keep_their_own_runs(tmp_path):
    """Two spec files with one network name: the second trains into runs/mlp-2 instead of
    replacing the first's run, and --resume and eval find each file's own run."""
    text = open(MLP).read()
    (tmp_path / "a.net").write_text(text)
    (tmp_path / "b.net").write_text(text.replace("dense(256) -> relu -> dense(10)",
                                                 "dense(32) -> relu -> dense(10)"))
    common = ("--examples", "200", "--batch", "50", "--quiet")
    for spec, steps in (("a.net", "2"), ("b.net", "2"), ("b.net", "3")):
        resume = ("--resume",) if steps == "3" else ()
        result = cli_main("run", spec, "--steps", steps, *resume, *common, cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        if not resume and spec == "b.net":
            assert "runs/mlp holds the run of a.net: this run is recorded in runs/mlp-2" \
                in result.stderr
    first, second = tmp_path / "runs" / "mlp", tmp_path / "runs" / "mlp-2"
    assert json.loads((first / "run.json").read_text())["spec"] == "a.net"
    assert json.loads((second / "run.json").read_text())["spec"] == "b.net"
    assert [e["step"] for e in metrics(first) if e["kind"] == "step"] == []  # 2 steps: none logged
    with np.load(second / "checkpoint.npz") as checkpoint:
        assert int(checkpoint["optimizer0/step"]) == 3  # b's run resumed in its own folder
    evaluated = cli_main("eval", "b.net", "--examples", "200", "--quiet", cwd=str(tmp_path))
    assert evaluated.returncode == 0, evaluated.stderr


def test_the_run_folder_of_a_spec(tmp_path, monkeypatch):
    from netdsl.app.record import run_folder

    monkeypatch.chdir(tmp_path)
    assert run_folder("n", "a.net", new_run=True) == os.path.join("runs", "n")
    for folder, spec in (("n", "a.net"), ("n-2", "./b.net")):
        os.makedirs(os.path.join("runs", folder))
        (tmp_path / "runs" / folder / "run.json").write_text(json.dumps({"spec": spec}))
    assert run_folder("n", "./a.net", new_run=True) == os.path.join("runs", "n")
    assert run_folder("n", "b.net", new_run=False) == os.path.join("runs", "n-2")
    assert run_folder("n", "c.net", new_run=True) == os.path.join("runs", "n-3")
    assert run_folder("n", "c.net", new_run=False) == os.path.join("runs", "n")  # none: the default
    assert run_folder("n", None, new_run=True) == os.path.join("runs", "n")
