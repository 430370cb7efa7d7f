"""Class names of a model's outputs: read from its files, matched to folders, shown with scores.

- :func:`imagenet_classes`: the ImageNet-1k list shipped in ``assets/imagenet_classes.tsv``
  (index, WordNet id, names), as timm's ``imagenet_synsets.txt`` and
  ``imagenet_synset_to_lemma.txt`` give it (see ``assets/README.md``). Index ``i`` is output
  ``i`` of every ImageNet-1k classifier (the WordNet ids sorted).
- :func:`labels_from_hf` / :func:`labels_from_timm` read transformers' ``id2label`` and timm's
  ``label_names`` (+ ``label_descriptions``) into ``(names, wnids)``: a name per output, and a
  WordNet id per output when the model is known to be an ImageNet classifier (timm's label
  names are WordNet ids; 1000 outputs whose names are ImageNet-1k's, or that have none, are
  ImageNet-1k, as timm itself infers from the class count).
- :func:`match_class_folders` maps folder names onto output ids: a WordNet id (``n01440764``)
  through ``wnids``, else a label name, case-, space- and underscore-insensitive, whole
  (``"tench, Tinca tinca"``) or any one of its comma-separated synonyms (``"tench"``); a name
  that fits two outputs (ImageNet has two "crane"s) matches neither.
- :func:`top_k`: the k most probable outputs as ``(name, probability)``.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor, nn

ASSETS = Path(__file__).resolve().parents[2] / "assets"
IMAGENET_CLASSES_FILE = ASSETS / "imagenet_classes.tsv"
WNID = re.compile(r"^n\d{8}$")
MAX_NAME = 200
"""Characters of a label name kept (longer ones are cut, with "…")."""
_GENERIC = re.compile(r"^LABEL_\d+$")  # transformers' placeholder names


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """``(wnid, names)`` of the 1000 ImageNet-1k classes, in output order."""
    rows = IMAGENET_CLASSES_FILE.read_text(encoding="utf-8").splitlines()[1:]
    out = []
    for i, row in enumerate(rows):
        index, wnid, names = row.split("\t")
        if int(index) != i or not WNID.match(wnid):
            raise ValueError(f"{IMAGENET_CLASSES_FILE.name}: row {i + 2} is {row!r}")
        out.append((wnid, names))
    if len(out) != 1000:
        raise ValueError(f"{IMAGENET_CLASSES_FILE.name} lists {len(out)} classes, not 1000")
    return tuple(out)


def normalise(name: str) -> str:
    """``" Golden_Retriever "`` → ``"golden retriever"``: what folder matching compares."""
    return " ".join(name.replace("_", " ").casefold().split())


def _cut(name: str) -> str:
    return name if len(name) <= MAX_NAME else name[:MAX_NAME - 1] + "…"


def _is_imagenet(names: Sequence[str]) -> bool:
    """1000 names at least half of which start as ImageNet-1k's do (``"tench"`` for ``"tench,
    Tinca tinca"``), or only transformers' placeholders ``LABEL_i``."""
    if len(names) != 1000:
        return False
    if all(_GENERIC.match(n) for n in names):
        return True
    ours = [normalise(n.split(",")[0]) for _, n in imagenet_classes()]
    return sum(normalise(n.split(",")[0]) == o for n, o in zip(names, ours)) >= 500


def labels_from_hf(id2label: Mapping | None, num_classes: int, where: str = "config.json"
                   ) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """transformers' ``id2label`` (``{"0": "tench, Tinca tinca", …}``) → ``(names, wnids)``.

    No ``id2label``: ``(None, None)``, except for 1000 outputs (ImageNet-1k's names and ids).
    ``wnids`` is ImageNet-1k's when :func:`_is_imagenet` says the names are; placeholder names
    ``LABEL_i`` (what transformers writes when nobody named the classes) are no names: those of
    an ImageNet-1k model become ImageNet-1k's, others ``(None, None)``, so that a fine-tuned
    model's outputs take a dataset's class names and its folders are read in the plain way.

    Raises:
        ValueError: keys that are not exactly ``0 … num_classes-1`` or names that are not text.
    """
    if not id2label:
        if num_classes == 1000:
            return tuple(n for _, n in imagenet_classes()), tuple(w for w, _ in imagenet_classes())
        return None, None
    keys = {str(k) for k in id2label}
    if keys != {str(i) for i in range(num_classes)}:
        raise ValueError(f"{where}: id2label must have the keys 0 to {num_classes - 1}, one per "
                         f"output; got {len(keys)} keys")
    named = {str(k): v for k, v in id2label.items()}
    names = [named[str(i)] for i in range(num_classes)]
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: id2label values must be text")
    if not _is_imagenet(names):
        if all(_GENERIC.match(n) for n in names):
            return None, None
        return tuple(_cut(n) for n in names), None
    wnids = tuple(w for w, _ in imagenet_classes())
    if all(_GENERIC.match(n) for n in names):
        return tuple(n for _, n in imagenet_classes()), wnids
    return tuple(_cut(n) for n in names), wnids


