"""Checking is bounded: a budget on what a spec expands to, refused at once with the
product that passes it; long sums, many delays and many errors cost what their size does."""
import time

import pytest

from netdsl import expand as expand_module
from netdsl.driver import CheckFailed, check_text
from netdsl.errors import SpecError, render
from netdsl.fmt import format_text

NESTED_FOR = """\
input x : [4]
target y : [4]
for i in 1..100000 {
  for j in 1..100000 {
  }
}
loss mse(x, y)
"""

NESTED_BLOCKS = """\
input x : [4]
target y : [4]
block inner(k) {
  in a
  b = a -> dense(k)
  out b
}
block outer(k) {
  in a
  b = a -> inner(k) x 1000
  out b
}
z = x -> outer(4) x 1000
loss mse(z, y)
"""


def refusal(text: str) -> tuple[SpecError, float]:
    started = time.perf_counter()
    with pytest.raises(CheckFailed) as caught:
        check_text(text, "b.net")
    return caught.value.errors[0], time.perf_counter() - started


def test_nested_loops_are_refused_at_once_with_their_product():
    """An empty loop of 100,000 inside another ran past 120 s."""
    error, seconds = refusal(NESTED_FOR)
    assert seconds < 2
    assert error.message == (
        "the spec expands to at least 10,000,000,004 statements and layers, more than the "
        "1,000,000 a spec may have: 100,000 (for i, b.net:3:1) x 100,000 (for j, b.net:4:3)")
    assert (error.span.line, error.span.col) == (4, 3)


def test_a_repeated_block_inside_a_repeated_block_is_refused_at_once():
    """1,000 x 1,000 block calls passed 3 GB in 46 s."""
    error, seconds = refusal(NESTED_BLOCKS)
    assert seconds < 2
    assert "1,000 (outer x 1000, b.net:13:21) x 1,000 (inner x 1000, b.net:10:23)" in error.message
    assert "x 4 (statements and layers in each round)" in error.message
    assert (error.span.line, error.span.col) == (10, 23)
    assert "shorter" in error.hint


def test_what_the_budget_allows_checks(monkeypatch):
    text = NESTED_BLOCKS.replace("x 1000", "x 10")
    assert check_text(text, "b.net").graph.number_of_nodes() == 103
    monkeypatch.setattr(expand_module, "EXPANSION_BUDGET", 600)  # 10 x 10 x 4 planned: fits
    assert check_text(text, "b.net").graph.number_of_nodes() == 103
    monkeypatch.setattr(expand_module, "EXPANSION_BUDGET", 350)
    error, _ = refusal(text)
    assert error.message.startswith("the spec expands to at least 405 statements and layers, "
                                    "more than the 350")


def test_statements_run_are_counted_where_no_loop_multiplies(monkeypatch):
    """Blocks calling blocks multiply without a loop or repeat: the running count stops
    them where the budget runs out, located at that statement."""
    monkeypatch.setattr(expand_module, "EXPANSION_BUDGET", 40)
    calls = "\n".join(f"h{i} = h{i - 1} -> dense(4)" for i in range(1, 60))
    error, _ = refusal(f"input x : [4]\ntarget y : [4]\nh0 = x\n{calls}\nloss mse(h59, y)\n")
    assert error.message.startswith("the spec expands to at least 4")
    assert "more than the 40 a spec may have" in error.message and error.span.line < 30


def test_a_sum_of_10000_terms_is_accepted_and_formatted():
    """Sums of more than 100 terms were refused as nesting too deep."""
    terms = " + ".join(f"x{i % 3}" for i in range(10_000))
    text = ("input x0 : [4]\ninput x1 : [4]\ninput x2 : [4]\ntarget y : [4]\n"
            f"s = {terms}\nloss mse(s, y)\n")
    graph = check_text(text, "s.net").graph
    adds = [n for n, d in graph.nodes(data=True) if d["op"] is not None and d["op"].name == "add"]
    assert len(adds) == 9_999
    assert_formatted_as_written(text, terms)
    # a minus keeps its place: the terms around it are summed as they are
    text = text.replace("x0 + x1", "x0 - x1", 1)
    assert check_text(text, "s.net").graph.number_of_nodes() == graph.number_of_nodes()
    assert_formatted_as_written(text, terms.replace("x0 + x1", "x0 - x1", 1))


