"""Pass 5, recurrences: what a typed graph must satisfy to run as loops over time.

A recurrence is a strongly connected component of the graph with its delay edges: it
runs one step at a time, so it cannot hold an op that sees the whole sequence, and it
must read a sequence step by step, whose length sets its number of steps. Training
settings add their own demands (truncated BPTT cuts sequences; gan_k needs two losses).
These are checked here, with located errors, so `netc check` refuses what `netc run`
would; lowering (netdsl.lower.plan) and the trainer (runtime.train) ask the same
functions, for a graph or settings that did not come through `netc check`.
"""
from __future__ import annotations

import networkx as nx

from netdsl.errors import SpecError
from netdsl.ops.base import Op
from netdsl.program import call_notes
from netdsl.shapes import whole_positions

__all__ = ["check_recurrences", "recurrence_errors", "recurrences", "training_errors"]


def recurrences(graph: nx.DiGraph) -> list[set[str]]:
    """The node sets of the graph's recurrences (strongly connected components of more
    than one node), in the order networkx's strongly_connected_components gives them.

    Tarjan's search, without recursion, over the nodes numbered in the graph's order and
    their successors as lists of numbers: networkx's search keeps dicts and sets keyed by
    the nodes' names, and took twice as long on a graph of 200,000 nodes. Both search
    from the nodes in the graph's order and their successors in its order, and a component
    is found when the search leaves its first node, so the order is the same."""
    nodes = list(graph)
    count = len(nodes)
    number = dict(zip(nodes, range(count)))
    # each node's successors by name, in the graph's order: numbered as the search meets
    # them, each edge once, rather than all of them first as lists of numbers
    adjacency = list(graph._succ.values())
    visit = [-1] * count    # the order the search reached each node in
    low = [0] * count       # the earliest node of the stack each one reaches
    on_stack = [False] * count
    stack: list[int] = []
    found = []
    reached = 0
    for root in range(count):
        if visit[root] >= 0:
            continue
        visit[root] = low[root] = reached
        reached += 1
        if not adjacency[root]:  # reads nothing on: a component of its own at once
            continue
        stack.append(root)
        on_stack[root] = True
        path, pending = [root], [iter(adjacency[root])]
        while path:
            v = path[-1]
            for name in pending[-1]:
                w = number[name]
                if visit[w] < 0:  # deeper: its successors first
                    visit[w] = low[w] = reached
                    reached += 1
                    if not adjacency[w]:  # a component of its own, left at once
                        continue
                    stack.append(w)
                    on_stack[w] = True
                    path.append(w)
                    pending.append(iter(adjacency[w]))
                    break
                if on_stack[w] and visit[w] < low[v]:
                    low[v] = visit[w]
            else:  # every successor seen: leave v
                path.pop()
                pending.pop()
                if low[v] == visit[v]:  # v is its component's first node: the rest lie above it
                    start = len(stack) - 1
                    while stack[start] != v:
                        start -= 1
                    members = stack[start:]
                    del stack[start:]
                    for w in members:
                        on_stack[w] = False
                    if len(members) > 1:
                        found.append(set(map(nodes.__getitem__, members)))
                elif low[v] < low[path[-1]]:
                    low[path[-1]] = low[v]
    return found


def recurrence_errors(graph: nx.DiGraph, components: list[set[str]] | None = None
                      ) -> list[SpecError]:
    """Every recurrence that cannot run as a loop over time, located; `components` are
    the graph's `recurrences`, where the caller has them."""
    errors = []
    attrs = graph._node  # networkx's dict of each node's data: no view per lookup
    base = Op.in_recurrence
    for component in recurrences(graph) if components is None else components:
        ops = []
        refused = []  # (place, error), put in source order once found: a loop may hold every node
        # a loop of most of the network is read in the graph's order, whose nodes' data lie
        # near each other in memory, rather than in the set's: a third of the time
        most = 2 * len(component) >= len(attrs)
        members = attrs.items() if most else ((node, attrs[node]) for node in component)
        for node, data in members:
            if data["kind"] != "op" or most and node not in component:
                continue
            ops.append(node)
            op = data["op"]
            # the base class's answer is None: an op that keeps it is not asked (most ops)
            if op.per_step and type(op).in_recurrence is base:
                continue
            if not op.per_step:
                refused.append((_place(graph, node), SpecError(
                    f"'{data['op'].name}' sees the whole sequence, so it cannot be part of a "
                    "recurrence, which runs one step at a time", data["span"],
                    "apply it before or after the recurrent layer",
                    call_notes(data["scope"], data["span"]))))
                continue
            reason = op.in_recurrence()
            if reason is not None:
                refused.append((_place(graph, node), SpecError(
                    f"'{data['op'].name}' cannot be part of a recurrence: {reason}",
                    data["span"], "apply it before or after the recurrent layer",
                    call_notes(data["scope"], data["span"]))))
        errors += [error for _, error in sorted(refused, key=lambda pair: pair[0])]
        if not _reads_a_sequence(graph, attrs, ops, component):
            states = sorted((n for n in component if graph.nodes[n]["kind"] == "state"),
                            key=lambda n: _place(graph, n))
            decl = graph.nodes[states[0]]["state"]
            errors.append(SpecError(
                f"the recurrence of state '{decl.name}' reads no sequence, so nothing says how "
                "many steps it runs", decl.span,
                "give it a sequence input at every step, e.g. `input x : seq[4]`",
                call_notes(graph.nodes[states[0]]["scope"], decl.span)))
    return errors


