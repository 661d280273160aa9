"""Quoted imports read only the spec's own folder tree (and folders the user adds): a spec
cannot make netdsl open, or quote in an error, a file that is not a spec."""
import os

import pytest

from conftest import cli_main
from netdsl import cli
from netdsl.driver import CheckFailed, check_file, check_text
from netdsl.imports import ENV_VAR
from netdsl.tui.checking import check_and_draw

BLOCK = "block twice(n) {\n  in x\n  y = x -> dense(n) -> dense(n)\n  out y\n}\n"
SECRET = "root:x:0:0:root:/root:/bin/bash\n"


def spec(imported: str, name: str = "a") -> str:
    return (f'network {name}\nimport "{imported}"\ninput x : [4]\ntarget t : [2]\n'
            f'loss mse(x -> twice(2), t)\n')


@pytest.fixture
def tree(tmp_path):
    """project/a.net beside project/lib.net, and outside/ with a block and a non-spec."""
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    (project / "lib.net").write_text(BLOCK)
    (outside / "lib.net").write_text(BLOCK)
    (outside / "passwd").write_text(SECRET)
    return project, outside


def messages(exc: CheckFailed) -> list[str]:
    return [e.message + " " + (e.hint or "") for e in exc.errors]


def test_a_sibling_and_a_subfolder_are_importable(tree):
    project, _ = tree
    (project / "sub").mkdir()
    (project / "sub" / "more.net").write_text(BLOCK.replace("twice", "more"))
    (project / "a.net").write_text(spec("lib.net").replace(
        'import "lib.net"', 'import "lib.net"\nimport "sub/more.net"'))
    assert check_file(str(project / "a.net")).graph.number_of_nodes() > 0


def test_an_import_outside_the_tree_is_refused_with_the_way_to_allow_it(tree):
    project, outside = tree
    (project / "a.net").write_text(spec("../outside/lib.net"))
    with pytest.raises(CheckFailed) as caught:
        check_file(str(project / "a.net"))
    text = messages(caught.value)[0]
    assert "outside the folders imports may read" in text
    assert f"--import-path {outside}" in text and ENV_VAR in text
    assert str(outside / "lib.net") not in caught.value.sources  # never read


def test_the_import_path_and_the_environment_widen_it(tree, monkeypatch):
    project, outside = tree
    (project / "a.net").write_text(spec(str(outside / "lib.net")))
    assert check_file(str(project / "a.net"), [str(outside)]).name == "a"
    monkeypatch.setenv(ENV_VAR, str(outside))
    assert check_file(str(project / "a.net")).name == "a"


def test_a_file_that_is_not_a_spec_is_never_read_or_quoted(tree):
    project, outside = tree
    (project / "a.net").write_text(spec(str(outside / "passwd")))
    for widened in ([], [str(outside)]):  # outside the tree, then allowed but not a .net file
        with pytest.raises(CheckFailed) as caught:
            check_file(str(project / "a.net"), widened)
        assert all(SECRET.strip() not in source for source in caught.value.sources.values())
        assert messages(caught.value)[0].startswith("cannot import")
    # nor through a link that looks like a spec
    os.symlink(outside / "passwd", project / "link.net")
    (project / "b.net").write_text(spec("link.net", "b"))
    for widened in ([], [str(outside)]):
        with pytest.raises(CheckFailed) as caught:
            check_file(str(project / "b.net"), widened)
        assert all(SECRET.strip() not in source for source in caught.value.sources.values())


def test_etc_passwd_on_the_command_line(tree):
    project, _ = tree
    (project / "p.net").write_text('network p\nimport "/etc/passwd"\n' + spec("lib.net")[10:])
    done = cli_main("check", "p.net", cwd=str(project))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot import '/etc/passwd'" in done.stderr and "--import-path /etc" in done.stderr
    assert "root:" not in done.stderr
    done = cli_main("check", "p.net", "--import-path", "/etc", cwd=str(project))
    assert "only .net spec files can be imported" in done.stderr and "root:" not in done.stderr


def test_dot_slash_and_plain_names_check_alike(tree):
    """A spec importing a sibling that imports the spec back is one file, however named."""
    project, _ = tree
    (project / "a.net").write_text(spec("lib.net").replace(
        'import "lib.net"', 'import "lib.net"\nimport "a.net"'))
    outputs = [cli_main("check", name, cwd=str(project)) for name in ("a.net", "./a.net")]
    assert [done.returncode for done in outputs] == [0, 0], outputs[1].stderr
    assert check_file(str(project / "a.net")).param_count() == \
        check_file(os.path.join(str(project), ".", "a.net")).param_count()


def test_the_builder_confines_imports_as_check_does(tree):
    project, outside = tree
    text = spec("../outside/lib.net")
    refused = check_and_draw(text, str(project / "a.net"), frozenset(), False)
    assert refused.network is None and "outside the folders" in refused.first_error
    allowed = check_and_draw(text, str(project / "a.net"), frozenset(), False, [str(outside)])
    assert allowed.network is not None, allowed.first_error
    # an untitled spec imports from the working folder's tree, like <spec> text
    with pytest.raises(CheckFailed):
        check_text(spec("/etc/hostname.net"), "<spec>")


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_an_import_path_that_is_not_a_folder_is_a_usage_error(tree, kind, capsys):
    project, outside = tree
    (project / "a.net").write_text(spec("lib.net"))
    given = str(outside / "nothing") if kind == "missing" else str(outside / "passwd")
    with pytest.raises(SystemExit) as exited:
        cli.main(["check", str(project / "a.net"), "--import-path", given])
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    why = f"no such folder: {given}" if kind == "missing" else f"{given} is a file, not a folder"
    assert last == f"netc check: error: argument --import-path: {why}"


def test_environment_entries_that_are_not_folders_are_warned_about(tree, monkeypatch, capsys):
    project, outside = tree
    (project / "a.net").write_text(spec("lib.net"))
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(outside / "nothing"), str(outside),
                                                 str(outside / "passwd")]))
    assert cli.main(["check", str(project / "a.net")]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {ENV_VAR}: no such folder: {outside / 'nothing'}; imports cannot read from it",
        f"warning: {ENV_VAR}: {outside / 'passwd'} is a file, not a folder; imports cannot "
        "read from it"]
    assert cli.main(["runs", str(project)]) == 0  # a command that reads no spec: no word
    assert "warning" not in capsys.readouterr().err
