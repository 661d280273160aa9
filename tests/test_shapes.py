"""The graph and shapes passes: edges, delays, seq propagation, located shape errors."""
import networkx as nx
import pytest

from netdsl.driver import CheckFailed
from netdsl.graph import forward_view
from netdsl.types import TensorType

ELMAN = """\
input  x : seq[16]
target y : seq class(16)
state  h : [64] = learned
h = tanh(dense(x, 64) + dense(h[t-1], 64, bias=false))
loss cross_entropy(h -> dense(16), y)
"""


class TestGraph:
    def test_recurrent_edge_carries_the_delay(self, check):
        graph = check(ELMAN).graph
        assert graph.edges["h", "h[t-1]"]["delay"] == 1
        assert not nx.is_directed_acyclic_graph(graph)
        assert nx.is_directed_acyclic_graph(forward_view(graph))

    def test_ports_record_repeated_inputs(self, check):
        graph = check("input x : [4]\ntarget t : [4]\nloss mse(x * x, t)\n").graph
        assert graph.edges["x", "mul1"]["ports"] == [0, 1]

    def test_node_data_is_made_once_and_equal_edges_share_theirs(self, monkeypatch):
        """A node's data in the graph is the program's NodeDef itself; edges of equal
        data share one dict, and an edge of two ports gets its own. The layout before
        (`SHARED_DATA = False`: a dict per node and per edge) gives an equal graph."""
        from netdsl import graph as graph_pass
        from netdsl.expand import expand
        from netdsl.parse import parse
        text = ("input x : seq[4]\ntarget y : [4]\nstate h : [4]\na = x * x\n"
                "b = a -> dense(4) -> relu\nc = b + h[t-1]\nh = c -> tanh\n"
                "loss mse(h -> last, y)\n")
        program = expand(parse(text, "s.net"))
        graph, order = graph_pass.graph_and_order(program)
        assert all(graph.nodes[n] is node for n, node in program.nodes.items())
        assert graph.nodes["b"]["kind"] == program.nodes["b"].kind == "op"
        assert graph.edges["x", "a"]["ports"] == [0, 1]
        assert graph.edges["a", "dense1"] is graph.edges["dense1", "b"]  # both port 0
        assert graph.edges["dense1", "b"] == {"delay": 0, "ports": [0]}
        assert graph.edges["h", "h[t-1]"] == {"delay": 1, "ports": [0]}
        monkeypatch.setattr(graph_pass, "SHARED_DATA", False)
        apart, order_apart = graph_pass.graph_and_order(program)
        assert order_apart == order and list(apart) == list(graph)
        assert all(apart.nodes[n] is not node
                   and apart.nodes[n] == {**node, "inputs": tuple(node.inputs)}
                   for n, node in program.nodes.items())
        assert list(apart.edges(data=True)) == list(graph.edges(data=True))
        assert len({id(d) for _, _, d in apart.edges(data=True)}) == apart.number_of_edges()

    def test_graph_is_a_networkx_digraph_with_spans(self, check):
        graph = check(ELMAN, "elman.net").graph
        assert isinstance(graph, nx.DiGraph)
        assert all(d["span"].file == "elman.net" for _, d in graph.nodes(data=True))


class TestShapes:
    def test_per_step_ops_keep_the_time_axis(self, check):
        graph = check(ELMAN).graph
        assert graph.nodes["h"]["type"] == TensorType((64,), seq=True)
        assert graph.nodes["loss"]["type"].dims == ()

    def test_last_leaves_the_sequence(self, check):
        text = "input x : seq[8]\ntarget y : class(3)\nloss cross_entropy(x -> dense(3) -> last, y)\n"
        graph = check(text).graph
        assert graph.nodes["last1"]["type"] == TensorType((3,))

    def test_image_pipeline(self, check):
        text = ("input x : [1, 28, 28]\ntarget y : class(10)\n"
                "f = x -> conv(6, 5, pad=2) -> relu -> maxpool(2) -> conv(16, 5) -> maxpool(2) -> flatten\n"
                "loss cross_entropy(f -> dense(10), y)\n")
        assert check(text).graph.nodes["f"]["type"].dims == (400,)

    def test_pixelwise_cross_entropy(self, check):
        text = ("input x : [3, 16, 16]\ntarget m : class(2)[16, 16]\n"
                "loss cross_entropy(x -> conv(2, 3, pad='same'), m, weights=[1, 5])\n")
        assert check(text).param_count() == 2 * 3 * 9 + 2


