"""Per-node diagnostics: the numbers runtime.diagnostics records against NumPy and
PyTorch on the same weights, `netc run --diagnose`'s record and warnings, and
`netc diagnose`."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import SPECS, cli_main, run_netc, tensorboard_values
from netdsl.app.diagnostics import METRICS, node_metric
from netdsl.app.session import prepare
from netdsl.cli import main
from netdsl.driver import check_text
from netdsl.runtime.checkpoint import load_checkpoint
from netdsl.runtime.data import Dataset
from netdsl.runtime.diagnostics import SATURATION_MARGIN, Probe

MLP = os.path.join(SPECS, "mlp.net")

FEED_FORWARD = """network probe
input  x : [6]
target y : class(3)
h = x -> dense(8) -> relu -> dense(5) -> tanh -> dense(3)
loss cross_entropy(h, y)
train sgd(lr=0.5), batch=16, epochs=1
"""

RECURRENT = """network rec
input  x : seq[4]
target y : seq class(3)
state  h : [6] = zeros
h = relu(dense(x, 6) + dense(h[t-1], 6, bias=false))
logits = h -> dense(3)
loss cross_entropy(logits, y)
train sgd(lr=0.5), batch=16, epochs=1"""


def one_recorded_step(text: str, native: bool, arrays: dict, seq=(), setup=None):
    """Train `text` one step (its batch is all of `arrays`) with every step recorded;
    returns (the stats, the parameters before and after, the lowering's target)."""
    session = prepare(check_text(text, "t.net"), native=native)
    trainer = session.trainer()
    if setup:
        setup(trainer.executor.params)
    before = {k: v.copy() for k, v in trainer.executor.params.items()}
    reports = []
    trainer.probe = Probe(trainer.plan, 1, lambda *report: reports.append(report))
    trainer.fit(Dataset(arrays, "test", seq=tuple(seq)), None)
    after = {k: v.copy() for k, v in trainer.executor.params.items()}
    assert [(step, epoch) for step, epoch, _, _ in reports] == [(1, 1)]
    assert trainer.executor.observer is None  # nothing watches the steps not recorded
    return reports[0][2], before, after, session.lowered.target.name


def torch_params(params):
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
            for k, v in params.items()}


def norm(*arrays) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(a, dtype=np.float64) ** 2) for a in arrays)))


@pytest.mark.parametrize("native", [False, True], ids=["host", "native"])
def test_feed_forward_numbers_match_numpy_and_pytorch(native):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=16)

    def setup(params):
        params["dense1.bias"][:3] = -50.0   # three units the batch never turns on
        params["dense2.weight"] *= 6.0      # a tanh partly saturated

    stats, before, after, target = one_recorded_step(FEED_FORWARD, native,
                                                     {"x": x, "y": y}, setup=setup)
    assert target == ("native" if native else "host")
    p = torch_params(before)
    values = {}
    values["dense1"] = torch.tensor(x, dtype=torch.float64) @ p["dense1.weight"].T + p["dense1.bias"]
    values["relu1"] = torch.relu(values["dense1"])
    values["dense2"] = values["relu1"] @ p["dense2.weight"].T + p["dense2.bias"]
    values["tanh1"] = torch.tanh(values["dense2"])
    values["h"] = values["tanh1"] @ p["h.weight"].T + p["h.bias"]
    for value in values.values():
        value.retain_grad()
    torch.nn.functional.cross_entropy(values["h"], torch.tensor(y)).backward()
    assert set(stats) == set(values)
    for node, value in values.items():
        array = value.detach().numpy()
        assert stats[node]["mean"] == pytest.approx(array.mean(), rel=1e-4, abs=1e-6)
        assert stats[node]["std"] == pytest.approx(array.std(), rel=1e-4)
        assert stats[node]["grad_norm"] == pytest.approx(norm(value.grad), rel=1e-4)
    relu = values["relu1"].detach().numpy()
    assert stats["relu1"]["dead"] == (relu == 0).all(axis=0).mean() >= 3 / 8
    tanh = values["tanh1"].detach().numpy()
    saturated = (np.abs(tanh) >= 1 - SATURATION_MARGIN).mean()
    assert stats["tanh1"]["saturated"] == pytest.approx(saturated) and saturated > 0.2
    assert set(stats["relu1"]) == {"mean", "std", "dead", "grad_norm"}  # no parameters
    for node in ("dense1", "dense2", "h"):
        weight, bias = p[f"{node}.weight"], p[f"{node}.bias"]
        assert stats[node]["param_grad_norm"] == pytest.approx(norm(weight.grad, bias.grad),
                                                               rel=1e-4)
        keys = (f"{node}.weight", f"{node}.bias")
        moved = norm(*(after[k] - before[k] for k in keys)) / norm(*(before[k] for k in keys))
        assert stats[node]["update_ratio"] == pytest.approx(moved, rel=1e-4)
        # plain SGD moves the weights by lr times their gradient
        assert moved == pytest.approx(0.5 * stats[node]["param_grad_norm"]
                                      / norm(*(before[k] for k in keys)), rel=1e-3)


