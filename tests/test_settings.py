"""Training settings: every bad value in a train clause is reported at its item with a fix;
a bad value from a command-line flag names the flag."""
import pytest

from conftest import cli_main
from netdsl.driver import CheckFailed, check_text
from netdsl.errors import SpecError, SpecErrors, errors_of
from netdsl.settings import TrainSettings, resolve_settings

HEAD = """\
network t
input  x : [4]
target y : class(2)
loss cross_entropy(x -> dense(2), y)
"""
LINE = HEAD.count("\n") + 1  # the train clause's line


def spec(clause: str) -> str:
    return HEAD + f"train {clause}\n"


def clause_errors(clause: str) -> list[SpecError]:
    with pytest.raises(CheckFailed) as info:
        check_text(spec(clause), "t.net")
    return info.value.errors


def column(clause: str, fragment: str) -> int:
    """The column of `fragment` in the train line."""
    assert clause.count(fragment) == 1, fragment
    return len("train ") + clause.index(fragment) + 1


# (clause, the item the error points at, the message, a fragment of the hint)
CASES = [
    # the optimiser and its settings
    ("sdg(lr=0.1)", "sdg", "unknown optimiser or training setting 'sdg'", "did you mean 'sgd'?"),
    ("sgd(lr=-1)", "lr=-1", "the learning rate lr must be a positive number, got -1",
     "for example sgd(lr=0.1)"),
    ("sgd(lr=0)", "lr=0", "the learning rate lr must be a positive number, got 0", "sgd(lr=0.1)"),
    ("sgd(lr='fast')", "lr='fast'", "the learning rate lr must be a positive number, got 'fast'",
     "sgd(lr=0.1)"),
    ("sgd(lr=0.1, momentum=-0.5)", "momentum=-0.5", "sgd: momentum must be >= 0, got -0.5",
     "for example sgd(momentum=0)"),
    ("sgd(lr=0.1, nesterov=true)", "nesterov=true", "sgd: nesterov=true needs momentum > 0",
     "sgd(nesterov=false)"),
    ("sgd(lr=0.1, nesterov=2, momentum=0.9)", "nesterov=2",
     "sgd: nesterov must be true or false, got 2", "sgd(nesterov=false)"),
    ("sgd(weight_decay=-1)", "weight_decay=-1", "sgd: weight_decay must be >= 0, got -1",
     "sgd(weight_decay=0)"),
    ("adam(beta1=1.5)", "beta1=1.5", "adam: beta1 must be in [0, 1), got 1.5", "adam(beta1=0.9)"),
    ("adam(beta2=1)", "beta2=1", "adam: beta2 must be in [0, 1), got 1", "adam(beta2=0.999)"),
    ("adagrad(eps=-1)", "eps=-1", "adagrad: eps must be >= 0, got -1", "adagrad(eps=1e-10)"),
    ("rmsprop(alpha=1)", "alpha=1", "rmsprop: alpha must be in [0, 1), got 1",
     "rmsprop(alpha=0.99)"),
    ("adam(momentum=0.9)", "momentum", "adam has no setting 'momentum'", "accepted: beta1"),
    # plain settings
    ("sgd(lr=0.1), batch=0", "batch=0",
     "training setting 'batch' must be a whole number of at least 1, got 0", "batch=32"),
    ("sgd(lr=0.1), batch=1.5", "batch=1.5",
     "training setting 'batch' must be a whole number of at least 1, got 1.5", "batch=32"),
    ("sgd(lr=0.1), epochs=0", "epochs=0",
     "training setting 'epochs' must be a whole number of at least 1, got 0", "epochs=10"),
    ("sgd(lr=0.1), steps=-3", "steps=-3",
     "training setting 'steps' must be a whole number of at least 1, got -3", "steps=1000"),
    ("sgd(lr=0.1), gan_k=0", "gan_k=0",
     "training setting 'gan_k' must be a whole number of at least 1, got 0", "gan_k=1"),
    ("sgd(lr=0.1), seed=-1", "seed=-1",
     "training setting 'seed' must be a whole number >= 0, got -1", "seed=0"),
    ("sgd(lr=0.1), seed=0.5", "seed=0.5",
     "training setting 'seed' must be a whole number >= 0, got 0.5", "seed=0"),
    ("sgd(lr=0.1), l1=-1", "l1=-1", "training setting 'l1' must be a number >= 0, got -1",
     "l1=1e-5"),
    ("sgd(lr=0.1), l2=true", "l2=true", "training setting 'l2' must be a number >= 0, got true",
     "l2=1e-4"),
    ("sgd(lr=0.1), clip=0", "clip=0",
     "training setting 'clip' must be a positive number (the largest gradient norm), got 0",
     "clip=5.0"),
    ("sgd(lr=0.1), val=1", "val=1", "training setting 'val' must be a fraction in [0, 1), got 1",
     "val=0.1"),
    ("sgd(lr=0.1), shuffle=1", "shuffle=1",
     "training setting 'shuffle' must be true or false, got 1", "shuffle=true"),
    ("sgd(lr=0.1), normalize='yes'", "normalize='yes'",
     "training setting 'normalize' must be true or false, got 'yes'", "normalize=true"),
    ("sgd(lr=0.1), init=hee", "init=hee",
     "training setting 'init' must be one of auto, torch, he, xavier, fan_in, got 'hee'",
     "did you mean 'he'?"),
    ("sgd(lr=0.1), init=3", "init=3",
     "training setting 'init' must be one of auto, torch, he, xavier, fan_in, got 3",
     "init=he"),
    ("sgd(lr=0.1), pixels=[1, 0]", "pixels=[1, 0]",
     "training setting 'pixels' must be a range [low, high] with low < high, got [1, 0]",
     "pixels=[-1, 1]"),
    ("sgd(lr=0.1), pixels=1", "pixels=1",
     "training setting 'pixels' must be a range [low, high] with low < high, got 1",
     "pixels=[-1, 1]"),
    ("sgd(lr=0.1), epoch=20", "epoch=20", "unknown training setting 'epoch'",
     "did you mean 'epochs'?"),
    ("sgd(lr=0.1), batch=step()", "step()", "training setting 'batch' takes a value, not a call",
     "batch=..."),
    # schedules
    ("sgd(lr=0.1), schedule=5", "schedule=5",
     "training setting 'schedule' must be a schedule such as step(every=30), got 5",
     "linear(to, epochs)"),
    ("sgd(lr=0.1), schedule=stp(every=2)", "stp", "unknown schedule 'stp'",
     "did you mean 'step'?"),
    ("sgd(lr=0.1), schedule=step(every=0)", "every=0",
     "step: every must be a whole number >= 1, got 0", "step(every=30)"),
    ("sgd(lr=0.1), schedule=step(gamma=-0.1)", "gamma=-0.1", "step: gamma must be > 0, got -0.1",
     "step(gamma=0.1)"),
    ("sgd(lr=0.1), schedule=step(evry=2)", "evry", "step has no setting 'evry'",
     "did you mean 'every'?"),
    ("sgd(lr=0.1), schedule=linear(to=-1)", "to=-1", "linear: to must be >= 0, got -1", None),
    ("sgd(lr=0.1), schedule=linear(epochs=0)", "epochs=0",
     "linear: epochs must be a whole number >= 1, got 0", None),
    ("sgd(lr=0.1), schedule=plateau(factor=1)", "factor=1",
     "plateau: factor must be in (0, 1), got 1", "plateau(factor=0.5)"),
    ("sgd(lr=0.1), schedule=plateau(patience=-1)", "patience=-1",
     "plateau: patience must be a whole number >= 0, got -1", "plateau(patience=2)"),
    ("sgd(lr=0.1), step(every=2)", "step", "a schedule is a setting: write schedule=step(...)",
     "for example schedule=step(every=..., gamma=...)"),
    # early stopping
    ("sgd(lr=0.1), early_stop(patience=0)", "patience=0",
     "early_stop: patience must be a whole number of epochs, at least 1, got 0",
     "early_stop(patience=5)"),
    ("sgd(lr=0.1), early_stop(metric='acc')", "metric='acc'",
     "early_stop: metric must be 'loss' or 'accuracy', got 'acc'", "early_stop(metric=\"accuracy\")"),
    ("sgd(lr=0.1), early_stop=3", "early_stop=3",
     "training setting 'early_stop' must be a call, got 3", "early_stop(patience=5"),
    ("sgd(lr=0.1), early_stop=halt(patience=2)", "halt", "'early_stop' cannot be 'halt'",
     "write early_stop(...)"),
]


