"""Fuzzing the front end: any text checks to a Network or to located SpecErrors, never a crash.

Two sources of text: random text and soups of grammar tokens, which mostly exercise the
parser's error paths; and small mutations of real specs, which parse far more often and so
reach expansion, the graph and the shape rules with odd values.
"""
import glob
import os
import re
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netdsl.driver import CheckFailed, Network, check_text
from netdsl.errors import SpecError, render
from netdsl.ops import OPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE = "fuzz.net"

SNIPPETS = [
    "input x : [64]\ntarget y : class(10)\n"
    "logits = x -> dense(256) -> relu -> dropout(0.2)\n   -> dense(10)\n"
    "loss cross_entropy(logits, y)\ntrain sgd(lr=0.1, momentum=0.9), batch=128, epochs=20\n",

    "input x : [3, 32, 32]\ntarget y : class(10)\n"
    "block basic(c, stride=1) {\n  in x\n"
    "  y = x -> conv(c, 3, stride=stride, pad=1, bias=false) -> batchnorm -> relu\n"
    "  out relu(y + project(x, c, stride))\n}\n"
    "f = x -> conv(16, 3, pad=1) -> basic(16) x 2 -> basic(32, stride=2) -> gap\n"
    "loss cross_entropy(f -> dense(10), y)\n",

    "input x : seq[16]\ntarget y : class(4)\nstate h : [32]\n"
    "h = tanh(dense(x, 32) + dense(h[t-1], 32, bias=false))\n"
    "loss cross_entropy(h -> last -> dense(4), y)\n",

    "import rnn\ninput w : seq class(100)\ntarget y : class(2)\n"
    "h = w -> embedding(16) -> lstm(32)\nloss cross_entropy(h -> last -> dense(2), y)\n",

    "input z : [8]\ninput real : [16]\ntarget one : [1]\n"
    "share D = dense(1)\nfake = z -> dense(16) -> tanh\n"
    "loss d: sigmoid_cross_entropy(real -> D, one)\nloss g: sigmoid_cross_entropy(fake -> D, label=1)\n",

    "input x : [3, 16, 16]\ntarget m : class(2)[16, 16]\n"
    "block dense_block(n, k) {\n  in x\n"
    "  for i in 1..n { x = concat(x, x -> batchnorm -> relu -> conv(k, 3, pad=1)) }\n  out x\n}\n"
    "a, b = split(x -> dense_block(2, 4) -> conv(4, 1), 2)\n"
    "u = a * b -> maxpool(2) -> upsample(2)\nloss cross_entropy(crop(u, x) -> conv(2, 1), m)\n",

    "input x : [8]\ntarget y : [8]\nmu = x -> dense(4)\nlogvar = x -> dense(4)\n"
    "z = mu + exp(0.5 * logvar) * normal([4])\n"
    "loss rec: mse(z -> dense(8) -> sigmoid, y)\nloss kl: 0.5 * kl_gaussian(mu, logvar)\n",
]


def _read(pattern: str) -> list[str]:
    texts = []
    for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
        with open(path, encoding="utf-8") as handle:
            texts.append(handle.read())
    return texts


SOURCES = _read("specs/*.net") + SNIPPETS
# mutations start from the valid sources and from the bad specs of tests/errors
BAD = _read("tests/errors/*.net")
LAYERS = sorted(OPS)
KEYWORDS = ["network", "input", "target", "state", "block", "in", "out", "loss", "train", "for",
            "share", "import", "seq", "class", "true", "false", "none", "learned", "zeros"]
HUGE = "9" * 5000  # past Python's int() digit limit
TOKENS = (["->", "(", ")", "[", "]", "{", "}", "=", ":", ",", "+", "-", "*", "/", "..", "x", "#",
           "\n", "'same'", '"rnn"', "h[t-1]", "h[t-2]", "h[t-0]", f"h[t-{HUGE}]", "t", "0", "1", "2",
           "3", "64", "-1", "0.5", "1e-3", "1.2.3", "99999999999999999999", HUGE, "a", "b", "h", "y",
           "z", "rnn", "sgd", "adam", "lr", "batch", "epochs", "pad", "stride", ".", "channels",
           "shape", "x.channels", "y.classes", "h.features", "shape(x)[0]", "shape(h)[-1]",
           "shape(3)[9]"] + KEYWORDS + LAYERS)
