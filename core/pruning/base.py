"""Pruner registry, the :class:`Pruner` base class and the prunable-parameter selection.

A pruner is a small frozen dataclass in the style of Torch-Pruning's ``Importance``:
hyper-parameters are its fields, ``score(model, images, labels)`` is its one scoring method and
returns a keep-score per prunable entry (higher = more worth keeping). Turning scores into masks
(:mod:`core.pruning.masks`) and applying them are separate steps; :meth:`Pruner.prune_model`
chains them, and structured pruners override it (see :mod:`core.pruning.api`).

**Parameter keys.** Scores and masks are keyed ``"<module name>.<attribute>"`` as in
``model.named_parameters()`` of the *unmasked* model, e.g. ``"blocks.0.attn.qkv.weight"``.
Once a module is parametrized (masked), ``named_parameters()`` calls that tensor
``"blocks.0.attn.qkv.parametrizations.weight.original"``; PruneLens always uses the plain name,
for masked and unmasked models alike, so masks computed on one apply to the other.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..models.adapter import get_adapter
from .checks import check_batch, check_logits, check_sparsity  # noqa: F401  (re-exported)
from .masks import group_scores
from .nm import pattern_name
from .result import mask_prune

_PRUNERS: dict[str, type["Pruner"]] = {}


def register_pruner(name: str) -> Callable[[type["Pruner"]], type["Pruner"]]:
    """Class decorator: make ``cls`` available as ``get_pruner(name)``."""
    def deco(cls: type[Pruner]) -> type[Pruner]:
        if name in _PRUNERS and _PRUNERS[name] is not cls:
            raise ValueError(f"a pruner named {name!r} is already registered")
        check_declarations(cls, name)
        cls.name = name
        _PRUNERS[name] = cls
        return cls
    return deco


def list_pruners(kind: str | None = None) -> list[str]:
    """Registered pruner names in registration order; ``kind`` filters (``"unstructured"``,
    ``"structured"``)."""
    return [n for n, c in _PRUNERS.items() if kind is None or c.kind == kind]


def get_pruner(name: str, **options) -> "Pruner":
    """Build pruner ``name`` with ``options`` (its fields). Unknown names or options raise
    ValueError listing the known ones."""
    if name not in _PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; known pruners: {', '.join(_PRUNERS)}")
    cls = _PRUNERS[name]
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"pruner {name!r} takes options {known}; got unknown {unknown}")
    return cls(**options)


# ---------------------------------------------------------------------------- prunable set

@dataclass(frozen=True)
class PrunableParam:
    """One prunable tensor: ``key`` (plain name), its ``module`` and attribute ``attr``.

    ``param`` is the leaf ``nn.Parameter`` autograd sees (``...parametrizations.weight.original``
    when masked); :meth:`value` is what the forward uses (mask applied).
    """

    key: str
    module: nn.Module
    attr: str
    param: nn.Parameter

    def value(self) -> Tensor:
        return getattr(self.module, self.attr)


def _leaf(module: nn.Module, attr: str) -> nn.Parameter:
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def prunable_parameters(model: nn.Module, exclude_head: bool = False,
                        exclude_patch_embed: bool = False, include_linformer_proj: bool = False,
                        ignored_layers: tuple[str, ...] = ()) -> list[PrunableParam]:
    """The tensors a pruner scores, in module order.

    Default: the ``weight`` of every ``nn.Linear`` and ``nn.Conv2d`` (seed 000's count: 2,757,376
    on ``linformer-vit-paper`` with 38 classes); biases, norms, CLS/positions never.
    ``exclude_head`` drops the module named ``head`` (else the last such layer);
    ``exclude_patch_embed`` drops ``patch_embed.*`` (else the first layer);
    ``include_linformer_proj`` adds the sequence projections the family's adapter names
    (Linformer's ``proj_k``/``proj_v``, (seq_len, k) each; none for softmax attention);
    ``ignored_layers`` drops modules by name (a name also drops everything under it).
    """
    found: list[tuple[str, nn.Module, str]] = []
    extra: dict[str, list[tuple[str, nn.Module, str]]] = {}
    if include_linformer_proj:
        for entry in get_adapter(model).sequence_projections(model):
            extra.setdefault(entry[0], []).append(entry)
    for mname, mod in model.named_modules():
        if ".parametrizations." in f".{mname}.":
            continue  # a parametrization's own submodules
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            found.append((mname, mod, "weight"))
        found += extra.get(mname, [])
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear / nn.Conv2d weights to prune")

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    names = [m for m, _, _ in found]
    drop: set[str] = set()
    if exclude_head:
        drop |= {n for n in names if under(n, "head")} or {names[-1]}
    if exclude_patch_embed:
        drop |= {n for n in names if under(n, "patch_embed")} or {names[0]}
    for prefix in ignored_layers:
        drop |= {n for n in names if under(n, prefix)}
    out = [PrunableParam(f"{m}.{a}" if m else a, mod, a, _leaf(mod, a))
           for m, mod, a in found if m not in drop]
    if not out:
        raise ValueError("the options exclude every prunable layer")
    return out


@contextmanager
def scoring_state(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Eval mode (dropout off) and ``requires_grad`` on for ``params`` during the block; every
    module's mode and every flag restored after, also on error. Gradients must be taken with
    ``torch.autograd.grad`` so ``.grad`` stays untouched."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in params]
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        for m, t in modes:
            m.training = t


# ---------------------------------------------------------------------------- base class

@dataclass(frozen=True)
class Pruner:
    """Base of every criterion. Fields: the prunable-set options (see
    :func:`prunable_parameters`); subclasses add their hyper-parameters.

    What a criterion needs is declared, as class attributes (scikit-learn's estimator tags);
    callers read them (through ``core.study.criterion_info``) and never probe the class. A
    subclass sets the ones that differ from the defaults; :func:`register_pruner` checks them
    (:func:`check_declarations`) and refuses a class whose methods say otherwise.

    =============================== ======= ==================================================
    attribute                       default meaning
    =============================== ======= ==================================================
    ``kind``                        unstr.  ``"unstructured"``: masks; ``"structured"``: a
                                            physically smaller model (one-shot ones offer
                                            ``prune_scored``: one scoring, every sparsity)
    ``needs_data``                  True    ``score`` reads the calibration batch (B, C, H, W)
    ``needs_training``              False   learns its masks in a training run
                                            (``train_set``): never run inside a page rerun
    ``iterative``                   False   its masks depend on the target sparsity (it
                                            re-scores on the way there): ``prune_model`` is
                                            its own and no score is reused across sparsities
    ``schedules_many_sparsities``   False   offers ``prune_many(model, sparsities, ...)``,
                                            several targets together, faster than one
                                            ``prune_model`` each (iterative criteria only)
    ``seeded``                      False   draws at random: has a ``seed`` field, so its
                                            masks differ from seed to seed even without data
    ``rounds``                      1       scoring passes one ``prune_model`` makes at the
                                            default options (an iterative schedule's length)
    ``memory_per_image``            1.0     activation memory of scoring one calibration
                                            image, in units of the sum of one forward's
                                            module outputs (a forward + backward keeps about
                                            that; GraSP's double backward about 3×): what
                                            caps the calibration batch to a memory budget
    ``formula``, ``explanation``    ""      teaching text: LaTeX, one paragraph
    =============================== ======= ==================================================

    An unstructured criterion implements :meth:`keep_scores`; :meth:`score` returns them
    declared with how they may be compared (:class:`~core.pruning.masks.GroupedScores`):
    within groups of ``pattern`` (``"N:M"``, any unstructured criterion; sparsity then
    ``1 − N/M``) and, for :attr:`row_groups` criteria (Wanda), within each output row.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "unstructured"
    needs_data: ClassVar[bool] = True
    needs_training: ClassVar[bool] = False
    iterative: ClassVar[bool] = False
    schedules_many_sparsities: ClassVar[bool] = False
    seeded: ClassVar[bool] = False
    rounds: ClassVar[int] = 1
    memory_per_image: ClassVar[float] = 1.0
    formula: ClassVar[str] = ""
    explanation: ClassVar[str] = ""

    exclude_head: bool = False
    exclude_patch_embed: bool = False
    include_linformer_proj: bool = False
    ignored_layers: tuple[str, ...] = ()
    pattern: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ignored_layers, str):
            object.__setattr__(self, "ignored_layers", (self.ignored_layers,))
        else:
            object.__setattr__(self, "ignored_layers", tuple(self.ignored_layers))
        object.__setattr__(self, "pattern", pattern_name(self.pattern))
        if self.pattern and self.kind != "unstructured":
            raise ValueError(f"pattern {self.pattern} applies to unstructured criteria; "
                             f"{self.name or type(self).__name__} is {self.kind}")

    @property
    def row_groups(self) -> bool:
        """Whether this criterion's scores are compared only within output rows."""
        return False

    @property
    def options(self) -> dict:
        """Field values (JSON-able), e.g. for a run's stored config."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def parameters(self, model: nn.Module) -> list[PrunableParam]:
        return prunable_parameters(model, self.exclude_head, self.exclude_patch_embed,
                                   self.include_linformer_proj, self.ignored_layers)

    def score(self, model: nn.Module, images: Tensor | None = None,
              labels: Tensor | None = None) -> dict[str, Tensor]:
        """Keep-scores ``{key: tensor shaped like the parameter}``; the model is left as found.

        :meth:`keep_scores`, declared with this pruner's ``pattern`` and :attr:`row_groups`
        (a plain dict when it has neither)."""
        return group_scores(self.keep_scores(model, images, labels), self.row_groups,
                            self.pattern)

    def keep_scores(self, model: nn.Module, images: Tensor | None = None,
                    labels: Tensor | None = None) -> dict[str, Tensor]:
        """The criterion's own scores (higher = kept); what an unstructured criterion writes."""
        raise NotImplementedError

    def prune_model(self, model: nn.Module, sparsity: float, images: Tensor | None = None,
                    labels: Tensor | None = None, scope: str = "global"):
        """Score, mask and apply to a deep copy → :class:`~core.pruning.api.PruneResult`.

        Structured pruners override this to return a physically smaller model, iterative
        ones (``iterative = True``) to re-score on the way to ``sparsity``."""
        return mask_prune(self, model, sparsity, images, labels, scope)


# ---------------------------------------------------------------------------- declarations

KINDS = ("unstructured", "structured")

# What every criterion declares (the table in :class:`Pruner`'s docstring) and its type.
DECLARATIONS: dict[str, type] = {
    "kind": str, "needs_data": bool, "needs_training": bool, "iterative": bool,
    "schedules_many_sparsities": bool, "seeded": bool, "rounds": int,
    "memory_per_image": float, "formula": str, "explanation": str}


def check_declarations(cls: type[Pruner], name: str) -> None:
    """Raise TypeError if ``cls`` declares a need with the wrong type or a value its own
    methods contradict (a class that overrides ``prune_model`` but says it is not iterative,
    a ``prune_many`` it does not declare, a ``seed`` field it does not declare...).

    This is the one place that looks at a criterion's methods and fields instead of its
    declarations: once, when the class is registered, so a class that lies fails at import."""
    def bad(msg: str) -> TypeError:
        return TypeError(f"pruner {name!r} ({cls.__name__}): {msg}")

    for attr, typ in DECLARATIONS.items():
        value = getattr(cls, attr)
        if type(value) is not typ:  # noqa: E721 (True is an int; 1 is not a float)
            raise bad(f"{attr} must be a {typ.__name__}, got {value!r}")
    d = {attr: getattr(cls, attr) for attr in DECLARATIONS}
    if d["kind"] not in KINDS:
        raise bad(f"kind must be one of {KINDS}, got {d['kind']!r}")
    if d["rounds"] < 1 or not d["memory_per_image"] > 0:
        raise bad(f"rounds must be >= 1 and memory_per_image > 0, got {d['rounds']} and "
                  f"{d['memory_per_image']}")
    own_prune = cls.prune_model is not Pruner.prune_model
    if d["iterative"] and not own_prune:
        raise bad("declares iterative = True but prunes with the default one-shot "
                  "prune_model")
    if own_prune and d["kind"] == "unstructured" and not (d["iterative"]
                                                          or d["needs_training"]):
        raise bad("overrides prune_model: declare iterative = True (its masks depend on the "
                  "sparsity, so study must not threshold its scores)")
    if d["kind"] == "structured" and not (d["iterative"] or d["needs_training"]) \
            and not callable(getattr(cls, "prune_scored", None)):
        raise bad("a one-shot structured pruner must offer prune_scored (study selects and "
                  "shrinks from its scores at every sparsity)")
    if d["rounds"] > 1 and not d["iterative"]:
        raise bad(f"declares rounds = {d['rounds']} but iterative = False")
    has_many = callable(getattr(cls, "prune_many", None))
    if d["schedules_many_sparsities"] != has_many:
        raise bad("schedules_many_sparsities must be True exactly when the class offers "
                  f"prune_many (declared {d['schedules_many_sparsities']}, has it: {has_many})")
    if d["schedules_many_sparsities"] and not d["iterative"]:
        raise bad("schedules_many_sparsities applies to iterative criteria only (the others "
                  "re-threshold one set of scores)")
    has_seed = "seed" in {f.name for f in fields(cls)}
    if d["seeded"] != has_seed:
        raise bad(f"seeded must be True exactly when the class has a seed field (declared "
                  f"{d['seeded']}, field: {has_seed})")