@pytest.mark.parametrize("clause, item, message, hint", CASES, ids=[c[0] for c in CASES])
def test_a_bad_setting_is_reported_at_its_item(clause, item, message, hint):
    (error,) = clause_errors(clause)
    assert error.message == message
    assert (error.span.file, error.span.line, error.span.col) == ("t.net", LINE, column(clause, item))
    assert error.span.end_col - error.span.col + 1 == len(item)  # the caret covers the item
    if hint is None:
        assert error.hint is None
    else:
        assert hint in error.hint


def test_every_bad_setting_of_a_clause_is_reported():
    clause = "sgd(lr=-1), batch=0, epochs=0, val=2"
    errors = clause_errors(clause)
    assert [e.span.col for e in errors] == [column(clause, item) for item in
                                            ("lr=-1", "batch=0", "epochs=0", "val=2")]


def test_the_command_line_shows_the_line_and_exits_one(tmp_path):
    path = tmp_path / "t.net"
    clause = "sgd(lr=0.1), batch=0"
    path.write_text(spec(clause))
    for command in ("check", "run"):
        result = cli_main(command, str(path), cwd=str(tmp_path))
        assert result.returncode == 1, result.stdout
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert lines[0] == (f"{path}:{LINE}:{column(clause, 'batch=0')}: error: training setting "
                            "'batch' must be a whole number of at least 1, got 0")
        assert lines[1].endswith("train sgd(lr=0.1), batch=0")
        assert lines[2].strip() == "^^^^^^^"
        assert lines[3] == "  hint: for example batch=32"