@pytest.mark.parametrize("native, train", [
    (False, ""), (True, ""),
    (False, ", bptt(checkpoint=2)"),  # spans recomputed in backward are not counted twice
], ids=["host", "native", "host-checkpointed"])
def test_a_recurrence_is_recorded_over_all_its_time_steps(native, train):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=(16, 5))

    def setup(params):
        params["dense1.bias"][:2] = -40.0  # two units of h off at every step

    stats, before, _, target = one_recorded_step(RECURRENT + train, native,
                                                 {"x": x, "y": y}, seq=("x", "y"), setup=setup)
    assert target == ("native" if native else "host")
    p = torch_params(before)
    states, h = [], torch.zeros(16, 6, dtype=torch.float64)
    for t in range(5):
        xt = torch.tensor(x[:, t], dtype=torch.float64)
        h = torch.relu(xt @ p["dense1.weight"].T + p["dense1.bias"] + h @ p["dense2.weight"].T)
        h.retain_grad()
        states.append(h)
    logits = torch.stack(states, 1) @ p["logits.weight"].T + p["logits.bias"]  # (B, T, 3)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 3),
                                      torch.tensor(y).reshape(-1)).backward()
    every = np.stack([s.detach().numpy() for s in states])  # (T, B, 6)
    assert stats["h"]["mean"] == pytest.approx(every.mean(), rel=1e-4)
    assert stats["h"]["std"] == pytest.approx(every.std(), rel=1e-4)
    assert stats["h"]["dead"] == (every == 0).all(axis=(0, 1)).mean() >= 2 / 6
    if native:  # the compiled loop shows what it keeps, without gradients
        assert "grad_norm" not in stats["h"]
    else:       # the gradient reaching h at every step, the later steps' part included
        assert stats["h"]["grad_norm"] == pytest.approx(norm(*(s.grad for s in states)),
                                                        rel=1e-4)
    assert stats["dense2"]["param_grad_norm"] == pytest.approx(norm(p["dense2.weight"].grad),
                                                               rel=1e-4)


def test_recording_changes_nothing_in_training():
    rng = np.random.default_rng(2)
    arrays = {"x": rng.normal(size=(48, 6)).astype(np.float32), "y": rng.integers(0, 3, 48)}
    trained = []
    for every in (None, 2):
        session = prepare(check_text(FEED_FORWARD, "t.net"), native=False)
        trainer = session.trainer()
        reports = []
        if every:
            trainer.probe = Probe(trainer.plan, every, lambda *report: reports.append(report))
        trainer.fit(Dataset(arrays, "test"), None)
        trained.append(trainer.executor.flat_params.copy())
        assert [r[0] for r in reports] == ([2] if every else [])  # of 3 steps, the 2nd
    assert np.array_equal(*trained)


# ---- netc run --diagnose and its warnings

def spec(tmp_path, name: str, chain: str, train: str = "sgd(lr=0.01)") -> str:
    path = tmp_path / f"{name}.net"
    path.write_text(f"network {name}\ninput  x : [16]\ntarget y : class(4)\n"
                    f"h = x -> {chain}\nloss cross_entropy(h, y)\ntrain {train}, batch=32\n")
    return str(path)


def diagnosed(path: str, folder: str, *more: str):
    result = cli_main("run", path, "--epochs", "1", "--examples", "300", "--quiet",
                      "--checkpoint", folder, "--diagnose", "1", *more)
    assert result.returncode == 0, result.stderr
    return result


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": warning: " in line]


