"""Errors people see: every bad spec in tests/errors is reported where it is wrong, in words.

Each tests/errors/*.net holds one kind of mistake (a few hold two independent ones) and
names what it expects in its header:

    # expect: LINE:COL: a substring of the message
    # hint: LINE:COL: a substring of the hint
    # note: LINE:COL: NOTE_LINE:NOTE_COL: a substring of a note of the error at LINE:COL

An error inside a block body carries one note per call on the way in, innermost first;
`note:` lines list them in that order.

The set of reported places must equal the expected set: a missing report is a bug, and so
is an extra one (usually a mistake reported twice, or a consequence of it).
"""
import glob
import os
import re
import subprocess
import sys

import pytest

from netdsl.driver import CheckFailed, check_file, check_text
from netdsl.errors import SpecError, render
from netdsl.parse import parse
from netdsl.syntax_errors import CATALOGUE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERRORS = os.path.join(ROOT, "tests", "errors")
FILES = sorted(glob.glob(os.path.join(ERRORS, "*.net")))
HEADER = re.compile(r"^#\s*(expect|hint):\s*(\d+):(\d+):\s*(.+?)\s*$", re.M)
NOTE = re.compile(r"^#\s*note:\s*(\d+):(\d+):\s*(\d+):(\d+):\s*(.+?)\s*$", re.M)
# files that cannot carry a header
ELSEWHERE = {"empty.net": {"expect": [(1, 1, "the spec defines no network")], "hint": [], "note": []}}
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
    found = {"expect": [], "hint": [], "note": []}
    for kind, line, col, words in HEADER.findall(text):
        found[kind].append((int(line), int(col), words))
    for line, col, note_line, note_col, words in NOTE.findall(text):
        found["note"].append((int(line), int(col), int(note_line), int(note_col), words))
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
    def test_call_site_notes(self, path):
        """The notes of each error with expected notes are exactly those, innermost call first."""
        failed = failures(path)
        expected: dict[tuple[int, int], list] = {}
        for line, col, note_line, note_col, words in expectations(path)["note"]:
            expected.setdefault((line, col), []).append((note_line, note_col, words))
        for error in failed.errors:
            wanted = expected.get((error.span.line, error.span.col))
            if wanted is None:
                continue
            got = [(where.line, where.col, text) for text, where in error.notes]
            assert [(l, c) for l, c, _ in got] == [(l, c) for l, c, _ in wanted], got
            for (_, _, text), (_, _, words) in zip(got, wanted):
                assert words in text, (words, text)
            assert all(where.file == path for _, where in error.notes)

    @pytest.mark.parametrize("path", FILES, ids=ids(FILES))
    def test_internal_names_only_with_a_location(self, path):
        """Instance names made by expansion (basic2, stage1/basic1) appear only with a note."""
        failed = failures(path)
        for error in failed.errors:
            if error.notes:
                continue
            # the spec's own path (a checkout's folder may be named like an instance) aside
            said = (error.message + (error.hint or "")).replace(os.path.dirname(path), "")
            assert not re.search(r"\b[a-z_]+[0-9]+/", said), error.message

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
            notes = [row for row in shown[3:] if row.startswith("  note: ")]
            assert notes == [f"  note: {text} at {where}" for text, where in error.notes]


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
# the statements that may also stand in a block body or a loop
IN_BODIES = [(label, snippet, where) for label, snippet in LABELLED
             if label in ("missing value", "dangling arrow", "arguments without parentheses",
                          "trailing comma") and snippet.startswith("y = ")
             for where in ("block", "loop") + (("out", "loss") if snippet.count("\n") == 1 else ())]
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

    @pytest.mark.parametrize("label, snippet, where", IN_BODIES,
                             ids=[f"{l}:{s!r}:{w}" for l, s, w in IN_BODIES])
    def test_a_statement_reads_the_same_in_a_body(self, label, snippet, where):
        """A mistake in a block body, a loop, or the value of `out` or `loss` gets its label."""
        indented = "".join(f"  {line}\n" for line in snippet.splitlines())
        value = snippet[len("y = "):].strip()
        text = {"block": f"block b(n) {{\n  in x\n{indented}  out x\n}}\n",
                "loop": f"input x : [3]\nfor i in 1..2 {{\n{indented}}}\n",
                "out": f"block b(n) {{\n  in x\n  out {value}\n}}\n",
                "loss": f"input x : [3]\nloss {value}\n"}[where]
        with pytest.raises(SpecError) as info:
            parse(text, "bad.net")
        assert info.value.message.startswith(CATALOGUE[label][0].split("{found}")[0]), info.value.message

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


class TestCallSiteNotes:
    def test_an_error_inside_a_stdlib_block_notes_the_call_in_the_spec(self, tmp_path):
        spec = tmp_path / "std.net"
        spec.write_text("import rnn\ninput x : seq[4]\ntarget y : class(2)\n"
                        "logits = x -> lstm(2.5) -> last -> dense(2)\nloss cross_entropy(logits, y)\n")
        (error,) = failures(str(spec)).errors
        assert error.span.file == "<stdlib>/rnn.net" and "a dimension must be a whole number" in error.message
        (note, where), = error.notes
        assert note == "in lstm(2.5)" and (where.file, where.line, where.col) == (str(spec), 4, 15)

    def test_each_repetition_is_named_with_its_stage(self):
        text = ("input x : [3, 8, 8]\ntarget y : class(2)\nblock down(c) {\n  in x\n"
                "  out x -> conv(c, 3, stride=2, pad=1) -> maxpool(2)\n}\n"
                "h = x -> down(4) x 3\nloss cross_entropy(h -> flatten -> dense(2), y)\n")
        with pytest.raises(CheckFailed) as info:
            check_text(text, "r.net")
        (error,) = info.value.errors
        assert error.notes[0][0] == "in down(4), the 2nd repetition of 'down(4) x 3'"
        rendered = render(error, info.value.sources)
        assert "  note: in down(4), the 2nd repetition of 'down(4) x 3' at r.net:7:10" in rendered


class TestCarets:
    """The caret sits under the offending name, and only under it."""

    @pytest.mark.parametrize("name, under", [("unknown_keyword_capitalised.net", "Stride"),
                                             ("block_parameter_misspelt.net", "hiden"),
                                             ("train_schedule_setting_misspelt.net", "Every"),
                                             ("multi_target_unused.net", "g"),
                                             ("multi_target_constant.net", "true"),
                                             ("syntax_misspelt_network.net", "netwrok")])
    def test_under_the_name(self, name, under):
        path = os.path.join(ERRORS, name)
        failed = failures(path)
        (error,) = failed.errors
        line = failed.sources[path].split("\n")[error.span.line - 1]
        assert line[error.span.col - 1:error.span.end_col] == under


def test_a_lone_surrogate_renders_as_an_escape():
    """Text with a lone surrogate (pasted into the builder) renders to a string every
    stream can write, instead of failing with UnicodeEncodeError."""
    from netdsl.driver import CheckFailed, check_text

    with pytest.raises(CheckFailed) as caught:
        check_text("input x : [4]\nh = x -> dense(3) -> \ud800\n", "s.net")
    shown = "\n".join(render(e, caught.value.sources) for e in caught.value.errors)
    assert "\\ud800" in shown
    shown.encode("utf-8")   # raised UnicodeEncodeError before
