"""`netc` as a user runs it: exit codes, tables, emitted stages, no tracebacks."""
import pytest

from conftest import cli_main, run_netc

MLP = """\
network mlp
input  x : [64]
target y : class(10)
logits = x -> dense(256) -> relu -> dense(10)
loss cross_entropy(logits, y)
"""


@pytest.fixture
def mlp(tmp_path):
    path = tmp_path / "mlp.net"
    path.write_text(MLP)
    return str(path)


class TestCheck:
    def test_ok_exit_zero(self, mlp):
        result = cli_main("check", mlp)
        assert result.returncode == 0 and "ok" in result.stdout and "19,210 parameters" in result.stdout

    def test_several_files_one_bad(self, mlp, tmp_path):
        bad = tmp_path / "bad.net"
        bad.write_text(MLP.replace("relu", "rleu"))
        result = cli_main("check", mlp, str(bad))
        assert result.returncode == 1
        assert f"{bad}:4:29: error: unknown layer 'rleu'" in result.stderr
        assert "did you mean 'relu'?" in result.stderr and "Traceback" not in result.stderr


class TestCompile:
    def test_table_has_every_node_and_totals(self, mlp):
        result = cli_main("compile", mlp, "--batch", "32")
        assert result.returncode == 0
        lines = result.stdout.splitlines()
        assert lines[0].startswith("mlp: batch 32; mult-adds as torchinfo counts them")
        assert lines[0].endswith("FLOPs = 2 x mult-adds")
        assert lines[1].split() == ["node", "op", "inputs", "output", "params", "mult-adds",
                                    "memory"]
        # dense(10) of 256 units: 2,570 weights, each one mult-add per example
        assert any(line.split()[:6] == ["logits", "dense", "relu1", "[10]", "2,570", "82.24K"]
                   for line in lines)
        assert "19,210" in lines[-4] and "6 nodes" in lines[-4]
        assert lines[-3] == "parameters: 19,210 trainable, 0 non-trainable"
        assert lines[-2] == "mult-adds: 614.72K (614,720); FLOPs: 1.23M"
        assert lines[-1].startswith("training step at batch 32: planned peak")

    @pytest.mark.parametrize("stage, expected", [
        ("ast", "Assign targets=logits"),
        ("expanded", "logits = relu1 -> dense(10)\n"),
        ("graph", "logits [dense] -> loss"),
        ("shapes", "logits: [10] = relu1 -> dense(10)\n"),
        ("plan", "dense1 (dense) -> relu1 (relu)"),
    ])
    def test_emit(self, mlp, stage, expected):
        result = cli_main("compile", mlp, "--emit", stage)
        assert result.returncode == 0 and expected in result.stdout
        assert not any(python in result.stdout for python in ("True", "False", "None", "(3,)"))

    def test_bad_flag_is_a_usage_error(self, mlp):
        result = cli_main("compile", mlp, "--emit", "bytecode")
        assert result.returncode == 2 and "invalid choice" in result.stderr


class TestHelp:
    @pytest.mark.parametrize("command", [[], ["check"], ["compile"], ["draw"], ["fmt"],
                                         ["export"]])
    def test_help_everywhere(self, command):
        result = run_netc(*command, "--help")
        assert result.returncode == 0 and "usage: netc" in result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(spec, checkpoint folder, a folder for data) of the MLP after one training step."""
    folder = tmp_path_factory.mktemp("predict")
    spec = folder / "mlp.net"
    spec.write_text(MLP)
    result = cli_main("run", str(spec), "--steps", "1", "--quiet",
                      "--checkpoint", str(folder / "run"))
    assert result.returncode == 0, result.stderr
    return str(spec), str(folder / "run"), folder


class TestPredict:
    """`netc predict` reads only what the outputs need: a file without targets will do."""

    def predict(self, trained, data, *more):
        spec, checkpoint, _ = trained
        return cli_main("predict", spec, "--checkpoint", checkpoint, "--data", str(data), *more)

    def test_npz_of_inputs_alone(self, trained):
        import numpy as np

        data, out = trained[2] / "x.npz", trained[2] / "pred.npz"
        np.savez(data, x=np.random.default_rng(0).random((5, 64)))
        result = self.predict(trained, data, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert "wrote 5 predictions" in result.stderr and result.stdout == ""
        with np.load(out) as saved:
            assert saved["logits"].shape == (5, 10) and saved["logits_class"].shape == (5,)

    def test_csv_of_input_columns_alone(self, trained):
        data = trained[2] / "x.csv"
        data.write_text(",".join(f"x{i}" for i in range(64)) + "\n"
                        + "\n".join(",".join(["0.25"] * 64) for _ in range(3)) + "\n")
        result = self.predict(trained, data)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("logits: [")

    def test_a_missing_input_is_one_clear_line(self, trained):
        import numpy as np

        data = trained[2] / "labels.npz"
        np.savez(data, y=np.zeros(3, np.int64))
        result = self.predict(trained, data)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.splitlines()[0] == (
            f"error: {data} has no array named x: it has y; the data must hold x (input [64]); "
            "y may be left out")

    def test_eval_still_needs_the_targets(self, trained):
        import numpy as np

        spec, checkpoint, folder = trained
        data = folder / "x_only.npz"
        np.savez(data, x=np.zeros((3, 64)))
        result = cli_main("eval", spec, "--checkpoint", checkpoint, "--data", str(data))
        assert result.returncode == 1 and "has no array named y" in result.stderr
