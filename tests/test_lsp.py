"""`netc lsp` through a real client: pygls's LanguageClient starts the server in a
subprocess and talks to it over stdio, as an editor does."""
import asyncio
import os
import re
import sys
from pathlib import Path

import pytest
from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient
from pygls.uris import from_fs_path, to_fs_path

from conftest import ROOT
from netdsl.cli import main
from netdsl.errors import Span, SpecError
from netdsl.spec_index import SpecIndex

BLOCKS = """\
# a dense layer and its activation, as a block
block widen(n, act_slope=0.1) {
  in x
  out x -> dense(n) -> leaky_relu(act_slope)
}
"""

MAIN = """\
import "lib/blocks.net"
network demo
input x : [8]
target y : class(3)
h = x -> widen(16) -> dense(3)
loss cross_entropy(h, y)
"""

BROKEN_IMPORT = """\
import "lib/broken.net"
input x : [8]
target y : class(3)
loss cross_entropy(x -> oops(3), y)
"""

BROKEN = """\
block oops(n) {
  in x
  out x -> dense(n) -> frobnicate
}
"""

TIMEOUT = 20  # seconds for any one answer; a check of these specs takes milliseconds


def position_of(text: str, needle: str, offset: int = 0) -> lsp.Position:
    """The position of the first `needle` in `text`, plus `offset` characters."""
    index = text.index(needle) + offset
    line = text.count("\n", 0, index)
    return lsp.Position(line=line, character=index - (text.rfind("\n", 0, index) + 1))


async def conversation(folder: Path) -> dict:
    """Open, hover, jump, complete and edit, as an editor would; return what came back."""
    client = LanguageClient("netdsl-test", "1")
    published: asyncio.Queue = asyncio.Queue()

    @client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def diagnostics(params: lsp.PublishDiagnosticsParams):
        published.put_nowait(params)

    async def next_diagnostics(uri: str) -> list[lsp.Diagnostic]:
        while True:
            params = await asyncio.wait_for(published.get(), TIMEOUT)
            if params.uri == uri:
                return params.diagnostics

    async def ask(coroutine):
        return await asyncio.wait_for(coroutine, TIMEOUT)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    await client.start_io(sys.executable, "-c",
                          "import sys; from netdsl.cli import main; sys.exit(main(['lsp']))",
                          env=env, cwd=str(folder))
    answers: dict = {}
    try:
        init = await ask(client.initialize_async(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(), root_uri=from_fs_path(str(folder)))))
        answers["capabilities"] = init.capabilities
        client.initialized(lsp.InitializedParams())

        main_uri = from_fs_path(str(folder / "main.net"))
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(uri=main_uri, language_id="netdsl", version=1, text=MAIN)))
        answers["opened"] = await next_diagnostics(main_uri)

        doc = lsp.TextDocumentIdentifier(uri=main_uri)
        answers["hover_dense"] = await ask(client.text_document_hover_async(
            lsp.HoverParams(doc, position_of(MAIN, "dense(3)", 2))))
        answers["hover_block"] = await ask(client.text_document_hover_async(
            lsp.HoverParams(doc, position_of(MAIN, "widen"))))
        answers["hover_value"] = await ask(client.text_document_hover_async(
            lsp.HoverParams(doc, position_of(MAIN, "h = "))))
        answers["definition"] = await ask(client.text_document_definition_async(
            lsp.DefinitionParams(doc, position_of(MAIN, "widen", 3))))
        answers["complete_args"] = await ask(client.text_document_completion_async(
            lsp.CompletionParams(doc, position_of(MAIN, "widen(", len("widen(")))))
        answers["complete_layer"] = await ask(client.text_document_completion_async(
            lsp.CompletionParams(doc, position_of(MAIN, "dense(3)", 1))))

        # typing: three quick edits, the last one a mistake; then its fix
        for version, units in ((2, "5"), (3, "6"), (4, "4")):
            start = position_of(MAIN, "dense(3)", len("dense("))
            end = lsp.Position(line=start.line, character=start.character + 1)
            client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                lsp.VersionedTextDocumentIdentifier(uri=main_uri, version=version),
                [lsp.TextDocumentContentChangePartial(range=lsp.Range(start, end), text=units)]))
        answers["typed"] = await next_diagnostics(main_uri)
        client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(uri=main_uri, version=5),
            [lsp.TextDocumentContentChangeWholeDocument(text=MAIN)]))
        answers["fixed"] = await next_diagnostics(main_uri)
        answers["extra"] = [p for p in [published.get_nowait() for _ in range(published.qsize())]
                            if p.uri == main_uri]

        broken_uri = from_fs_path(str(folder / "broken_import.net"))
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(
            uri=broken_uri, language_id="netdsl", version=1, text=BROKEN_IMPORT)))
        answers["imported_error"] = await next_diagnostics(broken_uri)

        await ask(client.shutdown_async(None))
        client.exit(None)
    finally:
        await asyncio.wait_for(client.stop(), TIMEOUT)
    return answers


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("lsp")
    (folder / "lib").mkdir()
    (folder / "lib" / "blocks.net").write_text(BLOCKS)
    (folder / "lib" / "broken.net").write_text(BROKEN)
    return asyncio.run(conversation(folder))


