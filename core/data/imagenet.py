"""ImageNet-style folders: class sub-folders named by WordNet id or label name, read as a
model's classes.

``root/n01440764/*.JPEG`` (the layout of ImageNet's train and sorted val folders) or
``root/tench/*.jpg`` map onto the model's output ids through :func:`core.data.labels.
match_class_folders`; a subset of the classes is fine. Folders that match no label are left
out and named in one warning; when none match, a :class:`NoMatchingClassError` names a few
folders and what was expected. The folder scan is ``core.data.folder``'s (bounds, hostile
files, data roots), entering matched folders only; images are decoded lazily with the model's
preprocessing (``core.data.preprocess``), so a 50,000-image folder holds only its paths in
memory. ``load_dataset("folder", size, root=..., model=model)`` builds it; stream it with
``core.data.stream.iterate_batches``.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

from .labels import WNID, match_class_folders

_SHOWN = 5


class NoMatchingClassError(ValueError):
    """No class folder matches the model's labels; the message names some and what was
    expected."""


class LabelMatcher:
    """``scan_folder``'s ``select``: keeps the class folders that match ``names`` / ``wnids``,
    warns once about the others, raises :class:`NoMatchingClassError` when none match.
    After the call, ``matched`` maps each kept folder to its output id."""

    def __init__(self, root: str, names: Sequence[str], wnids: Sequence[str] | None) -> None:
        self.root, self.names, self.wnids = root, tuple(names), wnids
        self.matched: dict[str, int] = {}

    def __call__(self, folders: list[str]) -> list[str]:
        matched, unmatched = match_class_folders(folders, self.names, self.wnids)
        if not matched:
            raise NoMatchingClassError(
                f"no class folder of {self.root!r} matches the model's {len(self.names)} "
                f"labels: found {_listed(folders)} ({len(folders)} folder(s)); expected "
                + self.expected())
        if unmatched:
            shown = ", ".join(f"{f!r} ({why})" for f, why in list(unmatched.items())[:_SHOWN])
            more = ", …" if len(unmatched) > _SHOWN else ""
            warnings.warn(f"folder {self.root!r}: {len(unmatched)} of {len(folders)} class "
                          f"folder(s) match none of the model's labels and are left out: "
                          f"{shown}{more}", stacklevel=4)
        self.matched = matched
        return list(matched)

    def expected(self) -> str:
        """``"WordNet ids such as n01440764, n01443537 or label names such as 'tench'"``."""
        examples = ", ".join(repr(n.split(",")[0].strip()) for n in self.names[:3])
        names = f"label names such as {examples}"
        wnids = [w for w in (self.wnids or ()) if WNID.match(w)]
        if wnids:
            return f"WordNet ids such as {', '.join(wnids[:2])} or {names}"
        return names


def _listed(folders: Sequence[str]) -> str:
    shown = ", ".join(repr(f) for f in folders[:_SHOWN])
    return shown + (", …" if len(folders) > _SHOWN else "")
