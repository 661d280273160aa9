"""A labelled catalogue of malformed snippets; `classify` names a syntax error by example.

A message may hold `{found}`: what the parser met instead (a token, end of line or file).
Statements inside a block body or a loop go through other parser states than the same
statements at the top level; each snippet is also tried there (see `_contexts`), so a
mistake reads the same wherever it is written.
"""
from __future__ import annotations

from functools import lru_cache

from lark.exceptions import UnexpectedCharacters, UnexpectedInput

from netdsl.lark_parser import parser

# label -> (message, hint, snippets that fail the same way)
CATALOGUE: dict[str, tuple[str, str | None, list[str]]] = {
    "missing value": (
        "nothing after '=': expected a value but found {found}",
        "write a value: `name = x -> dense(10)`",
        ["y =\n", "y = \n", "a, b =\n", "y = x\nz =\n", "y = x\nz = y\nw =\n", "y = dense(x, units=)\n"],
    ),
    "dangling arrow": (
        "'->' must be followed by a layer, but found {found}",
        "finish the pipeline: `x -> relu`",
        ["y = x ->\n", "y = x -> -> relu\n", "y = x -> relu ->\n", "y = x -> 3\n",
         "y = x -> (relu)\n", "y = x -> 'relu'\n", "y = x -> [3]\n"],
    ),
    "missing type": (
        "a declaration needs a type after ':', but found {found}",
        "for example `input x : [3, 32, 32]` or `target y : class(10)`",
        ["input x\n", "input x :\n", "target y\n", "target y :\n", "input x : 3\n",
         "input x : float\n", "state h\n", "state h :\n", "state h : 4\n", "input x : (3, 32)\n"],
    ),
    "missing colon": (
        "expected ':' between the name and its type, but found {found}",
        "write `input x : [3, 32, 32]`",
        ["input x [3]\n", "target y class(10)\n", "state h [64]\n", "input x = [3]\n"],
    ),
    "class without count": (
        "class needs its number of classes in parentheses, but found {found}",
        "write `target y : class(10)`",
        ["target y : class 10\n", "target y : class\n", "target y : class[10]\n"],
    ),
    "arguments without parentheses": (
        "a layer's arguments go in parentheses, but found {found}",
        "write `x -> dense(10)`, not `x -> dense 10`",
        ["y = x -> dense 10\n", "y = x -> dense units=3\n", "y = x -> conv 'same'\n",
         "y = x -> dense [4]\n"],
    ),
    "trailing comma": (
        "a ',' must be followed by another argument, but found {found}",
        "remove the trailing ','",
        ["y = dense(x, 10,)\n", "y = x -> conv(8, 3, )\n", "y = x -> dense(4,)\n", "y = relu(x,)\n",
         "input x : [3, 32,]\n", "input x : [3,]\n", "train sgd(lr=0.1,)\n",
         "train adam(lr=0.1), schedule=step(every=3,)\n"],
    ),
    "line ends after a comma": (
        "the statement ends after ',': expected another item but found {found}",
        "a statement continues on the next line only inside ( ) or [ ], after a trailing '\\', "
        "or when the next line starts with ->",
        ["train sgd(lr=0.1),\n", "train sgd(lr=0.1), epochs=3,\n", "state h : [4],\n",
         "block b(n) {\n in x\n out x,\n}\n", "block b(n) {\n in x,\n out x\n}\n"],
    ),
    "train arguments without parentheses": (
        "an optimiser's or schedule's settings go in parentheses, but found {found}",
        "write `train sgd(lr=0.1, momentum=0.9), epochs=10`",
        ["train sgd lr=0.1\n", "train sgd 0.1\n", "train adam\n"],
    ),
    "train settings without commas": (
        "the settings of a train clause are separated by ',', but found {found}",
        "write `train adam(lr=1e-3), epochs=10, batch=64`",
        ["train sgd(lr=0.1) epochs=3\n", "train epochs=3 batch=4\n", "train epochs=3 sgd(lr=0.1)\n"],
    ),
}
# labels whose snippets are statements that may also stand in a block body or a loop
_IN_BODIES = ("missing value", "dangling arrow", "arguments without parentheses", "trailing comma")


def classify(exc: UnexpectedInput, found: str) -> tuple[str | None, str | None]:
    """The catalogue's message and hint for an error, or (None, None) when none matches.

    Like Lark's `match_examples`, but an example matches only with the same LALR state,
    the same acceptable tokens and the same kind of unexpected token; the depth of the
    parser's stack (which grows with the statements before the error) is ignored.
    """
    if isinstance(exc, UnexpectedCharacters) or getattr(exc, "state", None) is None:
        return None, None
    key = _key(exc)
    for label, (message, hint, snippets) in CATALOGUE.items():
        if any(_failure(variant) == key for snippet in snippets for variant in _contexts(label, snippet)):
            return message.replace("{found}", found), hint
    return None, None


def _contexts(label: str, snippet: str) -> tuple[str, ...]:
    """The snippet where it is written, inside a block body and a loop when it may stand
    there, and its value after `out` and `loss` as well as after `y =`."""
    if label not in _IN_BODIES or snippet.startswith(("input", "target", "state")):
        return (snippet,)
    variants = [snippet]
    if snippet.startswith("y = "):
        variants += [f"loss {snippet[4:]}", f"block b(n) {{\n in x\n out {snippet[4:]}}}\n"]
    return (*variants, f"block b(n) {{\n in x\n {snippet}}}\n", f"for i in 1..2 {{\n {snippet}}}\n")


def _key(exc: UnexpectedInput):
    token = getattr(exc, "token", None)
    accepts = frozenset(getattr(exc, "accepts", None) or getattr(exc, "expected", None) or ())
    return exc.state.position, accepts, token.type if token is not None else "$END"


@lru_cache(maxsize=None)
def _failure(snippet: str):
    """How a snippet fails to parse, as `_key` describes it (None if it parses)."""
    try:
        parser().parse(snippet)
    except UnexpectedInput as exc:
        if isinstance(exc, UnexpectedCharacters) or getattr(exc, "state", None) is None:
            return None
        return _key(exc)
    return None