@pytest.mark.parametrize("name, chain, train, node, kind, words", [
    ("dead", "dense(32) -> scale(1.0, shift=-100.0) -> relu -> dense(4)", "sgd(lr=0.01)",
     "relu", "dead", "100% of its units are 0 for every example of the batch"),
    ("saturated", "dense(32) -> scale(100.0) -> tanh -> dense(4)", "sgd(lr=0.01)",
     "tanh", "saturated", "of its outputs are within 0.01 of its asymptotes"),
    ("exploding", "dense(32) -> scale(100.0) -> dense(32) -> scale(100.0) -> dense(4)",
     "sgd(lr=1e-6)", "dense(32)", "exploding", "times the loss side's"),
    ("vanishing", "dense(32) -> scale(0.00001) -> dense(4)", "sgd(lr=0.01)",
     "dense(32)", "vanishing", "of the loss side's"),
])
def test_each_warning_names_the_node_and_its_line_once(tmp_path, name, chain, train, node,
                                                       kind, words):
    path = spec(tmp_path, name, chain, train)
    folder = str(tmp_path / "run")
    result = diagnosed(path, folder)
    column = open(path).read().splitlines()[3].index(node) + 1
    mine = [w for w in warnings_of(result.stderr) if f" {kind} " in w or f"{kind} units" in w]
    assert len(mine) == 1, result.stderr  # once, though every later record finds it too
    assert mine[0].startswith(f"{path}:4:{column}: warning: ") and words in mine[0]
    lines = result.stderr.splitlines()
    assert lines[lines.index(mine[0]) + 1].startswith("  hint: ")
    record = [json.loads(line) for line in open(os.path.join(folder, "diagnostics.jsonl"))]
    steps = [e["step"] for e in record if e["kind"] == "step"]
    assert steps == list(range(1, 10))  # 270 training examples in batches of 32
    warned = [e for e in record if e["kind"] == "warning" and e["warning"] == kind]
    assert len(warned) == 1 and warned[0]["step"] == 3  # three records in a row
    if kind == "dead":  # what follows from it is said too: no gradient reaches the layers before
        assert {e["node"] for e in record if e.get("warning") == "vanishing"} == {"dense1",
                                                                                 "scale1"}


