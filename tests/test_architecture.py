"""The layers of netdsl (docs/architecture.md) and their boundaries.

    compiler (netdsl/)  <  runtime (runtime/)  <  application (netdsl/app/)  <  builder (tui/)
    <  command line (netdsl/cli.py)

A module imports modules of its own layer or of the layers below it; and an import
inside a function says why it is there, in a comment on its line or the line above (an
optional dependency, a heavy one only one command needs), since a hidden import hides a
dependency or a cycle.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# where each installed package lives (pyproject's package-dir)
FOLDERS = {"netdsl": ROOT / "netdsl", "netdsl.runtime": ROOT / "runtime",
           "netdsl.tui": ROOT / "tui"}
LAYERS = ("compiler", "runtime", "application", "builder", "command line")


def module_name(path: Path) -> str:
    for package, folder in sorted(FOLDERS.items(), key=lambda item: -len(item[0])):
        if folder in path.parents:
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            return ".".join((package, *parts))
    raise ValueError(path)


def layer(module: str) -> int:
    """The index in LAYERS of a project module's layer."""
    if module == "netdsl.cli":
        return 4
    for prefix, index in (("netdsl.tui", 3), ("netdsl.app", 2), ("netdsl.runtime", 1)):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return 0


def sources():
    for folder in FOLDERS.values():
        for path in sorted(folder.rglob("*.py")):
            if ".venv" not in path.parts:
                yield path


def imports(path: Path):
    """(line number, imported project module, inside a function) of each import."""
    tree = ast.parse(path.read_text())
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        yield node.lineno, names, id(node) in inner


def project_module(names: list[str]) -> str | None:
    """The deepest project module among an import's names (`from netdsl import lower`
    imports netdsl.lower)."""
    known = {module_name(p) for p in sources()}
    found = [n for n in names if n in known]
    return max(found, key=len) if found else None


SOURCES = list(sources())


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_crosses_a_boundary_upwards(path):
    mine = layer(module_name(path))
    for lineno, names, _ in imports(path):
        target = project_module(names)
        if target is not None and layer(target) > mine:
            pytest.fail(f"{path.relative_to(ROOT)}:{lineno}: the {LAYERS[mine]} imports "
                        f"{target}, of the {LAYERS[layer(target)]} above it")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_an_import_inside_a_function_says_why(path):
    lines = path.read_text().split("\n")
    for lineno, names, inside in imports(path):
        said = "#" in lines[lineno - 1] or lines[lineno - 2].strip().startswith("#")
        if inside and not said:
            pytest.fail(f"{path.relative_to(ROOT)}:{lineno}: an import inside a function "
                        f"({lines[lineno - 1].strip()}) without a comment saying why")


def test_the_rules_can_fail():
    """The layer of a module and the direction of an import are read as intended."""
    assert layer("netdsl.lower.plan") < layer("netdsl.runtime.execute")
    assert layer("netdsl.runtime.execute") < layer("netdsl.app.session")
    assert layer("netdsl.app.session") < layer("netdsl.tui.app") < layer("netdsl.cli")
    assert module_name(ROOT / "runtime" / "cuda" / "launch.py") == "netdsl.runtime.cuda.launch"
    assert project_module(["netdsl", "netdsl.lower"]) == "netdsl.lower"


def test_the_compiler_loads_without_the_runtime():
    """Checking and lowering a spec loads no module of the runtime (nor NumPy's GPU twin)."""
    code = ("import sys; from netdsl.driver import check_file; from netdsl.lower import lower; "
            "from netdsl.lower import printers; from netdsl import draw, fmt, report; "
            f"lower(check_file({str(ROOT / 'specs' / 'lstm.net')!r}), 'cuda'); "
            "print(sorted(m for m in sys.modules if m.startswith('netdsl.runtime') "
            "or m.split('.')[0] in ('cupy', 'torch', 'textual')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_checking_loads_neither_the_back_end_nor_lark():
    """`netc check` of a spec the quick parser reads imports the front end alone: the back
    end, the runtime and Lark are imported by the commands and the parses that need them."""
    code = ("import sys; from netdsl.cli import main; "
            f"code = main(['check', '--quiet', {str(ROOT / 'specs' / 'lstm.net')!r}]); "
            "print(code, sorted({m.split('.')[0] if m.split('.')[0] != 'netdsl' else m "
            "for m in sys.modules if m.startswith(('netdsl.lower', 'netdsl.report', "
            "'netdsl.diff', 'netdsl.runtime', 'netdsl.completion', 'lark'))}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 []"