def test_good_settings_pass_check_and_resolve():
    net = check_text(spec("adam(lr=2e-4, beta1=0.5), batch=64.0, epochs=3, seed=1, "
                          "schedule=step(every=2), early_stop(patience=3.0, metric='accuracy'), "
                          "pixels=[-1, 1], init=he"), "t.net")
    s = resolve_settings(net.graph.graph["train"], None, net.program.train_spans)
    assert (s.optimizer, s.optimizer_settings) == ("adam", {"lr": 2e-4, "beta1": 0.5})
    assert s.batch == 64 and isinstance(s.batch, int)
    assert s.early_stop == {"patience": 3, "metric": "accuracy"}
    assert s.schedule == ("step", {"every": 2}) and s.pixels == (-1.0, 1.0) and s.init == "he"


def test_nesterov_with_momentum_is_fine():
    check_text(spec("sgd(lr=0.1, momentum=0.9, nesterov=true)"), "t.net")


def test_spans_name_each_item_and_keyword():
    net = check_text(spec("sgd(lr=0.1), batch=8, schedule=step(every=2)"), "t.net")
    spans = net.program.train_spans
    assert set(spans) == {"optimizer", "optimizer.lr", "batch", "schedule", "schedule.every"}
    assert spans["optimizer.lr"].col == column("sgd(lr=0.1), batch=8, schedule=step(every=2)",
                                               "lr=0.1")


# ---- values from command-line flags


