"""Errors people see: every bad spec in tests/errors is reported where it is wrong, in words.

Each tests/errors/*.net holds one kind of mistake (a few hold two independent ones) and
names what it expects in its header:

    # expect: LINE:COL: a substring of the message
    # hint: LINE:COL: a substring of the hint

The set of reported places must equal the expected set: a missing report is a bug, and so
is an extra one (usually a mistake reported twice, or a consequence of it).
"""
import glob
import os
import re
import subprocess
import sys

import pytest

from netdsl.driver import CheckFailed, check_file
from netdsl.errors import SpecError, render
from netdsl.parse import parse
from netdsl.syntax_errors import CATALOGUE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERRORS = os.path.join(ROOT, "tests", "errors")
FILES = sorted(glob.glob(os.path.join(ERRORS, "*.net")))
HEADER = re.compile(r"^#\s*(expect|hint):\s*(\d+):(\d+):\s*(.+?)\s*$", re.M)
# files that cannot carry a header
ELSEWHERE = {"empty.net": {"expect": [(1, 1, "the spec defines no network")], "hint": []}}
# a sample run through the command line, one per kind of mistake
CLI_SAMPLE = ["syntax_unclosed_paren.net", "syntax_stray_brace.net", "unknown_layer.net",
              "missing_argument.net", "shape_conv_on_vector.net", "state_without_delay.net",
              "block_recursive.net", "import_missing_file.net", "multi_shapes.net", "empty.net"]


def expectations(path: str) -> dict[str, list[tuple[int, int, str]]]:
    name = os.path.basename(path)
    if name in ELSEWHERE:
        return ELSEWHERE[name]
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    found = {"expect": [], "hint": []}
    for kind, line, col, words in HEADER.findall(text):
        found[kind].append((int(line), int(col), words))
    return found


def failures(path: str) -> CheckFailed:
    with pytest.raises(CheckFailed) as info:
        check_file(path)
    return info.value