def check_recurrences(graph: nx.DiGraph, train_spans=None) -> list[SpecError]:
    """The recurrences' errors, and those of the train clause's demands on the graph.

    `train_spans` (`Program.train_spans`) locates the settings named in errors.
    """
    train = graph.graph.get("train") or {}
    bptt = train.get("bptt")
    truncated = bptt is not None and bool({"truncate", "k1", "k2"} & set(bptt[1]))
    components = recurrences(graph)
    return (recurrence_errors(graph, components)
            + training_errors(graph, truncated, "gan_k" in train, train_spans, components))


def training_errors(graph: nx.DiGraph, truncated: bool, gan_k: bool, spans=None,
                    components: list[set[str]] | None = None) -> list[SpecError]:
    """What training settings demand of the graph: truncated BPTT (`truncated`), no op
    that needs the whole sequence beside a recurrence; `gan_k`, two losses. `netc check`
    asks it of the train clause, and a trainer of the settings it is given (which the
    Python API may set apart from any spec). `components`: the graph's `recurrences`,
    where the caller has them."""
    errors, spans = [], spans or {}
    if truncated and (recurrences(graph) if components is None else components):
        whole = sorted((n for n, d in graph.nodes(data=True)
                        if d["kind"] == "op" and (not d["op"].per_step or d["op"].whole)),
                       key=lambda n: _place(graph, n))
        if whole:
            data = graph.nodes[whole[0]]
            errors.append(SpecError(
                f"truncated BPTT cuts sequences into chunks, but '{data['op'].name}' needs the "
                "whole sequence", data["span"],
                "train with full BPTT: remove bptt(...) from the train clause"
                + (f" at {spans['bptt']}" if "bptt" in spans else ""),
                call_notes(data["scope"], data["span"])))
    losses = graph.graph.get("losses") or {}
    if gan_k and len(losses) != 2:
        errors.append(SpecError(
            f"gan_k needs two losses (the discriminator's and the generator's), but the spec has "
            f"{len(losses)}", spans.get("gan_k"), "write `loss d: ...` and `loss g: ...`"))
    return errors


def _place(graph: nx.DiGraph, node: str):
    span = graph.nodes[node]["span"]
    return (span.file, span.line, span.col, node) if span else ("", 0, 0, node)


def _reads_a_sequence(graph: nx.DiGraph, attrs: dict, ops: list[str], component: set) -> bool:
    """Whether a loop reads, step by step, a sequence computed outside it: its length is
    the loop's number of steps. `attrs` maps nodes to their data. Its edges from outside
    are found from the smaller side: the inputs of its ops, or the readers of the nodes
    outside it (a loop of most of the network reads from a few)."""
    if 2 * len(component) > len(attrs):
        return _reads_from_outside(graph, attrs, component)
    return _reads_from_inside(attrs, ops, component)


def _reads_from_inside(attrs: dict, ops: list[str], component: set) -> bool:
    """`_reads_a_sequence`, from the inputs of the loop's ops."""
    for node in ops:
        data = attrs[node]
        whole = None  # asked of the op only when it reads from outside: most read within
        for position, (source, _) in enumerate(data["inputs"]):
            if source in component:
                continue
            if whole is None:
                whole = whole_positions(data["op"])
            if position in whole:
                continue
            source_type = attrs[source].get("type")
            if source_type is None or source_type.seq:  # an unknown type was reported already
                return True
    return False


def _reads_from_outside(graph: nx.DiGraph, attrs: dict, component: set) -> bool:
    """`_reads_a_sequence`, from the edges of the nodes outside the loop into its ops:
    each edge holds the argument positions (`ports`) it feeds."""
    for source, readers in graph._succ.items():  # networkx's own dict: no view per node
        if source in component:
            continue
        for reader, edge in readers.items():
            if reader not in component or attrs[reader]["kind"] != "op":
                continue
            whole = whole_positions(attrs[reader]["op"])
            if any(port not in whole for port in edge["ports"]):
                source_type = attrs[source].get("type")
                if source_type is None or source_type.seq:  # an unknown type was reported already
                    return True
    return False
