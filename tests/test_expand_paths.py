"""Checking's quick paths against the paths they replaced: every spec in specs/ and every
mistake in tests/errors checks to the same program, graph and errors with the switches
on (the default) and off.

- `expand.SHARE_OPS`: a network's layers called alike share one op;
- `expand.REPLAY_BLOCKS`: a block call equal to an earlier one replays its nodes;
- `expand.REUSE_STAGE_OPS`: a stage of numbers written out takes an equal stage's op;
- `graph.SHARED_DATA`: a node's data is its NodeDef, equal edges share their data.
"""
import glob
import os

import pytest

from netdsl import expand as expand_pass
from netdsl import graph as graph_pass
from netdsl.driver import CheckFailed, check_file, check_text
from netdsl.emit import format_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "specs", "*.net"))
               + glob.glob(os.path.join(ROOT, "tests", "errors", "*.net")))
SWITCHES = ((expand_pass, "SHARE_OPS"), (expand_pass, "REPLAY_BLOCKS"),
            (expand_pass, "REUSE_STAGE_OPS"), (graph_pass, "SHARED_DATA"))


def outcome(path: str):
    """What checking a file gives, as plain values: its errors, or its program's text,
    its graph's nodes, data and edges, and its parameter count."""
    try:
        net = check_file(path)
    except CheckFailed as failed:
        return [(e.message, e.span, e.hint, e.notes) for e in failed.errors]
    nodes = [(node, data["kind"], data["span"], data["scope"], data["declared"], data["state"],
              data["shares"], tuple(data["inputs"]), data.get("type"), type(data["op"]),
              getattr(data["op"], "attrs", None)) for node, data in net.graph.nodes(data=True)]
    return (format_program(net.program), nodes, list(net.graph.edges(data=True)),
            net.param_count(), net.graph.graph)


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_the_quick_paths_check_as_the_paths_before(path, monkeypatch):
    quick = outcome(path)
    for module, name in SWITCHES:
        monkeypatch.setattr(module, name, False)
    assert outcome(path) == quick


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_each_quick_expansion_path_checks_as_the_path_before(path, monkeypatch):
    quick = outcome(path)
    for name in ("REPLAY_BLOCKS", "REUSE_STAGE_OPS"):
        with monkeypatch.context() as patch:
            patch.setattr(expand_pass, name, False)
            assert outcome(path) == quick, name


def test_layers_called_alike_share_one_op_within_a_network(monkeypatch):
    text = ("input x : [4]\ntarget y : [4]\nblock two(n) {\n  in a\n  out a -> dense(n) -> relu\n}\n"
            "a = x -> dense(4) -> relu\nb = a -> dense(4) -> relu\nc = two(b, 4)\n"
            "d = c -> dense(5) -> dense(4, bias=false)\nloss mse(d, y)\n")
    nodes = check_text(text, "s.net").program.nodes
    ops = {node: data.op for node, data in nodes.items() if data.kind == "op"}
    assert ops["dense1"] is ops["dense2"] is ops["two1/dense1"]  # dense(4) three times
    assert ops["a"] is ops["b"] is ops["two1/relu1"]
    assert ops["dense3"] is not ops["dense1"] and ops["dense3"].units == 5
    assert ops["d"].attrs == {"units": 4, "bias": False} and ops["d"] is not ops["dense1"]
    again = check_text(text, "s.net").program.nodes
    assert again["dense1"].op is not ops["dense1"]  # another network: ops of its own
    monkeypatch.setattr(expand_pass, "SHARE_OPS", False)
    apart = check_text(text, "s.net").program.nodes
    assert apart["dense1"].op is not apart["dense2"].op
    assert apart["dense1"].op.attrs == apart["dense2"].op.attrs == ops["dense1"].attrs



def text_outcome(text: str):
    """`outcome` of a spec given as text."""
    try:
        net = check_text(text, "s.net")
    except CheckFailed as failed:
        return [(e.message, e.span, e.hint, e.notes) for e in failed.errors]
    nodes = [(node, data["kind"], data["span"], data["scope"], data["shares"],
              tuple(data["inputs"]), data.get("type"), type(data["op"]),
              getattr(data["op"], "attrs", None)) for node, data in net.graph.nodes(data=True)]
    return format_program(net.program), nodes, net.program.names, net.param_count()


