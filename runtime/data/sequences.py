"""Named sequence datasets for the recurrent demos: `--data NAME` or the train clause's
`data='NAME'`.

* `parity`: random bit strings and, at every step, the parity of the bits so far
  (Minsky and Papert's problem; an RNN that carries one bit generalises to any length).
* `adding`: Hochreiter and Schmidhuber's adding problem: pairs (value, marker), and the
  sum of the two marked values.
* `text`: characters of the Python documentation that every Python install carries
  (`pydoc_data.topics`, about 465,000 characters), with the next character at every step.
* `skipgram` and `cbow`: word2vec pairs from the same text: a word and one word of its
  context, or a context window and its middle word.
* `reverse`: a toy translation for sequence-to-sequence networks: a sequence of words,
  the target shifted right as the decoder's input, and the reversed sequence.

Each is generated from the seed, so the same seed gives the same data. The network's
inputs and targets are matched in declaration order, and their declared types must fit
the data; a mismatch says what the data holds.
"""
from __future__ import annotations

import collections
import functools
import re

import numpy as np

from netdsl.runtime.data.dataset import DataError, Dataset, Field, describe_fields

__all__ = ["SEQUENCE_DATA", "sequence_data", "load_named", "encode_text", "decode_text",
           "ALPHABET"]

# printable ASCII and the newline: 96 classes; anything else reads as '?'
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
VOCABULARY = 2000   # the most frequent words, then one class for every other word
WINDOW = 2          # words on each side of the middle word
TOKENS = 12         # the reversal task's vocabulary, the start symbol 0 included


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    # 750 kB of source that only the text tasks read
    from pydoc_data.topics import topics
    return "".join(topics[key] for key in sorted(topics))


def encode_text(text: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(ALPHABET)}
    unknown = index["?"]
    return np.fromiter((index.get(c, unknown) for c in text), dtype=np.int64, count=len(text))


def decode_text(codes) -> str:
    return "".join(ALPHABET[int(c)] for c in codes)


def parity(rng, examples: int, steps: int) -> tuple[tuple, tuple, str]:
    bits = rng.integers(0, 2, (examples, steps))
    running = np.cumsum(bits, axis=1) % 2
    return ((bits[..., None].astype(np.float32),), (running.astype(np.int64),),
            f"{{count}} random bit strings of {steps} bits; the target at each step is the "
            "parity of the bits so far")


