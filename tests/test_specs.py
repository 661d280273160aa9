"""The example specs: every file in specs/ checks, and counts the parameters it should.

Feed-forward specs are compared with a PyTorch twin built by hand in torch_models.py,
and the torchvision architectures also with torchvision's published counts. Recurrent
specs and the cells of the standard library are compared with their closed forms.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path

import pytest

from netdsl.cost import node_params
from netdsl.driver import check_file, check_text

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC_NAMES = sorted(p.stem for p in SPECS.glob("*.net"))

FEED_FORWARD = [
    "perceptron", "logistic_regression", "mlp", "lenet5", "alexnet", "vgg16", "nin",
    "googlenet", "resnet18", "resnet34", "resnet50", "resnet20", "densenet121", "fcn8s",
    "unet", "autoencoder", "conv_autoencoder", "vae", "gan",
]


# feed-forward specs whose first loss compares one prediction with its twin's (first) output
PREDICTING = [name for name in FEED_FORWARD if name not in ("vae", "gan")]


def dense(d: int, n: int, bias: bool = True) -> int:
    return d * n + (n if bias else 0)


def elman_cell(d: int, n: int) -> int:
    return dense(d, n) + dense(n, n, bias=False)


def jordan_cell(d: int, n: int, m: int) -> int:
    return dense(d, n) + dense(m, n, bias=False) + dense(n, m)


def lstm_cell(d: int, n: int) -> int:
    return dense(d + n, 4 * n)


def gru_cell(d: int, n: int) -> int:
    return dense(d + n, 2 * n) + dense(d, n) + dense(n, n, bias=False)


def scrn_cell(d: int, n: int, s: int) -> int:
    return dense(d, s, False) + dense(s, n, False) + dense(d, n, False) + dense(n, n, False)


# sequence and word specs: cells, readout and learned initial states (a learned state is a
# parameter)
RECURRENT = {
    "elman": elman_cell(16, 64) + dense(64, 16) + 64,
    "lstm": lstm_cell(16, 64) + dense(64, 16) + 64,
    "lstm_classifier": lstm_cell(32, 128) + dense(128, 10),
    "bidirectional_rnn": 2 * gru_cell(16, 64) + 2 * gru_cell(128, 64) + dense(128, 16),
    "parity": gru_cell(1, 16) + dense(16, 2),
    "jordan": jordan_cell(1, 16, 4) + dense(4, 2),
    "adding": lstm_cell(2, 32) + dense(32, 1),
    "gru": gru_cell(2, 32) + dense(32, 1),
    "char_lm": 96 * 32 + lstm_cell(32, 128) + dense(128, 96),
    "scrn": 96 * 32 + scrn_cell(32, 128, 32) + dense(128 + 32, 96),
    # two embeddings, a bidirectional GRU encoder, additive attention, a GRU decoder
    "seq2seq": 2 * 12 * 16 + 2 * gru_cell(16, 32) + (32 * 32 + 64 * 32 + 32)
    + dense(16 + 64 + 32, 64) + dense(16 + 64, 32) + dense(32, 32, False) + dense(32 + 64, 12),
    # word2vec: an embedding table and a softmax over the vocabulary
    "skipgram": 2000 * 64 + dense(64, 2000),
    "cbow": 2000 * 64 + dense(64, 2000),
}


def spec(name: str) -> str:
    return str(SPECS / f"{name}.net")


@functools.cache
def checked(name: str):
    """The checked network of specs/NAME.net, built once per test run."""
    return check_file(spec(name))


class TestCoverage:
    def test_every_spec_has_an_expected_count(self):
        assert sorted(FEED_FORWARD + list(RECURRENT)) == SPEC_NAMES

    @pytest.mark.parametrize("name", SPEC_NAMES)
    def test_spec_checks(self, name):
        assert checked(name).name == name

    @pytest.mark.parametrize("name", [n for n in SPEC_NAMES if n != "mlp"])
    def test_spec_cites_its_paper(self, name):
        # mlp.net is the example of docs/language.md, kept word for word
        header = Path(spec(name)).read_text().split("\nnetwork ")[0]
        assert header.startswith("#") and re.search(r"\((19|20)\d\d\)", header), (
            f"{name}.net should open with a comment citing its paper: authors (year)"
        )

    def test_mlp_is_the_documented_example(self):
        doc = (SPECS.parent / "docs" / "language.md").read_text()
        assert doc.split("```\n")[1] == Path(spec("mlp")).read_text()


@pytest.fixture(scope="module")
def torch_models():
    pytest.importorskip("torch")
    import torch_models

    return torch_models


def twin(torch_models, name: str):
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return torch_models.MODELS[name]()


class TestFeedForwardCounts:
    @pytest.mark.parametrize("name", FEED_FORWARD)
    def test_matches_torch(self, name, torch_models):
        assert checked(name).param_count() == torch_models.param_count(twin(torch_models, name))

    @pytest.mark.parametrize("name", FEED_FORWARD)
    def test_same_parameter_tensors_as_torch(self, name, torch_models):
        # stronger than the total: every weight and bias has its torch twin, shape for shape
        graph = checked(name).graph
        ours = Counter(tuple(shape) for node in graph.nodes
                       for shape in node_params(graph, node).values())
        theirs = Counter(tuple(p.shape) for p in twin(torch_models, name).parameters())
        assert ours == theirs

    @pytest.mark.parametrize("name", PREDICTING)
    def test_output_shape_matches_torch(self, name, torch_models):
        import torch

        graph = checked(name).graph
        (x,) = [n for n, d in graph.nodes(data=True) if d["kind"] == "input"]
        loss = next(iter(graph.graph["losses"].values()))
        (node,) = [src for src, _, d in graph.in_edges(loss, data=True) if 0 in d["ports"]]
        model = twin(torch_models, name).eval()
        y = model(torch.empty(2, *graph.nodes[x]["type"].dims, device="meta"))
        y = y[0] if isinstance(y, tuple) else y
        assert tuple(y.shape[1:]) == graph.nodes[node]["type"].dims

    @pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet18", "resnet34", "resnet50",
                                      "densenet121"])
    def test_matches_torchvision(self, name, torch_models):
        assert checked(name).param_count() == torch_models.PUBLISHED[name]

    def test_unet_matches_the_paper(self):
        """23 convolutions of the paper's figure 1, biases included."""
        assert checked("unet").param_count() == 31_030_658

    def test_lenet5(self):
        assert checked("lenet5").param_count() == 61_706

    def test_shared_instances_count_once(self, torch_models):
        # D is applied three times in gan.net; its weights exist once
        gan = torch_models.GAN()
        counted = checked("gan").param_count()
        assert counted == torch_models.param_count(gan.G) + torch_models.param_count(gan.D)