@pytest.mark.parametrize("flag, value, message, hint", [
    ("lr", -1, "--lr must be a positive number, got -1", "for example --lr 0.1"),
    ("batch", 0, "--batch must be a whole number of at least 1, got 0", "for example --batch 32"),
    ("epochs", 0, "--epochs must be a whole number of at least 1, got 0", "--epochs 10"),
    ("steps", 0, "--steps must be a whole number of at least 1, got 0", "--steps 1000"),
    ("seed", -2, "--seed must be a whole number >= 0, got -2", "--seed 0"),
    ("val", 1.5, "--val must be a fraction in [0, 1), got 1.5", "--val 0.1"),
    ("init", "hee", "--init must be one of auto, torch, he, xavier, fan_in, got 'hee'",
     "did you mean 'he'?"),
    ("normalize", "yes", "--normalize must be true or false, got 'yes'", "--normalize true"),
])
def test_a_bad_flag_is_named(flag, value, message, hint):
    net = check_text(spec("sgd(lr=0.1, momentum=0.9), batch=16, epochs=2"), "t.net")
    with pytest.raises(SpecError) as info:
        resolve_settings(net.graph.graph["train"], {flag: value}, net.program.train_spans)
    assert info.value.message == message and info.value.span is None
    assert hint in info.value.hint


def test_a_flag_overrides_the_clause_and_flags_left_out_change_nothing():
    net = check_text(spec("sgd(lr=0.1, momentum=0.9), batch=16, epochs=2"), "t.net")
    s = resolve_settings(net.graph.graph["train"], {"lr": 0.5, "batch": None, "epochs": 4},
                         net.program.train_spans)
    assert s.optimizer_settings == {"lr": 0.5, "momentum": 0.9}
    assert (s.batch, s.epochs) == (16, 4)


def test_an_override_without_a_flag_is_named_as_an_override():
    with pytest.raises(SpecError) as info:
        resolve_settings({}, {"gan_k": 0})
    assert info.value.message.startswith("the override 'gan_k' must be a whole number")


def test_a_clause_without_spans_says_to_fix_the_train_clause():
    with pytest.raises(SpecError) as info:
        resolve_settings({"batch": 0})
    assert info.value.span is None
    assert info.value.hint == "fix it in the spec's train clause; for example batch=32"


def test_several_bad_values_are_raised_together():
    with pytest.raises(SpecErrors) as info:
        resolve_settings({"batch": 0, "clip": -1}, {"lr": -1})
    assert sorted(e.message.split(" must")[0] for e in errors_of(info.value)) == [
        "--lr", "training setting 'batch'", "training setting 'clip'"]


def test_defaults():
    assert resolve_settings({}) == TrainSettings()


def test_the_language_names_every_bundled_dataset_and_init_scheme_the_runtime_has():
    """data='NAME' and init= are checked by the front end, which names the datasets and
    schemes; the runtime must have exactly those."""
    import numpy as np

    from netdsl.lower import lower
    from netdsl.runtime.data.sequences import SEQUENCE_DATA
    from netdsl.runtime.init import initial_params
    from netdsl.settings import BUNDLED_DATA, INIT_SCHEMES

    assert set(BUNDLED_DATA) == set(SEQUENCE_DATA)
    plan = lower(check_text("input x : [3]\ntarget y : class(2)\n"
                            "loss cross_entropy(x -> dense(2), y)\n")).built
    for scheme in INIT_SCHEMES:
        assert np.isfinite(initial_params(plan, scheme)["dense1.weight"]).all()


def test_bptt_given_a_value_instead_of_a_call_is_located():
    """`bptt='text'` (a mutated char_lm.net of the reliability run) raised a ValueError."""
    [error] = clause_errors("adam(lr=1e-3), bptt='text'")
    assert error.message == "bptt takes its settings as a call, got 'text'"
    assert error.span.col == column("adam(lr=1e-3), bptt='text'", "bptt='text'")