def test_server_announces_what_it_answers(answers):
    capabilities = answers["capabilities"]
    assert capabilities.hover_provider and capabilities.definition_provider
    assert "(" in capabilities.completion_provider.trigger_characters


def test_a_good_spec_has_no_diagnostics(answers):
    assert list(answers["opened"]) == []


def test_hover_on_a_layer_shows_its_shape_parameters_and_mult_adds(answers):
    text = answers["hover_dense"].contents.value
    assert "dense(units, bias=true)" in text
    assert "output `[3]`" in text
    assert "parameters 51 (weight [3, 16], bias [3])" in text  # 16*3 + 3
    assert "mult-adds 51 (102 FLOPs)" in text  # each weight and bias once, as torchinfo


def test_hover_on_a_block_call_sums_its_instance(answers):
    text = answers["hover_block"].contents.value
    assert "block widen" in text and "widen(n, act_slope=...)" in text
    start = position_of(MAIN, "widen")
    assert answers["hover_block"].range == lsp.Range(
        start, lsp.Position(line=start.line, character=start.character + len("widen")))
    assert "output `[16]`" in text and "parameters 144" in text  # 8*16 + 16


def test_hover_on_a_value_shows_its_node(answers):
    text = answers["hover_value"].contents.value
    assert "**h**" in text and "output `[3]`" in text


def test_definition_of_an_imported_block(answers):
    location = answers["definition"]
    assert Path(to_fs_path(location.uri)).name == "blocks.net"
    assert location.range.start == lsp.Position(line=1, character=6)  # `widen` in `block widen(`
    assert location.range.end == lsp.Position(line=1, character=11)


def test_completion_of_keyword_arguments(answers):
    items = {item.label: item for item in answers["complete_args"].items}
    assert items["n"].insert_text == "n=" and items["act_slope"].kind == lsp.CompletionItemKind.Property
    assert min(items, key=lambda label: items[label].sort_text) in ("n", "act_slope")


def test_completion_of_layer_names(answers):
    labels = {item.label for item in answers["complete_layer"].items}
    assert {"dense", "dropout"} <= labels and "conv" not in labels  # the prefix `d` typed
    items = {item.label: item for item in answers["complete_layer"].items}
    assert items["dropout"].detail == "dropout(p=0.5)"


def test_diagnostics_follow_typing(answers):
    (error,) = answers["typed"]  # the last of three quick edits: 4 scores for 3 classes
    assert error.severity == lsp.DiagnosticSeverity.Error and error.source == "netc"
    assert error.range.start.line == MAIN.split("\n").index("loss cross_entropy(h, y)")
    assert "3" in error.message and "4" in error.message
    assert list(answers["fixed"]) == []
    assert answers["extra"] == []  # the intermediate versions were never published


def test_an_error_in_an_imported_file_is_shown_at_the_import(answers):
    (error,) = answers["imported_error"]
    assert error.range.start.line == 0  # the import line
    assert "frobnicate" in error.message
    # where in the imported file, then the call that led there (a note)
    where, call = error.related_information
    assert Path(to_fs_path(where.location.uri)).name == "broken.net"
    assert where.location.range.start.line == 2
    assert call.message.startswith("in oops(3)")
    assert Path(to_fs_path(call.location.uri)).name == "broken_import.net"


# ---- the index behind the server, without the protocol


