"""The real `netc tui` in tmux, as a new user meets it: an error, its fix, the keys (`?`),
a node found with the palette, a move with vi's k, a layer, a save."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import run_netc

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="needs tmux (make test installs it)")
NETC = os.path.join(os.path.dirname(sys.executable), "netc")


def tmux(*args: str) -> str:
    return subprocess.run([TMUX, *args], capture_output=True, text=True, check=True).stdout


def wait_for(session: str, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {text!r}; the screen was:\n{screen}")
        time.sleep(0.2)


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        time.sleep(0.2)


def test_error_fix_insert_save_check(tmp_path):
    spec = tmp_path / "mine.net"
    spec.write_text("input x : [64]\ntarget y : class(10)\n"
                    "logits = x -> dense(10)\nloss cross_entropy(logits, y)\n")
    session = f"netc-tui-{os.getpid()}"
    env = f"NETDSL_STATE={tmp_path / 'state'} TERM=xterm-256color"
    if os.environ.get("PYTHONPATH"):  # a checkout run in place: its code, from tmp_path too
        paths = os.environ["PYTHONPATH"].split(os.pathsep)
        env += f" PYTHONPATH={os.pathsep.join(os.path.abspath(p) for p in paths)}"
    tmux("new-session", "-d", "-s", session, "-x", "140", "-y", "40",
         f"cd {tmp_path} && env {env} {NETC} tui mine.net")
    try:
        wait_for(session, "ok: mine")
        time.sleep(1.0)  # the terminal's key protocol is negotiated after the first frame
        # type an error at the end of line 3: `-> rleu`
        for key in ("Down", "Down", "C-e"):
            tmux("send-keys", "-t", session, key)
            time.sleep(0.2)
        tmux("send-keys", "-t", session, "-l", " -> rleu")
        screen = wait_for(session, "unknown layer 'rleu'")
        assert "●" in screen
        for _ in range(4):
            tmux("send-keys", "-t", session, "BSpace")
            time.sleep(0.1)
        tmux("send-keys", "-t", session, "-l", "relu")
        wait_for(session, "ok: mine")
        # insert a layer from the graph: select dense1, i, pick dropout, accept p
        tmux("send-keys", "-t", session, "Tab")
        wait_for(session, "node    logits")  # the node the text cursor was in
        time.sleep(0.3)
        tmux("send-keys", "-t", session, "Up")
        wait_for(session, "node    dense1")  # the graph has the keys now
        tmux("send-keys", "-t", session, "-l", "?")  # the keys, listed from the bindings
        wait_for(session, "Keys (escape closes")
        wait_for(session, "Insert after")
        tmux("send-keys", "-t", session, "Escape")
        time.sleep(0.3)
        tmux("send-keys", "-t", session, "C-p")  # the palette finds a node by its op
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "-l", "relu")
        wait_for(session, "logits  relu")
        tmux("send-keys", "-t", session, "Enter")
        wait_for(session, "node    logits")
        tmux("send-keys", "-t", session, "-l", "k")  # up, as vi moves
        wait_for(session, "node    dense1")
        tmux("send-keys", "-t", session, "i")
        wait_for(session, "Insert which layer?")
        tmux("send-keys", "-t", session, "-l", "dropout")
        tmux("send-keys", "-t", session, "Enter")
        wait_for(session, "Insert dropout after dense1")
        tmux("send-keys", "-t", session, "-l", "0.25")
        tmux("send-keys", "-t", session, "Enter")
        wait_for(session, "inserted dropout(p=0.25) after dense1")
        time.sleep(0.5)  # let the form close and the editor take the keys again
        tmux("send-keys", "-t", session, "C-s")
        # the file itself is the proof: the status line's "saved" may be replaced by the
        # next check's message before a capture sees it
        wait_until(lambda: "dropout" in spec.read_text(), "the spec saved with the dropout")
        tmux("send-keys", "-t", session, "C-q")
        time.sleep(1.0)
    finally:
        subprocess.run([TMUX, "kill-session", "-t", session], capture_output=True)
    text = spec.read_text()
    assert "logits = x -> dense(10) -> dropout(p=0.25) -> relu\n" in text
    result = run_netc("check", str(spec))
    assert result.returncode == 0, result.stderr
