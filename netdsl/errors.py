"""Located errors for people: a span in a spec, a message, a hint."""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

from netdsl.frozen import quick_init

__all__ = ["Span", "SpecError", "UsageError", "SpecErrors", "ShapeError", "render", "errors_of",
           "closest", "suggest", "leading"]


@quick_init
@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file; lines and columns count from 1, ends are inclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def leading(span: Span, word: str) -> Span:
    """The part of `span` its first `word` covers: the name of `name=value`, for a caret
    under the name alone."""
    return Span(span.file, span.line, span.col, span.line, span.col + len(word) - 1)


class SpecError(Exception):
    """An error in a spec, a data file or a flag, shown to the user without a traceback.

    `notes` are (text, span) pairs shown under the error: for a mistake inside a block,
    each call on the way in, innermost first ("in basic(32, stride=2) at net.net:16:14").
    """

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 notes: tuple[tuple[str, Span], ...] = ()):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = tuple(notes)

    def __str__(self) -> str:
        where = f"{self.span}: " if self.span else ""
        return f"{where}{self.message}"


class UsageError(SpecError):
    """A command line that asks for something impossible (flags that do not go together,
    an output format netc cannot write): exit code 2, as argparse's own errors."""


class SpecErrors(Exception):
    """Several independent errors found in one pass."""

    def __init__(self, errors: list[SpecError]):
        super().__init__(f"{len(errors)} error(s)")
        self.errors = sorted(errors, key=_order)

    @staticmethod
    def collect(errors: list[SpecError]) -> None:
        """Raise the errors together, if there are any; one error per place and message."""
        unique = {(e.span, e.message): e for e in reversed(errors)}
        errors = list(reversed(unique.values()))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise SpecErrors(errors)


class ShapeError(Exception):
    """Raised by an op's shape rule, without a span; the shapes pass adds the location."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def _order(error: SpecError):
    s = error.span
    return (s.file, s.line, s.col) if s else ("", 0, 0)


def errors_of(exc: BaseException) -> list[SpecError]:
    """The individual errors inside a SpecError or SpecErrors."""
    return list(exc.errors) if isinstance(exc, SpecErrors) else [exc]


def render(error: SpecError, sources: dict[str, str] | None = None) -> str:
    """Format an error as `file:line:col: error: message`, the line, a caret and a hint.

    `sources` maps file names to their text; without the text only the first line is shown.
    """
    lines = [f"{error.span}: error: {error.message}" if error.span else f"error: {error.message}"]
    span = error.span
    text = (sources or {}).get(span.file) if span else None
    if text is not None:
        source_lines = _lines(text)
        if 1 <= span.line <= len(source_lines):
            line = source_lines[span.line - 1].rstrip("\r").expandtabs(1)
            width = span.end_col - span.col + 1 if span.end_line == span.line else len(line) - span.col + 1
            gutter = f"{span.line:>4} | "
            lines.append(gutter + line)
            lines.append(" " * (len(gutter) + span.col - 1) + "^" * max(1, width))
    for text, where in getattr(error, "notes", ()):
        lines.append(f"  note: {text} at {where}")
    if error.hint:
        lines.append(f"  hint: {error.hint}")
    # a lone surrogate (text pasted into the builder) cannot be written to a stream: escaped
    return "\n".join(lines).encode("utf-8", "backslashreplace").decode("utf-8")


@functools.lru_cache(maxsize=8)
def _lines(text: str) -> list[str]:
    """A source's lines, split once for all the errors shown in it (a string keeps its
    hash, so finding the text again costs nothing)."""
    return text.split("\n")


def closest(word: str, choices) -> str | None:
    """The one of `choices` a misspelt `word` most likely meant, if any is close.

    Case is ignored (`ReLU` means `relu`, `Conv2D` means `conv2d`); a choice that differs
    from the word only in case wins over any other.
    """
    lowered: dict[str, str] = {}
    for choice in choices:
        lowered.setdefault(choice.lower(), choice)
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def suggest(word: str, choices) -> str | None:
    """The closest of `choices` to a misspelt `word`, as a 'did you mean' hint."""
    name = closest(word, choices)
    return f"did you mean '{name}'?" if name else None