def test_notes_become_related_information(tmp_path):
    index = SpecIndex("input x : [4]\n", str(tmp_path / "n.net"))
    error = SpecError("wrong", Span(index.path, 1, 1, 1, 5), "fix it")
    error.notes = (("in widen(16)", Span("<stdlib>/rnn.net", 3, 2, 3, 6)),)
    index.errors = [error, SpecError("about the whole spec")]
    found, whole = index.diagnostics()
    assert (whole.place.line, whole.place.col, whole.place.end_col) == (0, 0, len("input x : [4]"))
    assert found.message == "wrong\nhint: fix it"
    ((text, place),) = found.related
    assert text == "in widen(16)" and place.file.endswith(os.path.join("stdlib", "rnn.net"))
    assert (place.line, place.col, place.end_col) == (2, 1, 6)


def test_definition_reaches_the_standard_library(tmp_path):
    text = "import rnn\ninput x : seq[4]\nh = x -> lstm(8) -> last\n"
    index = SpecIndex(text, str(tmp_path / "s.net"))
    place = index.definition(2, text.split("\n")[2].index("lstm") + 1)
    assert place.file.endswith(os.path.join("stdlib", "rnn.net"))
    with open(place.file) as handle:
        line = handle.read().split("\n")[place.line]
    assert line[place.col:place.end_col] == "lstm" and line.startswith("block lstm(")


def test_completion_works_while_the_text_does_not_parse(tmp_path):
    good = "block widen(n) {\n  in x\n  out x -> dense(n)\n}\ninput x : [4]\n"
    path = str(tmp_path / "c.net")
    before = SpecIndex(good, path)
    broken = good + "h = x -> widen("
    index = SpecIndex(broken, path, before)
    assert index.diagnostics()  # it does not parse
    labels = [c.label for c in index.completions(5, len("h = x -> widen("))]
    assert labels[0] == "n"
    # a parenthesis in a comment or a string opens no call
    commented = SpecIndex(good + "# widen(\nstate h : [4], ", path, before)
    assert all(c.kind != "argument" for c in commented.completions(6, len("state h : [4], ")))


def test_netc_lsp_without_pygls_says_what_to_install(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "netdsl.lsp", raising=False)
    monkeypatch.setitem(sys.modules, "pygls.lsp.server", None)  # as if it were not installed
    assert main(["lsp"]) == 1
    err = capsys.readouterr().err
    assert "netc lsp needs the pygls package" in err and "pip install 'netdsl[lsp]'" in err
    assert "Traceback" not in err


def test_completion_in_a_train_clause(tmp_path):
    text = "input x : [4]\ntrain adam(b"
    index = SpecIndex(text, str(tmp_path / "t.net"))
    arguments = index.completions(1, len("train adam(b"))
    assert [c.label for c in arguments if c.kind == "argument"] == ["beta1", "beta2"]
    assert arguments[0].detail.startswith("adam(lr=0.001, beta1=0.9")
    optimizers = [c.label for c in index.completions(1, len("train ")) if c.kind == "optimizer"]
    assert optimizers == ["adagrad", "adam", "rmsprop", "sgd"]


@pytest.mark.parametrize("name", ["gan.net", "seq2seq.net", "lstm.net"])
def test_every_word_of_a_spec_has_answers_or_none(name):
    """Hover, definition and completion at every word of specs with shared instances,
    states and attention: no exception, and hover finds the shared discriminator."""
    path = os.path.join(ROOT, "specs", name)
    with open(path) as handle:
        text = handle.read()
    index = SpecIndex(text, path)
    assert index.diagnostics() == []
    for number, line in enumerate(text.split("\n")):
        for word in re.finditer(r"\w+", line):
            index.hover(number, word.start())
            index.definition(number, word.start())
            index.completions(number, word.end())
    if name == "gan.net":
        number, line = next((n, l) for n, l in enumerate(text.split("\n")) if "-> D" in l)
        assert "shared instance of block `discriminator`" in index.hover(number, line.index("-> D") + 3)


def test_completion_after_a_tensor_name_and_a_dot_offers_its_dimensions(tmp_path):
    text = "input x : [3, 8, 8]\nh = x -> conv(x.ch"
    index = SpecIndex(text, str(tmp_path / "d.net"))
    [item] = index.completions(1, len("h = x -> conv(x.ch"))
    assert (item.label, item.kind) == ("channels", "dimension")
    labels = [c.label for c in index.completions(1, len("h = x -> conv(x."))]
    assert labels == ["features", "channels", "length", "height", "width", "classes"]
    # a loop's range is no dimension
    loop = SpecIndex("for i in 1..", str(tmp_path / "l.net"))
    assert all(c.kind != "dimension" for c in loop.completions(0, len("for i in 1..")))
