"""Which server folders a browser user may read: the data roots.

The dashboard lets a user type a folder path that the *server* then reads. Without a policy any
browser user could list ``/etc`` or show ``/usr/share/icons``. The policy: a path is usable only
if, once resolved (symlinks and ``..`` included), it lies inside one of the data roots.

- ``PRUNELENS_DATA_ROOTS``: an ``os.pathsep``-separated list of folders (``:`` on Linux and
  macOS); unset or empty means ``./data`` under the server's working directory. Relative entries
  are taken relative to the working directory.
- ``data_roots()`` returns them resolved; ``resolve_under_roots(text)`` turns what the user typed
  into a resolved ``Path`` inside a root (a relative text is taken relative to the first root), or
  raises :class:`DataPathError` with one fixed message whatever the reason (outside, missing,
  unreadable, a symlink leaving a root): the answer tells nothing about what exists on the server.
- ``list_data_folders()`` lists the folders a user may pick from (the roots and their non-hidden
  sub-folders, a few levels deep), for a select box.
- ``check_files_under_roots(folder)`` refuses (same message) a model folder whose files are
  symlinks leading out of the roots: the model readers open ``config.json`` and the weights by
  name and would follow them.

Only the dashboard applies this policy; the Python API and the CLI read any path they are given.
The dashboard's folder dataset does, in one place::

    from core.data import load_dataset
    from core.data.roots import data_roots, resolve_under_roots

    root = resolve_under_roots(user_text)            # DataPathError (a ValueError): show its text
    train, val = load_dataset("folder", image_size, root=root, roots=data_roots())

``roots=`` makes the folder scan refuse symlinks inside the tree that lead out of the roots.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .fs import pseudo_filesystems

ENV_VAR = "PRUNELENS_DATA_ROOTS"
DEFAULT_ROOT = "data"

REFUSAL = ("this folder is not available: choose a folder inside the server's data folders "
           f"(set by the server's {ENV_VAR})")
"""The one message for every refused path, so that refusals reveal nothing."""


class DataPathError(ValueError):
    """A user-typed path that is not inside the data roots (message: :data:`REFUSAL`)."""

    def __init__(self, message: str = REFUSAL) -> None:
        super().__init__(message)


def data_roots(env: str | None = None) -> list[Path]:
    """The data roots, resolved, in the order given (duplicates dropped).

    Args:
        env: the variable's text; None reads ``PRUNELENS_DATA_ROOTS`` (unset or blank: ``./data``).
    """
    text = os.environ.get(ENV_VAR, "") if env is None else env
    entries = [e.strip() for e in text.split(os.pathsep) if e.strip()] or [DEFAULT_ROOT]
    roots: list[Path] = []
    for entry in entries:
        root = Path(os.path.realpath(Path.cwd() / Path(entry).expanduser()))
        if root not in roots:
            roots.append(root)
    return roots


def is_under(path: Path, roots: list[Path]) -> bool:
    """Is the already resolved ``path`` one of ``roots`` or inside one?"""
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_under_roots(user_text: str | os.PathLike[str],
                        roots: list[Path] | None = None) -> Path:
    """Resolve what a browser user typed into a path inside the data roots.

    The path does not have to exist (the folder scan then says it is missing, which only tells
    about the inside of a root); ``~`` is not expanded.

    Args:
        user_text: absolute, or relative to the first root.
        roots: resolved roots; None → :func:`data_roots`.

    Returns:
        the resolved absolute path (symlinks and ``..`` removed).

    Raises:
        DataPathError: outside every root, or not a usable path at all, always with
            :data:`REFUSAL`.
    """
    roots = data_roots() if roots is None else [Path(os.path.realpath(r)) for r in roots]
    try:
        text = os.fspath(user_text)
        if not isinstance(text, str) or not text.strip() or "\0" in text:
            raise DataPathError()
        resolved = Path(os.path.realpath(roots[0] / text.strip()))
    except (TypeError, ValueError, OSError):
        raise DataPathError() from None
    if not is_under(resolved, roots):
        raise DataPathError()
    return resolved


MODEL_FOLDER_FILES = ("config.json", "preprocessor_config.json", "model.safetensors",
                      "pytorch_model.bin", "model.safetensors.index.json")
"""The files the model-folder readers (``core.models.hf`` / ``timm_format``) open by name."""


def check_files_under_roots(folder: Path, roots: list[Path] | None = None,
                            names: tuple[str, ...] = MODEL_FOLDER_FILES,
                            scan_limit: int = 1000) -> None:
    """Refuse a folder (already resolved inside the roots) whose files lead out of them.

    A folder inside the roots may hold symlinks to files anywhere on the server: the readers
    would follow them. Each of ``names`` present in ``folder``, and every symlink among its
    first ``scan_limit`` entries, must resolve inside the roots; no file is opened.

    Raises:
        DataPathError: with :data:`REFUSAL`, as for a path outside the roots.
    """
    roots = data_roots() if roots is None else [Path(os.path.realpath(r)) for r in roots]
    folder = Path(folder)
    candidates = [folder / n for n in names if os.path.lexists(folder / n)]
    try:
        with os.scandir(folder) as it:
            for i, entry in enumerate(it):
                if i >= scan_limit:
                    break
                if entry.is_symlink():
                    candidates.append(Path(entry.path))
    except OSError:
        raise DataPathError() from None
    for path in candidates:
        try:
            resolved = Path(os.path.realpath(path))
        except (OSError, ValueError):
            raise DataPathError() from None
        if not is_under(resolved, roots):
            raise DataPathError()


def list_data_folders(roots: list[Path] | None = None, max_depth: int = 2,
                      limit: int = 1000) -> list[Path]:
    """Folders a browser user may choose from: each existing root, then its sub-folders.

    Hidden folders (``.name``), folders on kernel filesystems, and symlinks whose target leaves
    the roots are left out; nothing but folder names is read.

    Args:
        roots: resolved roots; None → :func:`data_roots`.
        max_depth: levels below a root (1: its direct sub-folders).
        limit: stop after this many folders.

    Returns:
        resolved paths, each root followed by its sub-folders in sorted (depth-first) order.
    """
    roots = data_roots() if roots is None else [Path(os.path.realpath(r)) for r in roots]
    pseudo = pseudo_filesystems()
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def visit(folder: Path, depth: int) -> None:
        try:
            st = os.stat(folder)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) or st.st_dev in pseudo or key in seen:
            return
        seen.add(key)
        found.append(folder)
        if depth >= max_depth:
            return
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it
                               if not e.name.startswith(".") and e.is_dir(follow_symlinks=True))
        except OSError:
            return
        for name in names:
            if len(found) >= limit:
                return
            child = Path(os.path.realpath(folder / name))
            if is_under(child, roots):
                visit(child, depth + 1)

    for root in roots:
        if len(found) < limit:
            visit(root, 0)
    return found[:limit]