NUMBERS = ["0", "-1", "1", "2", "0.5", "1.5", "7", "99999999999", "1e30", "1e300", "4096" * 5, HUGE]
# a spec split into pieces; joining them gives the text back
PIECE = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|#[^\n]*|->|\d+(?:\.\d+)?(?:e-?\d+)?|\w+|\s+|.", re.S)


def assert_checks_cleanly(text: str) -> None:
    """check_text gives a Network, or CheckFailed whose errors are SpecErrors located in the file."""
    try:
        result = check_text(text, FILE)
    except CheckFailed as failed:
        assert failed.errors
        lines = max(1, len(text.split("\n")))
        for error in failed.errors:
            assert isinstance(error, SpecError), type(error)
            assert isinstance(error.message, str) and error.message
            if error.span is None:  # whole-file errors name the file instead
                assert FILE in error.message, error.message
            elif error.span.file == FILE:
                assert 1 <= error.span.line <= lines and error.span.col >= 1, (error.span, error.message)
            assert isinstance(render(error, failed.sources), str)
    else:
        assert isinstance(result, Network)


@st.composite
def token_soup(draw) -> str:
    tokens = draw(st.lists(st.sampled_from(TOKENS), max_size=60))
    gaps = draw(st.lists(st.sampled_from([" ", "", "\n", "  ", "\n  "]), min_size=len(tokens),
                         max_size=len(tokens)))
    return "".join(t + g for t, g in zip(tokens, gaps))


def _mutate(draw, text: str) -> str:
    pieces = PIECE.findall(text)
    words = [i for i, p in enumerate(pieces) if not p.isspace()]
    lines = text.split("\n")
    kind = draw(st.sampled_from(["delete", "duplicate", "swap", "number", "rename",
                                 "drop line", "copy line", "swap lines"]))
    if kind in ("drop line", "copy line", "swap lines"):
        i, j = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
        if kind == "drop line":
            del lines[i]
        elif kind == "copy line":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if not words:
        return text
    i, j = (draw(st.sampled_from(words)) for _ in range(2))
    if kind == "delete":
        pieces[i] = ""
    elif kind == "duplicate":
        pieces[i] = pieces[i] + " " + pieces[i]
    elif kind == "swap":
        pieces[i], pieces[j] = pieces[j], pieces[i]
    elif kind == "number":
        numbers = [k for k in words if pieces[k][0].isdigit()] or [i]
        pieces[draw(st.sampled_from(numbers))] = draw(st.sampled_from(NUMBERS))
    else:
        layers = [k for k in words if pieces[k] in OPS] or [i]
        k = draw(st.sampled_from(layers))
        pieces[k] = draw(st.sampled_from(LAYERS + [pieces[k][:-1], pieces[k] + "s", "dense"]))
    return "".join(pieces)


@st.composite
def mutated_spec(draw) -> str:
    text = draw(st.sampled_from(SOURCES + BAD))
    for _ in range(draw(st.integers(1, 3))):
        text = _mutate(draw, text)
    return text


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestRandomText:
    @FUZZ
    @given(st.text(alphabet=string.printable, max_size=300))
    def test_printable_text(self, text):
        assert_checks_cleanly(text)

    @FUZZ
    @given(st.text(max_size=120))
    def test_any_unicode(self, text):
        assert_checks_cleanly(text)

    @FUZZ
    @given(token_soup())
    def test_token_soup(self, text):
        assert_checks_cleanly(text)


class TestMutatedSpecs:
    @FUZZ
    @given(mutated_spec())
    def test_mutations_of_real_specs(self, text):
        assert_checks_cleanly(text)

    @FUZZ
    @given(st.sampled_from(SOURCES), st.data())
    def test_truncated_specs(self, text, data):
        cut = data.draw(st.integers(0, len(text)))
        assert_checks_cleanly(text[:cut])

    def test_sources_check(self):
        """The unmutated sources are valid, so mutations start from working specs."""
        for text in SOURCES:
            assert isinstance(check_text(text, FILE), Network)