def labels_from_timm(label_names: object, label_descriptions: object, num_classes: int,
                     where: str = "config.json"
                     ) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """timm's ``label_names`` (a list, or ``{id: name}``; for ImageNet the WordNet ids) and
    ``label_descriptions`` (``{name: description}``) → ``(names, wnids)``.

    Names shown are the descriptions where given, else ImageNet-1k's names for its WordNet
    ids, else the label names. No ``label_names`` and 1000 outputs: ImageNet-1k (timm infers
    the same from the class count).

    Raises:
        ValueError: label names that are not one text per output, or descriptions that are
            not a mapping of text.
    """
    if label_names is None:
        return labels_from_hf(None, num_classes, where)
    if isinstance(label_names, Mapping):
        label_names = [label_names.get(str(i), label_names.get(i)) for i in range(num_classes)]
    if not (isinstance(label_names, (list, tuple)) and len(label_names) == num_classes
            and all(isinstance(n, str) for n in label_names)):
        raise ValueError(f"{where}: label_names must give one text per output ({num_classes})")
    descriptions = label_descriptions or {}
    if not (isinstance(descriptions, Mapping)
            and all(isinstance(v, str) for v in descriptions.values())):
        raise ValueError(f"{where}: label_descriptions must map label names to text")
    known = dict(imagenet_classes())
    names = tuple(_cut(descriptions.get(n) or known.get(n) or n) for n in label_names)
    wnids = tuple(label_names) if all(WNID.match(n) for n in label_names) else None
    return names, wnids


def labels_of(model: nn.Module, fallback: Sequence[str] | None = None) -> tuple[str, ...]:
    """The name of each output of ``model``: the loader's (``model.labels``), else
    ``fallback`` (a dataset's classes, say), else ``"class 0"``, ``"class 1"``, …"""
    labels = getattr(model, "labels", None)
    if labels:
        return tuple(labels)
    if fallback is not None:
        return tuple(fallback)
    return tuple(f"class {i}" for i in range(model.num_classes))


def wnids_of(model: nn.Module) -> tuple[str, ...] | None:
    """The WordNet id of each output of ``model`` (``model.wnids``), or None."""
    return getattr(model, "wnids", None)


def match_class_folders(folders: Sequence[str], names: Sequence[str],
                        wnids: Sequence[str] | None = None
                        ) -> tuple[dict[str, int], dict[str, str]]:
    """Map folder names onto output ids.

    A folder named like a WordNet id matches through ``wnids``; any folder then matches a name
    of ``names`` whole, else one of its comma-separated synonyms, after :func:`normalise`. A
    name that fits several outputs equally matches none (reported as ambiguous).

    Returns:
        ``(matched, unmatched)``: folder → output id, and folder → why not.
    """
    by_wnid = {w: i for i, w in enumerate(wnids or ())}
    whole: dict[str, set[int]] = {}
    part: dict[str, set[int]] = {}
    for i, name in enumerate(names):
        whole.setdefault(normalise(name), set()).add(i)
        for synonym in name.split(","):
            part.setdefault(normalise(synonym), set()).add(i)
    matched: dict[str, int] = {}
    unmatched: dict[str, str] = {}
    for folder in folders:
        key = normalise(folder)
        if folder in by_wnid:
            matched[folder] = by_wnid[folder]
            continue
        hits = whole.get(key) or part.get(key) or set()
        if len(hits) == 1:
            matched[folder] = next(iter(hits))
        elif hits:
            unmatched[folder] = f"ambiguous ({len(hits)} labels)"
        else:
            unmatched[folder] = ("no such label" if not WNID.match(folder) else
                                 "a WordNet id the model does not have" if wnids else
                                 "a WordNet id; the model's labels have none")
    return matched, unmatched


def top_k(model: nn.Module, logits: Tensor, k: int = 5,
          names: Sequence[str] | None = None) -> list:
    """The ``k`` most probable outputs: ``[(name, probability), …]`` most probable first, for
    ``logits`` of one image ``(C,)`` (or ``(1, C)``); a list of such lists for ``(B, C)``.
    ``names`` default to :func:`labels_of` ``(model)``; probabilities are the softmax over all
    ``C`` outputs, as floats in [0, 1]."""
    names = tuple(names) if names is not None else labels_of(model)
    single = logits.dim() == 1 or (logits.dim() == 2 and logits.shape[0] == 1)
    probs = logits.detach().float().reshape(-1, logits.shape[-1]).softmax(-1)
    if probs.shape[-1] != len(names):
        raise ValueError(f"logits have {probs.shape[-1]} outputs but there are {len(names)} "
                         "label names")
    p, idx = probs.topk(min(int(k), probs.shape[-1]), dim=-1)
    rows = [[(names[int(i)], float(q)) for q, i in zip(pr, ir)] for pr, ir in zip(p, idx)]
    return rows[0] if single else rows


__all__ = ["imagenet_classes", "labels_from_hf", "labels_from_timm", "labels_of",
           "match_class_folders", "normalise", "top_k", "wnids_of"]