class TestRecurrentCounts:
    @pytest.mark.parametrize("name", sorted(RECURRENT))
    def test_closed_form(self, name):
        assert checked(name).param_count() == RECURRENT[name]


class TestStdlibRnn:
    """Each cell of netdsl/stdlib/rnn.net on seq[16] inputs, read out by a dense(10)."""

    @pytest.mark.parametrize("call, width, cell", [
        ("elman(32)", 32, elman_cell(16, 32)),
        ("jordan(32, 8)", 8, jordan_cell(16, 32, 8)),
        ("lstm(32)", 32, lstm_cell(16, 32)),
        ("gru(32)", 32, gru_cell(16, 32)),
        ("scrn(32, 8)", 40, scrn_cell(16, 32, 8)),
    ])
    def test_cell_params(self, call, width, cell):
        text = (
            "import rnn\n"
            "input  x : seq[16]\n"
            "target y : seq[10]\n"
            f"h = x -> {call}\n"
            "loss mse(h -> dense(10), y)\n"
        )
        assert check_text(text, "cell.net").param_count() == cell + dense(width, 10)

    def test_stacked_cells_have_their_own_weights(self):
        text = (
            "import rnn\n"
            "input  x : seq[16]\n"
            "target y : class(10)\n"
            "logits = x -> lstm(32) -> lstm(32) -> last -> dense(10)\n"
            "loss cross_entropy(logits, y)\n"
        )
        expected = lstm_cell(16, 32) + lstm_cell(32, 32) + dense(32, 10)
        assert check_text(text, "stacked.net").param_count() == expected