def netc(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    code = "import sys; from netdsl.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def ids(paths):
    return [os.path.basename(p) for p in paths]


class TestErrorSpecs:
    def test_enough_specs(self):
        assert len(FILES) >= 45
        for path in FILES:
            assert expectations(path)["expect"], f"{path} names no expected error"

    @pytest.mark.parametrize("path", FILES, ids=ids(FILES))
    def test_reported_at_the_expected_places(self, path):
        failed = failures(path)
        expected = expectations(path)["expect"]
        assert {(e.span.line, e.span.col) for e in failed.errors} == {(l, c) for l, c, _ in expected}, \
            "\n".join(render(e, failed.sources) for e in failed.errors)
        for line, col, words in expected:
            messages = [e.message for e in failed.errors if (e.span.line, e.span.col) == (line, col)]
            assert any(words in m for m in messages), (words, messages)

    @pytest.mark.parametrize("path", FILES, ids=ids(FILES))
    def test_hints(self, path):
        failed = failures(path)
        for line, col, words in expectations(path)["hint"]:
            hints = [e.hint or "" for e in failed.errors if (e.span.line, e.span.col) == (line, col)]
            assert any(words in h for h in hints), (words, hints)

    @pytest.mark.parametrize("path", FILES, ids=ids(FILES))
    def test_rendered_with_line_and_caret(self, path):
        failed = failures(path)
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        for error in failed.errors:
            assert isinstance(error, SpecError) and error.span.file == path
            shown = render(error, failed.sources).split("\n")
            assert shown[0].startswith(f"{path}:{error.span.line}:{error.span.col}: error: ")
            assert shown[1].endswith(lines[error.span.line - 1])
            caret = shown[2]
            assert set(caret.strip()) == {"^"}
            # the caret sits under the column the error names
            assert caret.index("^") - shown[1].index("| ") - 2 == error.span.col - 1


class TestCommandLine:
    @pytest.mark.parametrize("name", CLI_SAMPLE)
    def test_check_exits_1_with_located_errors(self, name):
        path = os.path.join("tests", "errors", name)
        result = netc("check", path)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        for line, col, words in expectations(path)["expect"]:
            assert f"{path}:{line}:{col}: error: " in result.stderr
            assert words in result.stderr

    def test_every_spec_in_one_run(self):
        """Each file is reported, with all its errors, and one bad file does not stop the rest."""
        paths = [os.path.relpath(p, ROOT) for p in FILES]
        result = netc("check", *paths, os.path.join("specs", "mlp.net"))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        for path in paths:
            for line, col, _ in expectations(path)["expect"]:
                assert f"{path}:{line}:{col}: error: " in result.stderr
        assert "specs/mlp.net: ok" in result.stdout

    def test_several_errors_are_counted(self):
        result = netc("check", os.path.join("tests", "errors", "multi_shapes.net"))
        assert result.returncode == 1 and "2 errors" in result.stderr

    def test_missing_file(self, tmp_path):
        missing = tmp_path / "nope.net"
        result = netc("check", str(missing))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "no such file" in result.stderr and str(missing) in result.stderr

    def test_directory(self, tmp_path):
        result = netc("check", str(tmp_path))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "is a directory" in result.stderr

    def test_binary_file(self, tmp_path):
        path = tmp_path / "model.net"
        path.write_bytes(bytes(range(256)) * 4 + b"\0\0\x89PNG")
        result = netc("check", str(path))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "binary file" in result.stderr

    def test_invalid_utf8(self, tmp_path):
        path = tmp_path / "latin1.net"
        path.write_bytes("# caf\u00e9 model\ninput x : [64]\n".encode("latin-1"))
        result = netc("check", str(path))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "not UTF-8" in result.stderr

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.net"
        path.write_text("")
        result = netc("check", str(path))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"{path}:1:1: error: " in result.stderr

    def test_bad_flag(self):
        result = netc("compile", "specs/mlp.net", "--batch", "zero")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "--batch" in result.stderr and "'zero'" in result.stderr

    def test_unknown_command(self):
        result = netc("chek", "specs/mlp.net")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "chek" in result.stderr

    def test_compile_of_a_bad_spec(self):
        path = os.path.join("tests", "errors", "unknown_layer.net")
        result = netc("compile", path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"{path}:" in result.stderr


LABELLED = [(label, snippet) for label, (_, _, snippets) in CATALOGUE.items() for snippet in snippets]
# what may come before a snippet: the parser's state must not depend on it
PREFIXES = ["", "network n\n", "network n\ninput a : [3]\ntarget b : [3]\n\n"]


class TestCatalogue:
    @pytest.mark.parametrize("label, snippet", LABELLED, ids=[f"{l}:{s!r}" for l, s in LABELLED])
    @pytest.mark.parametrize("prefix", PREFIXES, ids=["first", "second", "later"])
    def test_each_snippet_gets_its_label(self, label, snippet, prefix):
        message = CATALOGUE[label][0]
        with pytest.raises(SpecError) as info:
            parse(prefix + snippet, "bad.net")
        assert info.value.message.startswith(message.split("{found}")[0]), info.value.message

    @pytest.mark.parametrize("label", sorted(CATALOGUE))
    def test_each_label_says_what_it_found(self, label):
        message = CATALOGUE[label][0]
        with pytest.raises(SpecError) as info:
            parse(CATALOGUE[label][2][0], "bad.net")
        if "{found}" in message:
            assert "{found}" not in info.value.message and "found " in info.value.message

    def test_unlabelled_errors_say_what_was_expected(self):
        with pytest.raises(SpecError) as info:
            parse("y = x -> relu )\n", "bad.net")
        assert info.value.message == "unexpected ')'; expected end of file or end of line"


class TestSyntaxLocations:
    """Where a syntax error is reported when the parser only notices it later."""

    def error(self, text):
        with pytest.raises(SpecError) as info:
            parse(text, "bad.net")
        return info.value

    def test_unclosed_call_points_where_the_paren_belongs(self):
        error = self.error("y = x -> dense(10   # units\n\nz = y\n")
        assert (error.span.line, error.span.col) == (1, 18) and "line 3" in error.message

    def test_unclosed_call_inside_a_call(self):
        error = self.error("y = concat(a,\n   relu(b)\nz = y\n")
        assert (error.span.line, error.span.col) == (2, 11) and "'(' is not closed" in error.message
        assert "line 1, column 11" in error.hint

    def test_a_later_mistake_inside_brackets_is_not_an_unclosed_bracket(self):
        error = self.error("y = concat(a,\n   b c)\n")
        assert (error.span.line, error.span.col) == (2, 6) and "unexpected 'c'" in error.message

    def test_continued_pipeline_is_not_a_dangling_arrow(self):
        error = self.error("y = x ->\n   dense(4 4)\n")
        assert "must be followed" not in error.message and (error.span.line, error.span.col) == (2, 12)

    def test_closing_brace_of_a_block_on_the_same_line(self):
        assert parse("block b(n) { in x\n out x }\n").items

    def test_carriage_returns_and_form_feeds_keep_lines(self):
        error = self.error("input x : [3]\r\n\x0c\r\ny = x ->\r\n")
        assert error.span.line == 3
