"""The environment's on/off switches (netdsl/switches.py): every NETDSL_ switch of the
compiler and the runtime is read through `flag`, keeps its default, takes 1 and 0, and
stops at any other value with a message naming the variable and the fix (netc: one
line, exit code 1, no traceback). No module reads a NETDSL_ switch past `flag`."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_netc
from netdsl.switches import SwitchError, choice, flag

# variable -> (the expression that reads it in a fresh process, its default)
SWITCHES = {
    "NETDSL_WHOLE_STATEMENTS": ("fast_parse._runs_of_statements()", True),
    "NETDSL_BN_PASSES": ("lower_native.LEAN_PASSES", True),
    "NETDSL_CONV_CHAINS": ("conv_chain.ABSORB", True),
    "NETDSL_NATIVE_DENSE": ("conv_chain.GEMM_CHAINS", False),
    "NETDSL_WINOGRAD_SHARE": ("native_conv.WINOGRAD_SHARE", True),
    "NETDSL_WINOGRAD_BACK_IN_C": ("native_conv.WINOGRAD_BACK_IN_C", True),
    "NETDSL_WINOGRAD_LEAN": ("native_conv.WINOGRAD_LEAN", True),
    "NETDSL_WINOGRAD_SLAB_A_THREAD": ("native_conv.WINOGRAD_SLAB_A_THREAD", True),
    "NETDSL_VERIFY": ("pipeline_verifies()", False),
    "NETDSL_C_SLABS": ("slabs.C_SLABS", False),
    "NETDSL_NATIVE_POOLING": ("pooling.COMPILED", True),
    "NETDSL_POOLING_TIMED": ("pooling.TIMED", True),
    "NETDSL_POOLING_WIDE_TIMED": ("pooling.WIDE_TIMED_ANYWHERE", False),
    "NETDSL_CONV_DIRECT_TIMED": ("conv.DIRECT_TIMED_ANYWHERE", False),
    "NETDSL_CONV_CHOICE_MEMO": ("conv.CHOICE_MEMO", True),
    "NETDSL_LOOP_POOL": ("loops.LOOP_POOL", True),
    "NETDSL_PARK_BLAS": ("loops.PARK_BLAS", True),
    "NETDSL_LOOP_STEP_POOL": ("loops.STEP_POOL", True),
    "NETDSL_LOOP_PACK": ("loops.LOOP_PACK", True),
    "NETDSL_LOOP_ZERO_START": ("loops.ZERO_START", True),
    "NETDSL_NATIVE": ("toolchain.compiler() is not None", True),
    "NETDSL_DENSE_PICK": ("dense.PICK", True),
    "NETDSL_BLAS_WAKE": ("blas.WAKE", False),
    "NETDSL_BLAS_COUNT_DIRECT": ("__import__('netdsl.runtime.host').runtime.host.DIRECT_COUNT",
                                 True),
    "NETDSL_ARENA": ("memory.ARENA", False),
    "NETDSL_KEEP_SCRATCH": ("slabs.KEEP_SCRATCH", False),
}

# settings of more than two ways, read through `choice`: variable -> (the expression that
# reads it in a fresh process, its default, the values it takes)
CHOICES = {
    "NETDSL_LAYOUT": ("layout.MODE", "auto", ("nchw", "auto", "nhwc")),
}

_READ = """
import sys
from netdsl import fast_parse
from netdsl.lower import conv_chain, layout, memory, native_conv, pipeline
from netdsl.lower import native as lower_native
from netdsl.runtime.native import blas, conv, dense, loops, pooling, slabs, toolchain

def pipeline_verifies():
    seen = []
    real = pipeline.verify_plan
    pipeline.verify_plan = lambda *a, **k: seen.append(a) or real(*a, **k)
    from netdsl.driver import check_file
    pipeline.lower(check_file("specs/perceptron.net"), "host")
    return bool(seen)

