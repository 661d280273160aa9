"""netc's conventions, as a script sees them: results on stdout, notices on stderr, exit
codes 0 / 1 (the spec, the data) / 2 (the command line), --quiet and --json, no wrapping
or colour off a terminal, files under the user's umask, shell completion."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import SPECS, cli_main, run_netc

MLP = os.path.join(SPECS, "mlp.net")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(the run's CompletedProcess, its checkpoint folder): mlp.net, one epoch, piped."""
    folder = tmp_path_factory.mktemp("conventions") / "run"
    result = run_netc("run", MLP, "--epochs", "1", "--examples", "300",
                      "--checkpoint", str(folder))
    assert result.returncode == 0, result.stderr
    return result, str(folder)


def test_run_prints_results_on_stdout_notices_on_stderr_whole_lines(trained):
    result, folder = trained
    assert result.stdout.startswith("epoch 1  loss ") and len(result.stdout.splitlines()) == 1
    err = result.stderr.splitlines()
    data = next(line for line in err if line.startswith("data: "))
    # longer than 80 columns, and not wrapped though not on a terminal
    assert len(data) > 80 and data.endswith("pixels scaled to [0,1]")
    assert err[-1] == f"saved {folder}/checkpoint.npz"
    assert "\x1b[" not in result.stdout + result.stderr


@pytest.mark.parametrize("args, code, words", [
    (["compile", MLP, "--emit", "bytecode"], 2, "invalid choice"),      # argparse's
    (["compile", MLP, "--unroll", "2"], 2, "--unroll goes with --emit unrolled"),
    (["draw", MLP, "-o", "mlp.gif"], 2, "unknown format 'gif'"),
    (["predict", MLP, "-o", "out.txt"], 2, "name an .npz or .csv file"),
    (["predict", MLP, "--prompt", "def "], 2, "--prompt is the text --generate continues"),
    (["check", os.path.join("tests", "errors", "unknown_layer.net")], 1, "unknown layer"),
])
def test_usage_errors_exit_2_spec_errors_1(args, code, words, tmp_path):
    result = cli_main(*args, cwd=None)
    assert result.returncode == code, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr and result.stdout == ""


def test_check_quiet_and_json(tmp_path):
    bad = os.path.join("tests", "errors", "unknown_layer.net")
    quiet = cli_main("check", "--quiet", MLP)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    result = cli_main("check", "--json", MLP, bad)
    assert result.returncode == 1
    ok, failed = json.loads(result.stdout)
    assert ok == {"spec": MLP, "ok": True, "name": "mlp", "nodes": 9, "parameters": 85002}
    assert failed["ok"] is False and failed["errors"][0]["file"] == bad
    assert "unknown layer" in failed["errors"][0]["message"] and failed["errors"][0]["line"] > 0


def test_compile_quiet_and_json():
    quiet = cli_main("compile", MLP, "--quiet", "--batch", "4")
    assert quiet.returncode == 0
    assert quiet.stdout == ("mlp: batch 4, 9 nodes, 85,002 parameters (0 non-trainable), "
                            "340.01K mult-adds (680.02K FLOPs), 21.2 KiB activations\n")
    result = cli_main("compile", MLP, "--json")
    table = json.loads(result.stdout)
    assert table["name"] == "mlp" and table["total"]["params"] == 85002
    assert sum(n["params"] for n in table["rows"]) == 85002
    assert [n["inputs"] for n in table["rows"] if n["node"] == "loss"] == [["logits", "y"]]


def test_eval_and_predict_json(trained):
    _, folder = trained
    result = cli_main("eval", MLP, "--checkpoint", folder, "--json", "--examples", "300")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["examples"] == 30 and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    result = cli_main("predict", MLP, "--checkpoint", folder, "--json", "--examples", "7")
    outputs = json.loads(result.stdout)
    assert len(outputs["logits"]) == 7 and len(outputs["logits"][0]) == 10
    assert outputs["logits_class"] == [max(range(10), key=row.__getitem__)
                                       for row in outputs["logits"]]


def test_export_says_what_it_wrote_on_stderr(trained, tmp_path):
    _, folder = trained
    out = tmp_path / "mlp.safetensors"
    result = cli_main("export", MLP, "--to", "safetensors", "-o", str(out),
                      "--checkpoint", folder)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and result.stdout == ""
    assert result.stderr.startswith(f"wrote {out} (")


def test_files_are_written_under_the_umask(tmp_path):
    from netdsl.atomic import write_text

    mask = os.umask(0o027)
    try:
        write_text(str(tmp_path / "new.txt"), "x")
    finally:
        os.umask(mask)
    assert os.stat(tmp_path / "new.txt").st_mode & 0o777 == 0o640
    (tmp_path / "kept.txt").write_text("old")
    os.chmod(tmp_path / "kept.txt", 0o604)
    write_text(str(tmp_path / "kept.txt"), "new")  # a file replaced keeps its mode
    assert os.stat(tmp_path / "kept.txt").st_mode & 0o777 == 0o604


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_draw_warns_when_graphviz_shrinks_a_bitmap(tmp_path):
    spec = tmp_path / "long.net"
    chain = " -> ".join(["dense(8) -> relu"] * 300)
    spec.write_text(f"network long\ninput x : [8]\ntarget y : class(2)\n"
                    f"h = x -> {chain} -> dense(2)\nloss cross_entropy(h, y)\n")
    out = tmp_path / "long.png"
    result = cli_main("draw", str(spec), "-o", str(out))
    assert result.returncode == 0 and out.is_file() and result.stdout == ""
    warning = result.stderr.splitlines()[0]
    assert warning.startswith(f"warning: {out}: the network is too large for a PNG image")
    assert f"{tmp_path / 'long'}.svg" in warning and "--collapse" in warning


def test_bash_completion_completes_commands_flags_and_choices(tmp_path):
    script = cli_main("completion", "bash").stdout
    (tmp_path / "netc.bash").write_text(script)

    def complete(*words):
        line = " ".join(f"'{w}'" for w in words)
        program = (f"source {tmp_path / 'netc.bash'}; COMP_WORDS=({line}); "
                   f"COMP_CWORD={len(words) - 1}; _netc; echo \"${{COMPREPLY[@]}}\"")
        return subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                              check=True).stdout.split()

    assert complete("netc", "com") == ["compile", "completion"]
    assert "--emit" in complete("netc", "compile", "x.net", "--e")
    assert complete("netc", "compile", "x.net", "--target", "") == ["host", "native", "cuda"]
    assert complete("netc", "runs", "--j") == ["--json"]
    for shell, line in (("zsh", "'plot:loss and accuracy curves of runs'"),
                        ("fish", "-n '__fish_seen_subcommand_from check' -l json")):
        assert line in cli_main("completion", shell).stdout


def test_consoles_off_a_terminal_never_wrap_and_honour_no_color(monkeypatch):
    import io

    from netdsl.app import terminal

    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    out = terminal.console()
    assert out.width == terminal.WIDE and out.soft_wrap and out.no_color
    out.print("x" * 300, style="red")
    assert out.file.getvalue() == "x" * 300 + "\n"
