"""Checking's quick paths against the paths they replaced: every spec in specs/ and every
mistake in tests/errors checks to the same program, graph and errors with the switches
on (the default) and off.

- `expand.SHARE_OPS`: a network's layers called alike share one op;
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
SWITCHES = ((expand_pass, "SHARE_OPS"), (graph_pass, "SHARED_DATA"))


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