def netc(capsys, *args) -> tuple[int, str, str]:
    """netc in this process (a command that only reads a record): code, stdout, stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """mlp.net trained one epoch with every step recorded: (the process, its folder)."""
    folder = str(tmp_path_factory.mktemp("diagnose") / "mlp")
    return diagnosed(MLP, folder, "--batch", "32"), folder


def test_a_healthy_network_warns_about_nothing(healthy, capsys):
    result, folder = healthy
    assert warnings_of(result.stderr) == [] and "warning" not in result.stderr
    code, out, _ = netc(capsys, "diagnose", folder)
    assert code == 0
    head, columns, *rows = out.splitlines()
    assert head == "mlp: step 9 (epoch 1), recorded every step"
    assert columns.split()[:3] == ["node", "op", "spec"]
    assert [row.split()[0] for row in rows] == ["dense1", "relu1", "dropout1", "dense2",
                                                "relu2", "logits"]
    assert rows[1].split()[2] == f"{MLP}:6:29"
    assert rows[1].split()[5].endswith("%")  # relu1's dead units
    code, out, _ = netc(capsys, "diagnose", folder, "--json")
    data = json.loads(out)
    assert data["step"] == 9 and data["warnings"] == []
    relu = next(n for n in data["nodes"] if n["node"] == "relu1")
    assert relu["op"] == "relu" and relu["at"] == f"{MLP}:6:29" and 0 <= relu["dead"] < 0.5
    assert node_metric(folder, "dead") == {"relu1": relu["dead"],
                                           "relu2": data["nodes"][4]["dead"]}
    assert set(node_metric(folder, "update_ratio")) == {"dense1", "dense2", "logits"}
    with pytest.raises(ValueError, match="no diagnostic named"):
        node_metric(folder, "loss")
    assert set(METRICS) >= {"dead", "grad_norm", "update_ratio"}


def test_tensorboard_gets_the_numbers_and_activation_histograms(healthy):
    pytest.importorskip("tensorboardX")
    _, folder = healthy
    scalars, histograms = tensorboard_values(folder)
    record = [json.loads(line) for line in open(os.path.join(folder, "diagnostics.jsonl"))]
    first = record[1]["nodes"]
    assert scalars["diagnostics/relu1/dead"][1] == pytest.approx(first["relu1"]["dead"])
    assert scalars["diagnostics/dense1/update_ratio"][1] == pytest.approx(
        first["dense1"]["update_ratio"], rel=1e-6)
    histogram = histograms["activations/relu1"][1]
    assert histogram.num == 32 * 256 and sum(histogram.bucket) == histogram.num
    assert histogram.sum == pytest.approx(first["relu1"]["mean"] * 32 * 256, rel=1e-5)
    assert histogram.min == 0 and len(histogram.bucket) == 30


def test_update_ratio_matches_the_checkpoints_before_and_after_a_step(tmp_path):
    path = spec(tmp_path, "small", "dense(32) -> relu -> dense(4)", "sgd(lr=0.1, momentum=0.9)")
    folder = tmp_path / "run"
    common = ("--examples", "300", "--quiet", "--checkpoint", str(folder), "--diagnose", "1")
    assert cli_main("run", path, "--steps", "2", *common).returncode == 0
    arrays, meta = load_checkpoint(str(folder))
    before = arrays["params"].astype(np.float64)
    resumed = cli_main("run", path, "--steps", "3", "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    arrays, meta = load_checkpoint(str(folder))
    after = arrays["params"].astype(np.float64)
    record = [json.loads(line) for line in open(folder / "diagnostics.jsonl")]
    assert [e["step"] for e in record if e["kind"] == "step"] == [1, 2, 3]  # kept, then on
    stats = record[-1]["nodes"]
    for node in ("dense1", "h"):
        spans = [(a, b) for key, _, a, b in meta["layout"] if key.split(".")[0] == node]
        moved = norm(*(after[a:b] - before[a:b] for a, b in spans))
        assert stats[node]["update_ratio"] == pytest.approx(
            moved / norm(*(before[a:b] for a, b in spans)), rel=1e-4)


def test_a_run_without_diagnostics_says_to_rerun_with_them(tmp_path, capsys):
    path = spec(tmp_path, "small", "dense(8) -> dense(4)")
    folder = str(tmp_path / "plain")
    assert cli_main("run", path, "--steps", "1", "--examples", "100", "--quiet",
                    "--checkpoint", folder).returncode == 0
    for args in ((folder,), (folder, "--json")):
        code, out, err = netc(capsys, "diagnose", *args)
        assert code == 1 and out == ""
        assert "has no diagnostics: it was trained without --diagnose" in err
        assert "hint: rerun it with them: netc run SPEC --diagnose N" in err
        assert len(err.splitlines()) == 2
    code, _, err = netc(capsys, "diagnose", str(tmp_path / "nothing"))
    assert code == 1 and "no run" in err
    # in a subprocess too: no traceback, the exit code a script sees
    result = run_netc("diagnose", folder)
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_a_resumed_run_keeps_its_record_and_does_not_warn_again(tmp_path):
    path = spec(tmp_path, "dead", "dense(32) -> scale(1.0, shift=-100.0) -> relu -> dense(4)")
    folder = str(tmp_path / "run")
    first = diagnosed(path, folder, "--steps", "4")
    assert len([w for w in warnings_of(first.stderr) if "dead units" in w]) == 1
    resumed = diagnosed(path, folder, "--steps", "7", "--resume")
    assert warnings_of(resumed.stderr) == []  # said before the checkpoint: not again
    record = [json.loads(line) for line in open(os.path.join(folder, "diagnostics.jsonl"))]
    assert [e["kind"] for e in record].count("nodes") == 1
    assert [e["step"] for e in record if e["kind"] == "step"] == list(range(1, 8))
    assert [e["node"] for e in record if e.get("warning") == "dead"] == ["relu1"]


def test_diagnose_before_the_spec_is_a_usage_error_that_says_where_it_goes(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--diagnose", MLP])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.endswith("put --diagnose after the spec, netc run SPEC --diagnose)")
    with pytest.raises(SystemExit) as stopped:
        main(["run", MLP, "--diagnose", "0"])
    assert stopped.value.code == 2