def adding(rng, examples: int, steps: int) -> tuple[tuple, tuple, str]:
    values = rng.uniform(0, 1, (examples, steps)).astype(np.float32)
    markers = np.zeros((examples, steps), dtype=np.float32)
    half = max(steps // 2, 1)
    first = rng.integers(0, half, examples)
    second = rng.integers(half, steps, examples) if steps > 1 else first
    rows = np.arange(examples)
    markers[rows, first] = markers[rows, second] = 1
    total = (values * markers).sum(axis=1, keepdims=True)
    return ((np.stack([values, markers], axis=-1),), (total,),
            f"the adding problem: {{count}} sequences of {steps} (value, marker) pairs; "
            "the target is the sum of the two marked values")


def text(rng, examples: int, steps: int) -> tuple[tuple, tuple, str]:
    codes = encode_text(corpus())
    starts = rng.integers(0, len(codes) - steps - 1, examples)
    windows = starts[:, None] + np.arange(steps + 1)
    chunks = codes[windows]
    return ((chunks[:, :-1],), (chunks[:, 1:],),
            f"{{count}} passages of {steps} characters of the Python documentation "
            f"(pydoc_data.topics, {len(codes):,} characters, {len(ALPHABET)} classes: printable "
            "ASCII and newline); the target is the next character")


@functools.lru_cache(maxsize=1)
def words() -> tuple[np.ndarray, tuple[str, ...]]:
    """The corpus as word classes: the VOCABULARY - 1 most frequent words, then 'other'."""
    tokens = re.findall(r"[a-z]+", corpus().lower())
    common = [w for w, _ in collections.Counter(tokens).most_common(VOCABULARY - 1)]
    index = {w: i for i, w in enumerate(common)}
    other = len(common)
    return (np.fromiter((index.get(w, other) for w in tokens), dtype=np.int64, count=len(tokens)),
            tuple(common) + ("<other>",))


def skipgram(rng, examples: int, steps: int) -> tuple[tuple, tuple, str]:
    codes, vocab = words()
    middle = rng.integers(WINDOW, len(codes) - WINDOW, examples)
    offsets = rng.choice([o for o in range(-WINDOW, WINDOW + 1) if o], examples)
    return ((codes[middle],), (codes[middle + offsets],),
            f"{{count}} skip-gram pairs from the words of the Python documentation "
            f"({len(codes):,} words, the {len(vocab) - 1} most frequent and one class for the "
            f"rest): a word, and a word at most {WINDOW} away")


def cbow(rng, examples: int, steps: int) -> tuple[tuple, tuple, str]:
    codes, vocab = words()
    middle = rng.integers(WINDOW, len(codes) - WINDOW, examples)
    offsets = np.array([o for o in range(-WINDOW, WINDOW + 1) if o])
    return ((codes[middle[:, None] + offsets],), (codes[middle],),
            f"{{count}} continuous bag-of-words windows from the words of the Python "
            f"documentation ({len(vocab)} classes): the {2 * WINDOW} words around a middle "
            "word, and that word")


# name -> (generator, examples, steps): enough examples to learn from, steps that train fast
def reverse(rng, examples: int, steps: int) -> tuple[tuple, tuple, str]:
    """A toy translation: the source words in reverse order. The decoder reads the target
    shifted one step right, starting from class 0 (teacher forcing)."""
    source = rng.integers(1, TOKENS, (examples, steps))
    target = source[:, ::-1]
    shifted = np.concatenate([np.zeros((examples, 1), dtype=target.dtype), target[:, :-1]], axis=1)
    return ((source, shifted), (np.ascontiguousarray(target),),
            f"{{count}} sequences of {steps} words from {TOKENS - 1} (classes 1..{TOKENS - 1}; 0 "
            "starts the target), to be translated into their reverse; the decoder reads the "
            "target shifted right (teacher forcing)")


SEQUENCE_DATA = {
    "parity": (parity, 1024, 20),
    "adding": (adding, 10_000, 30),
    "text": (text, 4_000, 100),
    "skipgram": (skipgram, 100_000, 1),
    "cbow": (cbow, 100_000, 1),
    "reverse": (reverse, 10_000, 8),
}


def sequence_data(name: str, seed: int, examples: int | None = None,
                  steps: int | None = None) -> tuple[tuple, tuple, str]:
    """(input arrays, target arrays, description) of a named dataset, with its own number
    of examples and steps unless given; the inputs and targets are matched to the spec's
    in declaration order, and the description says {count} where the number of examples
    goes."""
    make, default_examples, default_steps = SEQUENCE_DATA[name]
    return make(np.random.default_rng([seed, 7]), examples or default_examples,
                steps or default_steps)


def load_named(name: str, fields: list[Field], seed: int, examples: int | None,
               steps: int | None) -> Dataset:
    """A named bundled dataset, its inputs and targets matched to the spec's in declaration
    order and checked against their declared types."""
    inputs, targets, description = sequence_data(name, seed, examples, steps)
    pairs = [(f, a, "input") for f, a in zip([f for f in fields if f.kind == "input"], inputs)]
    pairs += [(f, a, "target") for f, a in zip([f for f in fields if f.kind == "target"], targets)]
    declared = collections.Counter(f.kind for f in fields)
    if (declared["input"], declared["target"]) != (len(inputs), len(targets)):
        raise DataError(f"the '{name}' data has {len(inputs)} input(s) and {len(targets)} "
                        f"target(s), but the spec declares {describe_fields(fields)}",
                        f"declare them as the specs/ demos of '{name}' do")
    out = {}
    for f, a, role in pairs:
        per_example = (a.shape[1:2] if f.type.seq else ()) + f.type.dims
        classes = int(a.max()) + 1 if a.dtype.kind == "i" else None
        fits = (a.shape[1:] == per_example and (classes is None) == (not f.is_class)
                and (classes is None or classes <= f.type.classes))
        if not fits:
            kind = f"class labels up to {classes - 1}" if classes else "numbers"
            raise DataError(f"the '{name}' data gives each example an {role} of shape "
                            f"{list(a.shape[1:])} ({kind}), but the spec declares {f}",
                            f"declare {f.name} to match, as the specs/ demos of '{name}' do")
        out[f.name] = a
    return Dataset(out, description)
