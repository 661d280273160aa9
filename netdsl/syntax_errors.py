"""A labelled catalogue of malformed snippets; `classify` names a syntax error by example."""
from __future__ import annotations

from lark.exceptions import UnexpectedInput

# label -> (message, hint, snippets that fail the same way)
CATALOGUE: dict[str, tuple[str, str | None, list[str]]] = {
    "unclosed call": (
        "a call is not closed",
        "add the missing ')'",
        ["y = x -> dense(10\nz = y\n", "y = relu(x\n"],
    ),
    "missing value": (
        "nothing after '='",
        "write a value: `name = x -> dense(10)`",
        ["y =\n", "y = \n"],
    ),
    "dangling arrow": (
        "'->' must be followed by a layer",
        "finish the pipeline: `x -> relu`",
        ["y = x ->\n", "y = x -> -> relu\n"],
    ),
    "missing type": (
        "a declaration needs a type after ':'",
        "for example `input x : [3, 32, 32]` or `target y : class(10)`",
        ["input x\n", "input x :\n", "target y\n", "target y :\n"],
    ),
}


def classify(exc: UnexpectedInput, text: str) -> tuple[str | None, str | None]:
    """The catalogue's message and hint for an error, or (None, None) when none matches."""
    from netdsl.parse import parser

    examples = {label: snippets for label, (_, _, snippets) in CATALOGUE.items()}
    try:
        label = exc.match_examples(parser().parse, examples, use_accepts=True)
    except Exception:  # an example that does not fail the same way must not hide the real error
        label = None
    if label is None:
        return None, None
    message, hint, _ = CATALOGUE[label]
    return message, hint
