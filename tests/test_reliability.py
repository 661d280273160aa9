"""The reliability run (tools/reliability.py), seeded and small: mutated specs, damaged
checkpoints and data files, and kills during training all end in netc's own messages,
never a traceback or a hang, and a killed run's checkpoint loads and resumes. The long
run and its figures: docs/reliability.md."""
import importlib.util
import os

from conftest import ROOT


def _tool():
    path = os.path.join(ROOT, "tools", "reliability.py")
    spec = importlib.util.spec_from_file_location("reliability", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzzed_and_damaged_inputs_and_kills_end_cleanly(tmp_path, capsys):
    result = _tool().main(["--seed", "7", "--specs", "400", "--checkpoints", "60",
                           "--data", "60", "--kills", "2", "--out", str(tmp_path / "failed")])
    assert result["tried"] == {"spec": 400, "checkpoint": 60, "data": 60, "kill": 2}
    kept = sorted(os.listdir(tmp_path / "failed")) if (tmp_path / "failed").exists() else []
    assert result["failed"] == {}, f"failing inputs kept in {tmp_path / 'failed'}: {kept}"


def test_the_run_reports_a_traceback_as_a_failure(monkeypatch):
    """The harness itself: an exception escaping netc is a failure, not a pass."""
    tool = _tool()
    monkeypatch.setitem(tool.netc.__globals__["COMMANDS"], "check", lambda args: 1 / 0)
    failure, _, _ = tool.run_netc(["check", os.path.join(ROOT, "specs", "mlp.net")])
    assert failure.startswith("traceback") and "ZeroDivisionError" in failure
