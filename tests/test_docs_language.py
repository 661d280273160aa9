"""The examples of docs/language.md say what `netc check` really does.

A ```net block that opens with `# NAME.net` has a ```console block after it showing
`$ netc check NAME.net` and the exact output. A plain ``` block that shows an error in a
file of specs/ is checked against that file with the shown line put in.
"""
import os
import re

import pytest

from netdsl.cli import main
from netdsl.fmt import WIDTH, format_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = open(os.path.join(ROOT, "docs", "language.md"), encoding="utf-8").read()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```$", DOC, re.S | re.M)
# a named example (`# NAME.net` first) has its run shown; the others are checked where
# their section is (tests/test_attention_torch.py, tests/test_state_start.py)
SPECS = {body.split("\n")[0][2:]: body for kind, body in BLOCKS
         if kind == "net" and re.match(r"# [\w-]+\.net\n", body)}
RUNS = [body for kind, body in BLOCKS if kind == "console"]
SHOWN_ERRORS = [body for kind, body in BLOCKS
                if kind == "" and re.match(r"specs/\w+\.net:\d+:\d+: error: ", body)]


def check(capsys, *paths: str) -> tuple[int, str]:
    code = main(["check", *paths])
    return code, capsys.readouterr().err


def test_the_page_has_its_examples():
    assert len(SPECS) >= 5 and len(RUNS) == len(SPECS) and SHOWN_ERRORS


@pytest.mark.parametrize("run", RUNS, ids=[r.split("\n")[0] for r in RUNS])
def test_each_shown_run(run, tmp_path, monkeypatch, capsys):
    command, *shown = run.rstrip("\n").split("\n")
    name = re.fullmatch(r"\$ netc check (\S+)", command).group(1)
    (tmp_path / name).write_text(SPECS[name])
    monkeypatch.chdir(tmp_path)
    code, err = check(capsys, name)
    assert code == 1
    assert err.rstrip("\n").split("\n") == shown


@pytest.mark.parametrize("shown", SHOWN_ERRORS, ids=[s.split(":")[0] for s in SHOWN_ERRORS])
def test_each_shown_error_of_a_spec(shown, tmp_path, monkeypatch, capsys):
    head, source, *rest = shown.rstrip("\n").split("\n")
    path, line = re.match(r"([^:]+):(\d+):", head).groups()
    lines = open(os.path.join(ROOT, path), encoding="utf-8").read().split("\n")
    lines[int(line) - 1] = source.split(" | ", 1)[1]
    os.makedirs(tmp_path / "specs")
    (tmp_path / path).write_text("\n".join(lines))
    monkeypatch.chdir(tmp_path)
    code, err = check(capsys, path)
    assert code == 1 and err.rstrip("\n").split("\n") == [head, source, *rest]


def test_the_formatting_examples_are_canonical():
    section = DOC.split("## Formatting\n")[1].split("\n## ")[0]
    examples = re.findall(r"\n\n((?:    .*\n)+)", section)
    assert len(examples) == 2
    for example in examples:
        text = "".join(line[4:] + "\n" for line in example.rstrip("\n").split("\n"))
        assert len(text.split("\n")[0]) > 0 and format_text(text) == text
        assert max(map(len, text.split("\n"))) <= WIDTH
