"""The named sequence datasets of the recurrent demos, and their fit to a spec."""
from __future__ import annotations

import numpy as np
import pytest

from netdsl.driver import check_text
from netdsl.runtime.data import DataError, load_data
from netdsl.runtime.data.sequences import (SEQUENCE_DATA, corpus, decode_text, encode_text,
                                           sequence_data, words)


def test_parity_targets_are_the_running_parity_of_the_bits():
    (bits,), (running,), _ = sequence_data("parity", seed=0, examples=50, steps=12)
    bits = bits[..., 0].astype(int)
    for row, labels in zip(bits, running):
        assert list(labels) == [sum(row[:t + 1]) % 2 for t in range(len(row))]


def test_adding_targets_sum_the_two_marked_values_one_in_each_half():
    (pairs,), (total,), _ = sequence_data("adding", seed=0, examples=50, steps=10)
    values, markers = pairs[..., 0], pairs[..., 1]
    assert (markers.sum(axis=1) == 2).all()
    assert (markers[:, :5].sum(axis=1) == 1).all() and (markers[:, 5:].sum(axis=1) == 1).all()
    np.testing.assert_allclose(total[:, 0], (values * markers).sum(axis=1), rtol=1e-6)


def test_text_targets_are_the_next_character():
    (text,), (following,), description = sequence_data("text", seed=0, examples=20, steps=30)
    assert (text[:, 1:] == following[:, :-1]).all()
    passage = decode_text(text[0])
    assert passage in corpus() or "?" in passage  # characters outside ASCII read as '?'
    assert decode_text(encode_text("def f(x):\n")) == "def f(x):\n"
    assert "465," in description or "464," in description


def test_word2vec_pairs_come_from_a_window_of_the_text():
    codes, vocab = words()
    (word,), (context,), _ = sequence_data("skipgram", seed=0, examples=200)
    assert word.shape == context.shape == (200,)
    assert len(vocab) == 2000 and word.max() < 2000
    assert (codes[:-1] != codes[1:]).any()
    (bag,), (middle,), _ = sequence_data("cbow", seed=0, examples=200)
    assert bag.shape == (200, 4) and middle.shape == (200,)


def test_reverse_targets_are_the_reversed_source_and_the_decoder_reads_them_shifted():
    (source, shifted), (target,), _ = sequence_data("reverse", seed=0, examples=30, steps=6)
    assert (target == source[:, ::-1]).all()
    assert (shifted[:, 0] == 0).all() and (shifted[:, 1:] == target[:, :-1]).all()
    assert source.min() >= 1


def test_the_same_seed_gives_the_same_data():
    for name in SEQUENCE_DATA:
        a, b = (sequence_data(name, seed=3, examples=16, steps=5) for _ in range(2))
        assert all((x == y).all() for x, y in zip(a[0] + a[1], b[0] + b[1])), name


def spec(inputs: str, target: str) -> str:
    return f"import rnn\ninput x : {inputs}\ntarget y : {target}\n" \
           "logits = x -> gru(4) -> dense(2)\nloss cross_entropy(logits, y)\n"


def test_a_spec_that_fits_gets_the_named_data_with_its_description():
    graph = check_text(spec("seq[1]", "seq class(2)")).graph
    data = load_data(graph, "parity", seed=0, examples=64, steps=7)
    assert data.arrays["x"].shape == (64, 7, 1) and data.arrays["y"].shape == (64, 7)
    assert "parity of the bits so far" in data.description and "{count}" not in data.description


def test_a_spec_that_does_not_fit_the_named_data_is_told_what_it_holds():
    graph = check_text(spec("seq[3]", "seq class(2)")).graph
    with pytest.raises(DataError) as info:
        load_data(graph, "parity", seed=0, examples=8)
    assert "'parity' data gives each example an input of shape [20, 1]" in info.value.message
    assert "x seq[3]" in info.value.message