print(eval(sys.argv[1]))
"""


def _read(expression: str, **variables) -> subprocess.CompletedProcess:
    """`expression` evaluated in a fresh process with `variables` set in its environment
    (and no other NETDSL_ switch)."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES and k not in CHOICES}
    env.update(PYTHONPATH=str(ROOT), **variables)
    return subprocess.run([sys.executable, "-c", _READ, expression], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_every_switch_keeps_its_default_and_takes_1_and_0():
    expressions = ", ".join(expression for expression, _ in SWITCHES.values())
    done = _read(f"[{expressions}]")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([default for _, default in SWITCHES.values()])
    for value in ("0", "1"):
        done = _read(f"[{expressions}]", **dict.fromkeys(
            [name for name in SWITCHES if name != "NETDSL_NATIVE" or value == "1"], value))
        assert done.returncode == 0, done.stderr
        want = [value == "1" for name in SWITCHES if name != "NETDSL_NATIVE" or value == "1"]
        got = eval(done.stdout)
        if value == "0":   # NETDSL_NATIVE=0 leaves nothing to compile: read on its own
            got.pop(list(SWITCHES).index("NETDSL_NATIVE"))
        assert got == want


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_every_choice_keeps_its_default_takes_its_values_and_stops_at_others(name):
    expression, default, values = CHOICES[name]
    done = _read(expression)
    assert done.returncode == 0 and done.stdout.strip() == default, done.stderr
    for value in values:
        done = _read(expression, **{name: value})
        assert done.returncode == 0 and done.stdout.strip() == value, done.stderr
    done = _read(expression, **{name: "yes"})
    assert done.returncode != 0
    assert f"SwitchError: {name}='yes': expected one of {', '.join(values)}" in done.stderr


def test_choice_reads_its_values_and_unset(monkeypatch):
    monkeypatch.delenv("NETDSL_SOME_CHOICE", raising=False)
    assert choice("NETDSL_SOME_CHOICE", ("a", "b"), "a") == "a"
    monkeypatch.setenv("NETDSL_SOME_CHOICE", " b ")
    assert choice("NETDSL_SOME_CHOICE", ("a", "b"), "a") == "b"
    monkeypatch.setenv("NETDSL_SOME_CHOICE", "c")
    with pytest.raises(SwitchError, match="NETDSL_SOME_CHOICE='c'"):
        choice("NETDSL_SOME_CHOICE", ("a", "b"), "a")


def test_native_off_turns_the_compiler_off():
    done = _read("toolchain.compiler()", NETDSL_NATIVE="0")
    assert done.returncode == 0 and done.stdout.split() == ["None"], done.stderr


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_a_value_a_switch_does_not_take_stops_with_its_name_and_fix(name):
    done = _read(SWITCHES[name][0], **{name: "yes"})
    assert done.returncode != 0
    assert f"SwitchError: {name}='yes': expected 1 (on) or 0 (off)" in done.stderr


def test_flag_reads_1_0_and_unset(monkeypatch):
    monkeypatch.delenv("NETDSL_SOME_SWITCH", raising=False)
    assert flag("NETDSL_SOME_SWITCH", True) and not flag("NETDSL_SOME_SWITCH", False)
    for value, want in (("1", True), (" 0 ", False), ("", True)):
        monkeypatch.setenv("NETDSL_SOME_SWITCH", value)
        assert flag("NETDSL_SOME_SWITCH", True) is want
    monkeypatch.setenv("NETDSL_SOME_SWITCH", "on")
    with pytest.raises(SwitchError, match="NETDSL_SOME_SWITCH='on'"):
        flag("NETDSL_SOME_SWITCH", True)


@pytest.mark.parametrize("name, command", [
    ("NETDSL_WHOLE_STATEMENTS", ("check", "specs/mlp.net")),      # read as a spec is read
    ("NETDSL_CONV_CHAINS", ("run", "specs/lenet5.net", "--native", "--steps", "1")),
    ("NETDSL_POOLING_TIMED", ("run", "specs/lenet5.net", "--native", "--steps", "1")),
    ("NETDSL_LOOP_PACK", ("run", "specs/elman.net", "--native", "--steps", "1")),
    ("NETDSL_NATIVE", ("run", "specs/mlp.net", "--native", "--steps", "1"))])
def test_netc_names_a_bad_switch_value_in_one_line(name, command, monkeypatch):
    for other in SWITCHES:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "2")
    done = run_netc(*command)
    assert done.returncode == 1, done.stderr
    assert f"{name}='2': expected 1 (on) or 0" in done.stderr
    assert f"hint: set {name} to 1 or 0, or unset it" in done.stderr
    assert "Traceback" not in done.stderr


def _sources():
    """The text of every Python module of the compiler and the runtime."""
    for folder in ("netdsl", "runtime"):
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                if file.endswith(".py"):
                    with open(os.path.join(root, file)) as handle:
                        yield handle.read()


def test_no_module_reads_a_switch_past_flag():
    """A NETDSL_ variable read straight from os.environ is a path, a folder or a name,
    never an on/off switch (those go through `flag`, and are listed above) nor a setting
    of more ways (through `choice`, listed in CHOICES)."""
    allowed = {"NETDSL_CACHE", "NETDSL_DENSE_GEMM"}   # a folder; a switch that is gone
    read = re.compile(r"environ(?:\.get)?\(\s*\"(NETDSL_\w+)\"|environ\[\"(NETDSL_\w+)\"\]")
    found, flags, choices = set(), set(), set()
    for text in _sources():
        found.update(match[1] or match[2] for match in read.finditer(text))
        flags.update(re.findall(r"flag\(\"(NETDSL_\w+)\"", text))
        choices.update(re.findall(r"choice\(\"(NETDSL_\w+)\"", text))
    assert found <= allowed, found - allowed
    assert flags == set(SWITCHES), flags ^ set(SWITCHES)
    assert choices == set(CHOICES), choices ^ set(CHOICES)