PAIR = "block pair(n) {\n  in a\n  b = a -> dense(n) -> relu\n  out b + a\n}\n"
REPLAYED = {
    "calls alike, in a loop and repeated": (
        "input x : [4]\ntarget y : [4]\n" + PAIR + "v = pair(x, 4)\nw = pair(v, n=4)\n"
        "for i in 1..3 {\n  w = w -> pair(4)\n}\nz = w -> pair(4) x 3 -> pair(4)\nloss mse(z, y)\n"),
    "an input given twice, and given back": (
        "input x : [4]\ntarget y : [4]\nblock two(k) {\n  in a, b\n  c = a + b -> dense(k)\n"
        "  out c, a\n}\np, q = two(x, x, 4)\nr, s = two(p, q, 4)\nt, u = two(r, r, 4)\n"
        "loss mse(t + u + s, y)\n"),
    "a named instance that takes a call's names": (
        "input x : [4]\ntarget y : [4]\n" + PAIR + "a = pair(x, 4)\nshare pair2 = pair(4)\n"
        "b = a -> pair2\nc = b -> pair(4)\nd = c -> pair(4)\nloss mse(d, y)\n"),
    "a first call that fails, then calls that do not": (
        "input x : [4]\ntarget y : [4]\nblock bad(n) {\n  in a\n  b = a -> dense(n - 4)\n"
        "  out b\n}\nu = bad(x, 4)\nv = bad(x, 5)\nw = bad(v, 5)\nloss mse(w -> dense(4), y)\n"),
    "a call's unused value, every call": (
        "input x : [4]\ntarget y : [4]\nblock spare(n) {\n  in a\n  b = a -> dense(n)\n"
        "  c = a -> relu\n  out b\n}\nu = spare(x, 4)\nv = spare(u, 4)\nloss mse(v, y)\n"),
    "the budget passed in a replayed call": (  # a round's 7 statements and nodes, 2 foreseen
        "input x : [4]\ntarget y : [4]\n" + PAIR + "w = x -> dense(4)\n"
        "for j in 1..300 {\n  w = w -> pair(4)\n}\nloss mse(w, y)\n"),
    "stages alike, and a shared instance with a layer's name": (
        "input x : [4]\ntarget y : [4]\na = x -> dense(4) -> relu -> dense(4.0)\n"
        "b = a -> dense(4) -> scale(2) -> scale(2.0) -> dense(4, bias=false)\nshare relu = dense(4)\n"
        "c = b -> relu -> relu\nloss mse(c + a -> dense(4), y)\n"),
    "names used before they are defined, in a block and a loop": (
        "input x : [4]\ntarget y : [4]\nblock late(n) {\n  in a\n  b = c -> dense(n)\n"
        "  c = a -> relu\n  out b\n}\nfor i in 1..2 {\n  w = v -> relu\n  v = x -> dense(4)\n}\n"
        "z = late(x, 4)\nloss mse(z + u, y)\nu = x -> relu\n"),
}


@pytest.mark.parametrize("text", REPLAYED.values(), ids=REPLAYED.keys())
def test_replayed_calls_check_as_walked_calls(text, monkeypatch):
    monkeypatch.setattr(expand_pass, "EXPANSION_BUDGET", 1000)
    quick = text_outcome(text)
    for name in ("REPLAY_BLOCKS", "REUSE_STAGE_OPS"):
        with monkeypatch.context() as patch:
            patch.setattr(expand_pass, name, False)
            assert text_outcome(text) == quick, name


def test_an_equal_block_call_replays_the_first(monkeypatch):
    text = REPLAYED["calls alike, in a loop and repeated"]
    walked = []
    monkeypatch.setattr(expand_pass._Expander, "_exec_body",
                        lambda self, body, scope, walk=expand_pass._Expander._exec_body:
                        (scope.prefix and walked.append(scope.prefix), walk(self, body, scope))[1])
    nodes = check_text(text, "s.net").program.nodes
    assert walked == ["pair1/", "pair2/"]  # pair(4), then pair(n=4): the others replay
    assert [n for n in nodes if n.startswith("pair6/")] == ["pair6/dense1", "pair6/b", "pair6/add1"]
    assert nodes["pair6/add1"].inputs == [("pair6/b", 0), ("pair5/add1", 0)]
    assert nodes["pair6/b"].scope[-1].call == "pair(4), the 1st repetition of 'pair(4) x 3'"
    monkeypatch.setattr(expand_pass, "REPLAY_BLOCKS", False)
    walked.clear()
    check_text(text, "s.net")
    assert walked == [f"pair{i}/" for i in range(1, 10)]