def assert_formatted_as_written(text, terms):
    """fmt breaks the long sum into rows of at most 88 columns, its terms and operators
    in the order written, and formats its own output unchanged."""
    formatted = format_text(text, "s.net")
    rows = formatted.splitlines()[4:-1]
    assert all(len(row) <= 88 for row in rows)
    assert " ".join(" ".join(rows).split()) == f"s = ({terms})"
    assert format_text(formatted, "s.net") == formatted


def test_4000_delays_check_in_one_cycle_analysis():
    """networkx.find_cycle per delay took 430 s for 4,000 distinct h[t-k]."""
    terms = " + ".join(f"h[t-{k}]" for k in range(1, 4001))
    text = f"input x : seq[4]\ntarget y : [4]\nstate h : [4]\nh = x + {terms}\nloss mse(h -> last, y)\n"
    started = time.perf_counter()
    graph = check_text(text, "d.net").graph
    assert time.perf_counter() - started < 30
    assert sum(d["kind"] == "state" for _, d in graph.nodes(data=True)) == 4000


def test_a_cycle_without_a_delay_is_named():
    text = ("input x : [4]\ntarget y : [4]\nstate h : [4]\nstate g : [4]\n"
            "a = x + h[t-1]\nh = a + g\ng = h -> relu\nloss mse(g[t-1] + a, y)\n")
    error, _ = refusal(text)
    assert error.message.startswith("a cycle without a delay: ") or "used before" in error.message


def test_naming_a_named_value_keeps_both_names_usable():
    """`h = v` took the node from v, and a later use of v crashed the checker."""
    text = ("input x : seq[4]\ntarget y : seq class(4)\nstate h : [4]\nv0 = x + h[t-1]\n"
            "v1 = v0 -> relu\nh = v1\nloss cross_entropy(v1 -> dense(4), y)\n")
    assert check_text(text, "k.net").graph.number_of_nodes() == 7


def test_a_second_name_for_a_states_source_leaves_the_state_its_source():
    """`logits = h` after `h = tanh(...)`, h a state: the state's h[t-1] still reads h
    (a mutated elman.net of the reliability run ended in a KeyError)."""
    text = ("input x : seq[4]\ntarget y : seq class(8)\nstate h : [8]\n"
            "h = tanh(dense(x, 8) + dense(h[t-1], 8))\nlogits = h\n"
            "loss cross_entropy(logits, y)\n")
    graph = check_text(text, "alias.net").graph
    assert "h" in graph and "logits" not in graph


def test_thousands_of_undefined_names_get_errors_without_guesses():
    lines = "\n".join(f"a{i} = undefined{i} -> dense(4)" for i in range(3000))
    text = f"input x : [4]\ntarget y : [4]\n{lines}\nloss mse(x, y)\n"
    with pytest.raises(CheckFailed) as caught:
        check_text(text, "u.net")
    errors = [e for e in caught.value.errors if e.message.startswith("undefined name")]
    assert len(errors) == 3000
    assert sum(e.hint is not None for e in errors) <= expand_module.MISSPELLINGS_GUESSED


def test_rendering_many_errors_splits_the_source_once():
    text = "\n".join(f"v{i} = x" for i in range(50_000))
    errors = [SpecError("bad", expand_module.Span("r.net", line, 1, line, 2))
              for line in range(1, 50_001, 10)]
    started = time.perf_counter()
    shown = [render(error, {"r.net": text}) for error in errors]
    assert time.perf_counter() - started < 2  # each split of the text took milliseconds
    assert shown[1].splitlines()[1] == "  11 | v10 = x"


def test_checking_runs_without_the_cyclic_collector():
    """Collections over every object the passes made, again and again, made a 30,000-line
    spec take 30 s instead of 12; checking pauses the collector and restores it."""
    import gc

    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    lines = "\n".join(f"h{i} = h{i - 1} -> dense(4) -> relu" for i in range(1, 2000))
    text = f"input x : [4]\ntarget y : [4]\nh0 = x\n{lines}\nloss mse(h1999, y)\n"
    gc.callbacks.append(count)
    try:
        check_text(text, "g.net")
    finally:
        gc.callbacks.remove(count)
    # 266 collections, 2 of them over everything, before; now a young one or two at most,
    # on the way in or out
    assert len(collections) <= 3 and 2 not in collections and gc.isenabled()
