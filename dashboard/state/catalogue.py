"""What the selectboxes offer: models, datasets, criteria (with their teaching text)."""
from __future__ import annotations

from dataclasses import asdict

from core import study
from core.data import list_datasets
from core.models import list_models, pretrained_path
from core.pruning import list_pruners

from .keys import cache_resource


def model_names() -> list[str]:
    return list_models()


def dataset_names() -> list[str]:
    return list_datasets()


@cache_resource(show_spinner=False)
def pruner_names() -> tuple[str, ...]:
    """The criteria the pages run inside a rerun: every registered pruner except the
    training-based ones (``needs_training``, e.g. AMAP), which only run as background jobs
    from the Train page (``start_amap``)."""
    return tuple(n for n in list_pruners() if not study.criterion_info(n).needs_training)


@cache_resource(show_spinner=False)
def training_pruner_names() -> tuple[str, ...]:
    """Training-based pruners (run from the Train page, never inside a page rerun)."""
    return tuple(n for n in list_pruners() if study.criterion_info(n).needs_training)


@cache_resource(show_spinner=False)
def pruner_info(name: str) -> dict:
    """``study.criterion_info`` as a dict: teaching text (``formula`` in LaTeX,
    ``explanation``), ``kind``, ``needs_data``, ``iterative`` (re-scores for every sparsity:
    no score cache), ``rounds``, ``memory_per_image`` and the other declared needs."""
    return asdict(study.criterion_info(name))


def has_checkpoint(preset: str, dataset: str) -> bool:
    return pretrained_path(preset, dataset).exists()
