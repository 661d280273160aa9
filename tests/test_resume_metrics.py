"""A run resumed in the middle of an epoch prints the epoch's numbers an uninterrupted
run prints: the checkpoint keeps the epoch's running sums."""
import re

from conftest import run_netc

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


def test_a_resumed_epoch_prints_what_an_uninterrupted_one_does(tmp_path):
    spec = tmp_path / "tiny.net"
    spec.write_text(SPEC)
    whole = run_netc("run", str(spec), "--quiet", "--examples", "400",
                     "--checkpoint", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    stopped = run_netc("run", str(spec), "--quiet", "--examples", "400", "--steps", "17",
                       "--checkpoint", str(tmp_path / "parts"))  # epoch 2, its 6th step
    assert stopped.returncode == 0, stopped.stderr
    resumed = run_netc("run", str(spec), "--quiet", "--examples", "400", "--resume",
                       "--checkpoint", str(tmp_path / "parts"))
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 2" in resumed.stdout
    expected = epoch_lines(whole.stdout)
    assert len(expected) == 2 and "accuracy" in expected[1]
    assert epoch_lines(stopped.stdout) + epoch_lines(resumed.stdout) == expected
