"""`netc` as a user runs it: exit codes, tables, emitted stages, no tracebacks."""
import pytest

from conftest import run_netc

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
        result = run_netc("check", mlp)
        assert result.returncode == 0 and "ok" in result.stdout and "19,210 parameters" in result.stdout

    def test_several_files_one_bad(self, mlp, tmp_path):
        bad = tmp_path / "bad.net"
        bad.write_text(MLP.replace("relu", "rleu"))
        result = run_netc("check", mlp, str(bad))
        assert result.returncode == 1
        assert f"{bad}:4:29: error: unknown layer 'rleu'" in result.stderr
        assert "did you mean 'relu'?" in result.stderr and "Traceback" not in result.stderr


class TestCompile:
    def test_table_has_every_node_and_totals(self, mlp):
        result = run_netc("compile", mlp, "--batch", "32")
        assert result.returncode == 0
        lines = result.stdout.splitlines()
        assert lines[0] == "mlp: batch 32"
        assert any(line.startswith("logits") and "2,570" in line for line in lines)
        assert "19,210" in lines[-2] and "6 nodes" in lines[-2]
        assert lines[-1].startswith("training step at batch 32: planned peak")

    @pytest.mark.parametrize("stage, expected", [
        ("ast", "Assign targets=('logits',)"),
        ("expanded", "logits = dense(relu1; units=10"),
        ("graph", "logits [dense] -> loss"),
        ("shapes", "logits: [10] = dense(relu1"),
        ("plan", "dense1 (dense) -> relu1 (relu)"),
    ])
    def test_emit(self, mlp, stage, expected):
        result = run_netc("compile", mlp, "--emit", stage)
        assert result.returncode == 0 and expected in result.stdout

    def test_bad_flag_exit_one(self, mlp):
        result = run_netc("compile", mlp, "--emit", "kernels")
        assert result.returncode == 1 and "invalid choice" in result.stderr


class TestHelp:
    @pytest.mark.parametrize("command", [[], ["check"], ["compile"], ["draw"], ["fmt"]])
    def test_help_everywhere(self, command):
        result = run_netc(*command, "--help")
        assert result.returncode == 0 and "usage: netc" in result.stdout
