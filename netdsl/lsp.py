"""`netc lsp`: the language server for .net specs, on pygls, over stdin and stdout.

It publishes the checker's errors as you type (a check runs once typing pauses for
CHECK_DELAY), shows a node's shape, parameters and mult-adds on hover, goes to a block's
definition across imports, and completes layer and block names and their keyword
arguments. The answers come from netdsl.spec_index; this module speaks the protocol.
"""
from __future__ import annotations

import asyncio
from urllib.parse import unquote

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from netdsl import __version__
from netdsl.spec_index import Place, SpecIndex

__all__ = ["NetdslServer", "serve", "CHECK_DELAY"]

CHECK_DELAY = 0.2  # seconds without a keystroke before the text is checked

_KINDS = {"layer": lsp.CompletionItemKind.Function, "block": lsp.CompletionItemKind.Class,
          "optimizer": lsp.CompletionItemKind.Function,
          "argument": lsp.CompletionItemKind.Property, "keyword": lsp.CompletionItemKind.Keyword,
          "constant": lsp.CompletionItemKind.Constant, "dimension": lsp.CompletionItemKind.Field}
_ORDER = {"argument": "0", "dimension": "0", "optimizer": "1", "layer": "1", "block": "2",
          "constant": "3", "keyword": "4"}


class NetdslServer(LanguageServer):
    """A language server that keeps the latest checked version of each open spec."""

    def __init__(self):
        super().__init__("netc-lsp", __version__,
                         text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.indexes: dict[str, SpecIndex] = {}

    def index(self, uri: str) -> SpecIndex:
        """The index of the document's current text, checking it if it changed."""
        text = self.workspace.get_text_document(uri).source
        known = self.indexes.get(uri)
        if known is None or known.text != text:
            known = self.indexes[uri] = SpecIndex(text, _path(uri), known)
        return known

    async def check(self, uri: str) -> None:
        """Check the document off the event loop and publish its diagnostics, unless the
        text changed meanwhile (the check of the newer text will publish)."""
        document = self.workspace.get_text_document(uri)
        text, version = document.source, document.version
        index = await asyncio.to_thread(SpecIndex, text, _path(uri), self.indexes.get(uri))
        document = _open_document(self, uri)
        if document is None or document.source != text:
            return
        self.indexes[uri] = index
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
            uri=uri, version=version,
            diagnostics=[_diagnostic(self, uri, d) for d in index.diagnostics()]))


server = NetdslServer()


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
async def did_open(ls: NetdslServer, params: lsp.DidOpenTextDocumentParams) -> None:
    await ls.check(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
async def did_change(ls: NetdslServer, params: lsp.DidChangeTextDocumentParams) -> None:
    uri, version = params.text_document.uri, params.text_document.version
    await asyncio.sleep(CHECK_DELAY)
    document = _open_document(ls, uri)
    if document is not None and document.version == version:  # typing has paused
        await ls.check(uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
async def did_save(ls: NetdslServer, params: lsp.DidSaveTextDocumentParams) -> None:
    await ls.check(params.text_document.uri)  # an imported file may have changed on disk


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: NetdslServer, params: lsp.DidCloseTextDocumentParams) -> None:
    ls.indexes.pop(params.text_document.uri, None)
    ls.text_document_publish_diagnostics(
        lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: NetdslServer, params: lsp.HoverParams) -> lsp.Hover | None:
    uri = params.text_document.uri
    line, col = _position(ls, uri, params.position)
    index = ls.index(uri)
    text = index.hover(line, col)
    if text is None:
        return None
    document = ls.workspace.get_text_document(uri)
    where = document.position_codec.range_to_client_units(
        document.lines, _range(index.word_place(line, col)))
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text),
                     range=where)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def definition(ls: NetdslServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    line, col = _position(ls, params.text_document.uri, params.position)
    place = ls.index(params.text_document.uri).definition(line, col)
    return lsp.Location(uri=_uri(place.file), range=_range(place)) if place else None


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION,
                lsp.CompletionOptions(trigger_characters=["(", ",", ">", " "]))
def completion(ls: NetdslServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    line, col = _position(ls, params.text_document.uri, params.position)
    items = [lsp.CompletionItem(label=c.label, kind=_KINDS[c.kind], detail=c.detail,
                                insert_text=c.insert, sort_text=_ORDER[c.kind] + c.label)
             for c in ls.index(params.text_document.uri).completions(line, col)]
    return lsp.CompletionList(is_incomplete=False, items=items)


def _open_document(ls: NetdslServer, uri: str):
    """The document if it is still open (get_text_document would make it up)."""
    return ls.workspace.text_documents.get(unquote(uri))


def _path(uri: str) -> str:
    """The file a document is (an unsaved one is named by its URI)."""
    return to_fs_path(uri) or uri


def _uri(path: str) -> str:
    return from_fs_path(path) or path


def _position(ls: NetdslServer, uri: str, position: lsp.Position) -> tuple[int, int]:
    """A client position (UTF-16 units, by default) as a line and a character index."""
    document = ls.workspace.get_text_document(uri)
    converted = document.position_codec.position_from_client_units(document.lines, position)
    return converted.line, converted.character


def _range(place: Place) -> lsp.Range:
    return lsp.Range(start=lsp.Position(line=place.line, character=place.col),
                     end=lsp.Position(line=place.end_line, character=place.end_col))


def _diagnostic(ls: NetdslServer, uri: str, found) -> lsp.Diagnostic:
    document = ls.workspace.get_text_document(uri)
    where = document.position_codec.range_to_client_units(document.lines, _range(found.place))
    related = [lsp.DiagnosticRelatedInformation(
                   location=lsp.Location(uri=_uri(place.file), range=_range(place)), message=text)
               for text, place in found.related]
    return lsp.Diagnostic(range=where, message=found.message, severity=lsp.DiagnosticSeverity.Error,
                          source="netc", related_information=related or None)


def serve() -> int:
    """Serve one editor over stdin and stdout until it shuts the server down."""
    server.start_io()
    return 0