class TestShapeErrors:
    def errors(self, check, text):
        with pytest.raises(CheckFailed) as info:
            check(text)
        return info.value.errors

    def test_dense_on_an_image_says_flatten(self, check):
        (error,) = self.errors(check, "input x : [3, 8, 8]\ntarget t : [4]\nloss mse(x -> dense(4), t)\n")
        assert (error.span.line, error.span.col) == (3, 15)
        assert "[3,8,8]" in error.message and "flatten" in error.hint

    def test_conv_on_a_vector_suggests_dense(self, check):
        (error,) = self.errors(check, "input x : [256]\ntarget t : [4]\nloss mse(x -> conv(4, 3) -> gap, t)\n")
        assert "[256]" in error.message and "dense" in error.hint

    def test_independent_errors_all_reported(self, check):
        text = ("input x : [3, 8, 8]\ntarget t : [4]\na = x -> dense(4)\nb = x -> conv(4, 9)\n"
                "loss mse(a + (b -> gap), t)\n")
        lines = sorted(e.span.line for e in self.errors(check, text))
        assert lines == [3, 4]

    def test_error_in_block_notes_the_call(self, check):
        text = ("input x : [3, 8, 8]\ntarget t : [4]\nblock b() {\n  in x\n  out x -> dense(4)\n}\n"
                "loss mse(x -> b, t)\n")
        (error,) = self.errors(check, text)
        assert error.span.line == 5
        (note, where), = error.notes
        assert note == "in b()" and (where.line, where.col) == (7, 15)
        assert "b1" not in error.message + (error.hint or "")

    def test_state_shape_mismatch(self, check):
        text = ELMAN.replace("state  h : [64]", "state  h : [32]")
        errors = self.errors(check, text)
        assert any("declared [32]" in e.message and "[64]" in e.message for e in errors)

    def test_loss_must_be_a_number(self, check):
        (error,) = self.errors(check, "input x : [4]\nloss x -> dense(3)\n")
        assert "must be one number" in error.message

    def test_shared_layer_with_other_shapes(self, check):
        text = ("input a : [4]\ninput b : [8]\ntarget t : [2]\nshare E = dense(2)\n"
                "loss mse((a -> E) + (b -> E), t)\n")
        (error,) = self.errors(check, text)
        assert "shared layer" in error.message


class TestCheckingOrder:
    """Checking types nodes in the program's order where that is a forward order, and
    counts on equal results being shared; neither may change what is reported."""

    TIES = """block f() {
  in a
  b = a -> conv(3, 3)
  out b
}
input x : [4]
target y : [4]
p = x -> dense(4) -> dense(4) -> f
q = normal(4) -> f
loss mse(p + q, y)
"""

    def test_errors_at_one_place_come_in_forward_order(self):
        """Both calls of f fail at the same conv; forward order reaches q's first (its
        source has no input), the program p's: the error kept is the one forward order
        gives, as before the program's order was used."""
        from netdsl.driver import check_text
        with pytest.raises(CheckFailed) as failed:
            check_text(self.TIES, "ties.net")
        [error] = failed.value.errors
        assert [span.line for _, span in error.notes] == [9]

    def test_the_order_given_is_a_forward_order(self):
        from netdsl.expand import expand
        from netdsl.graph import forward_order, graph_and_order
        from netdsl.parse import parse
        program = expand(parse(self.TIES.replace("conv(3, 3)", "dense(4)"), "t.net"))
        graph, order = graph_and_order(program)
        assert order == list(program.nodes) != forward_order(graph)
        seen = set()
        for node in order:
            assert all(source in seen for source, delay in graph.nodes[node]["inputs"] if not delay)
            seen.add(node)

    def test_equal_types_are_one_object_and_rules_run_once_per_input(self):
        from netdsl.driver import check_text
        from netdsl.ops import OPS
        calls = []
        shape = OPS["dense"].shape

        def counted(self, x):
            calls.append(x)
            return shape(self, x)

        OPS["dense"].shape = counted
        try:
            net = check_text("input x : [4]\ntarget y : [4]\n"
                             + "".join(f"h{i} = {'x' if i == 0 else f'h{i - 1}'} -> dense(4)\n"
                                       for i in range(6))
                             + "loss mse(h5, y)\n", "chain.net")
        finally:
            OPS["dense"].shape = shape
        types = [net.graph.nodes[f"h{i}"]["type"] for i in range(6)]
        assert all(t is types[0] for t in types) and types[0] == TensorType((4,))
        assert len(calls) == 1  # x's type and every result are [4]: one object, one rule run
        assert net.param_count() == 6 * (4 * 4 + 4)

    def test_the_graph_is_networkx_own_in_its_order(self):
        """The graph pass fills networkx's dicts in one pass, an edge from a node made
        later (a state's new value) held back until its source comes: its nodes, edges
        and their order are those networkx's adders give, edges in the readers' order."""
        from netdsl.expand import expand
        from netdsl.graph import graph_and_order
        from netdsl.parse import parse
        text = ("input x : seq[4]\ntarget y : [4]\nstate h : [4], c : [4]\n"
                "a = x + h[t-1] + h[t-2]\nd = a -> dense(4)\nb = d + c[t-1]\nh = b + a\nc = a\n"
                "loss mse(h -> last, y)\n")
        program = expand(parse(text, "s.net"))
        graph, order = graph_and_order(program)
        expected = nx.DiGraph()
        for node in program.nodes.values():
            expected.add_node(node.id)
        for node in program.nodes.values():
            for port, (source, delay) in enumerate(node.inputs):
                if expected.has_edge(source, node.id):
                    expected.edges[source, node.id]["ports"].append(port)
                else:
                    expected.add_edge(source, node.id, delay=delay, ports=[port])
        assert list(graph) == list(expected)
        assert [list(graph.succ[n].items()) for n in graph] == \
            [list(expected.succ[n].items()) for n in expected]
        assert [list(graph.pred[n].items()) for n in graph] == \
            [list(expected.pred[n].items()) for n in expected]
        assert any(list(graph).index(s) > list(graph).index(t) for s, t in graph.edges)
