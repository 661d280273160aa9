"""What checking costs, counted rather than timed.

Checking grows linearly with the spec. The work of `netc check`
(every pass, the parameter count of a valid spec, the rendering of every error of a bad
one) is measured as the number of Python function calls, on the benchmark's specs at n
and 2n lines; a pass that went quadratic would make twice the spec cost four times the
calls."""
import gc
import os
import sys
import weakref

import pytest

from netdsl.cost import node_params
from netdsl.driver import CheckFailed, check_text
from netdsl.errors import render

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import check_speed  # noqa: E402  the generators of the big specs


def calls_to_check(text: str) -> int:
    """Python function calls made checking `text` as `netc check` does."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        try:
            check_text(text, "n.net").param_count()
        except CheckFailed as failed:
            for error in failed.errors:
                render(error, failed.sources)
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize("make, n", [(check_speed.valid_100k, 300), (check_speed.errors_10k, 200),
                                     (check_speed.delays_4000, 100), (check_speed.sum_10000, 400)],
                         ids=["valid", "errors", "delays", "sum"])
def test_twice_the_spec_costs_about_twice_the_work(make, n):
    calls_to_check(make(n))  # lazy imports and caches filled once, not counted
    small, large = calls_to_check(make(n)), calls_to_check(make(2 * n))
    assert large < 2.3 * small, (small, large)


def test_parameters_counted_in_one_pass_as_node_by_node():
    """param_count finds each state's first node once; it agrees with node_params."""
    text = ("input x : seq[4]\ntarget y : [4]\nstate h : [4] = learned, c : [4] = 0.5\n"
            "h = x + dense(h[t-1], 4) + h[t-2] + h[t-3]\nc = h + c[t-1]\n"
            "loss mse(c -> last, y)\n")
    net = check_text(text, "p.net")
    assert net.param_count() == sum(sum(__import__("math").prod(s) for s in
                                        node_params(net.graph, n).values()) for n in net.graph)
    assert net.param_count() == 4 + (4 * 4 + 4)  # the learned start once, the dense layer


@pytest.mark.parametrize("make", [check_speed.valid_100k, check_speed.errors_10k],
                         ids=["valid", "errors"])
def test_what_a_check_made_is_freed_without_the_collector(make):
    """netc check keeps the collector off until a spec's results are dropped; reference
    counting alone must free them, errors included, or checking many specs would pile
    up memory."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            made = check_text(make(200), "f.net")
            kept = [weakref.ref(made.graph), weakref.ref(made.module)]
        except CheckFailed as failed:
            kept = [weakref.ref(failed.errors[0]), weakref.ref(failed.errors[-1])]
        made = failed = None  # noqa: F841  dropped, as the command drops them
        assert all(ref() is None for ref in kept)
    finally:
        if enabled:
            gc.enable()


def test_recurrences_are_networkx_strongly_connected_components_in_its_order():
    """The search for recurrences gives networkx's components of more than one node, in
    networkx's order (errors are reported in it), on random graphs with self-loops,
    names out of order and nodes without edges."""
    import random

    import networkx as nx

    from netdsl.recurrences import recurrences
    rng = random.Random(18)
    for _ in range(500):
        names = list(dict.fromkeys(f"n{rng.randint(0, 99)}" for _ in range(rng.randint(1, 25))))
        graph = nx.DiGraph()
        graph.add_nodes_from(names)
        graph.add_edges_from((rng.choice(names), rng.choice(names))
                             for _ in range(rng.randint(0, 3 * len(names))))
        want = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
        assert recurrences(graph) == want


def test_netc_check_ends_at_once_with_its_output_and_exit_code(tmp_path):
    """`netc check` as a process ends without freeing what it made: its output is
    flushed all the same, through a pipe too, with the exit code of the check."""
    import subprocess

    from conftest import ROOT
    good, bad = tmp_path / "good.net", tmp_path / "bad.net"
    good.write_text(check_speed.valid_100k(60))
    bad.write_text(check_speed.errors_10k(40))
    done = subprocess.run([sys.executable, "-m", "netdsl.cli", "check", str(good), str(bad)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1
    assert done.stdout == f"{good}: ok (130 nodes, 13,940 parameters)\n"
    assert done.stderr.rstrip().endswith("37 errors"), done.stderr[-200:]
    done = subprocess.run([sys.executable, "-m", "netdsl.cli", "check", "--json", str(good)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.endswith("]\n") and '"ok": true' in done.stdout


def test_a_loops_sequence_input_is_found_alike_from_inside_and_from_outside():
    """Whether a recurrence reads a sequence is looked for from its ops' inputs, or from
    the readers of the nodes outside it when it holds most of the network: both ways give
    the same answer on every recurrent spec of the project and on loops that read none."""
    import glob

    from conftest import ROOT
    from netdsl.recurrences import _reads_from_inside, _reads_from_outside, recurrences
    from netdsl.shapes import typed_graph
    from netdsl.expand import expand
    from netdsl.graph import build_graph
    from netdsl.parse import parse
    texts = [open(path).read() for path in sorted(glob.glob(os.path.join(ROOT, "specs", "*.net")))]
    texts += [check_speed.valid_100k(40), check_speed.delays_4000(5),
              "input x : [4]\ntarget y : [4]\nstate h : [4]\nh = dense(h[t-1], 4) + x\n"
              "loss mse(h, y)\n",
              # its one input from outside is read whole: it reads no sequence step by step
              "input x : seq[4]\ntarget y : [4]\nstate h : [4]\n"
              "h = additive_attention(h[t-1], x, 4)\nloss mse(h -> last, y)\n"]
    answers = set()
    for text in texts:
        try:
            graph = check_text(text, os.path.join(ROOT, "specs", "n.net")).graph
        except CheckFailed:  # a loop that reads no sequence: the graph as the check saw it
            graph = typed_graph(build_graph(expand(parse(text, "n.net"))))[0]
        attrs = dict(graph.nodes(data=True))
        for component in recurrences(graph):
            ops = [n for n in component if attrs[n]["kind"] == "op"]
            inside = _reads_from_inside(attrs, ops, component)
            assert _reads_from_outside(graph, attrs, component) == inside
            answers.add(inside)
    assert answers == {True, False}
