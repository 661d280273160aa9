"""Where a quoted import may read from: the checked spec's folder tree, and folders the
user adds with `--import-path DIR` or NETDSL_IMPORT_PATH. Nothing else is opened, so a
spec cannot make netdsl read (and quote in an error) a file that is not a spec."""
from __future__ import annotations

import os

from netdsl.errors import Span, SpecError

__all__ = ["ENV_VAR", "import_roots", "resolve_import", "spec_name", "is_path_name",
           "not_a_folder", "unusable_env_folders"]

ENV_VAR = "NETDSL_IMPORT_PATH"


def is_path_name(file: str) -> bool:
    """Whether a spec's name is a path on disk, not a label such as `<spec>`."""
    return not (file.startswith("<") and file.endswith(">"))


def spec_name(file: str) -> str:
    """The name a spec is known by in errors and import bookkeeping: `./a.net` and `a.net`
    are one file."""
    return os.path.normpath(file) if is_path_name(file) else file


def not_a_folder(path: str) -> str | None:
    """Why `path` cannot widen where imports read (it does not exist, or is a file), or
    None for a folder."""
    if os.path.isdir(path):
        return None
    return f"{path} is a file, not a folder" if os.path.exists(path) else \
        f"no such folder: {path}"


def unusable_env_folders() -> list[str]:
    """Why each of NETDSL_IMPORT_PATH's entries that is not a folder cannot be read from."""
    return [why for why in map(not_a_folder, _env_folders()) if why is not None]


def _env_folders() -> list[str]:
    return [folder for folder in os.environ.get(ENV_VAR, "").split(os.pathsep) if folder]


def import_roots(spec_file: str, extra=()) -> tuple[str, ...]:
    """The folders imports may read from: the spec's own folder (the working folder for a
    spec without a file), then `extra`, then NETDSL_IMPORT_PATH's folders; real paths."""
    base = os.path.dirname(os.path.abspath(spec_file)) if is_path_name(spec_file) else os.getcwd()
    from_env = _env_folders()
    return tuple(dict.fromkeys(os.path.realpath(folder) for folder in (base, *extra, *from_env)))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_import(target: str, importing: str, roots: tuple[str, ...], span: Span | None) -> str:
    """The path a quoted import names, relative to the importing file, once it is known to
    lie inside `roots` (symbolic links followed) and to be a `.net` file that exists.

    Raises
    ------
    SpecError
        Located at the import, saying why the file may not be read and how to allow it.
    """
    base = os.path.dirname(importing) if is_path_name(importing) else ""
    path = os.path.normpath(os.path.join(base, target))
    real = os.path.realpath(path)
    if not any(_inside(real, root) for root in roots):
        folder = os.path.dirname(real)
        raise SpecError(
            f"cannot import '{target}': {real} is outside the folders imports may read "
            f"({', '.join(roots)})", span,
            f"imports read the spec's own folder tree and the standard library; to allow "
            f"{folder}, pass --import-path {folder} or add it to {ENV_VAR}")
    if not (path.endswith(".net") and real.endswith(".net")):  # a link too must name a spec
        raise SpecError(f"cannot import '{target}': only .net spec files can be imported", span,
                        "name a .net file; the standard library is imported by name: import rnn")
    if not os.path.isfile(path):
        what = "it is a directory" if os.path.isdir(path) else f"no such file {path}"
        raise SpecError(f"cannot import '{target}': {what}", span,
                        "a quoted import is a path relative to the importing file")
    return path
