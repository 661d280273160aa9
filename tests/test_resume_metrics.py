"""A run resumed in the middle of an epoch prints the epoch's numbers an uninterrupted
run prints: the checkpoint keeps the epoch's running sums."""
import re

from netdsl import cli

SPEC = """\
network tiny
input  x : [64]
target y : class(10)
logits = x -> dense(16) -> relu -> dense(10)
loss cross_entropy(logits, y)
train sgd(lr=0.1), batch=32, epochs=2, val=0.1
"""


def epoch_lines(output: str) -> list[str]:
    """The metrics printed at each epoch's end, without the speed (which varies)."""
    return [re.sub(r"\s+\S+ samples/s", "", line) for line in output.splitlines()
            if line.startswith("epoch ")]


def test_a_resumed_epoch_prints_what_an_uninterrupted_one_does(tmp_path, capsys):
    spec = tmp_path / "tiny.net"
    spec.write_text(SPEC)
    common = [str(spec), "--quiet", "--examples", "400", "--no-native"]

    def run(*flags: str) -> str:
        assert cli.main(["run", *common, *flags]) == 0, capsys.readouterr().err
        printed = capsys.readouterr()   # epoch lines on stdout, notices on stderr
        return printed.out + printed.err

    whole = run("--checkpoint", str(tmp_path / "whole"))
    stopped = run("--steps", "17", "--checkpoint", str(tmp_path / "parts"))  # epoch 2, step 6
    resumed = run("--resume", "--checkpoint", str(tmp_path / "parts"))
    assert "at epoch 2" in resumed
    expected = epoch_lines(whole)
    assert len(expected) == 2 and "accuracy" in expected[1]
    assert epoch_lines(stopped) + epoch_lines(resumed) == expected
