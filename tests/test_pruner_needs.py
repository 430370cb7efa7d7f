"""What a criterion needs is declared on its class (``core.pruning.Pruner``'s table), checked
when it is registered, and read by study and the dashboard through ``study.criterion_info``:
no probing of a criterion's methods or fields, no per-criterion constants outside its class."""
from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass, fields

import pytest
import torch

from core import study
from core.models import build_model
from core.pruning import Pruner, get_pruner, list_pruners, register_pruner
from core.pruning.base import check_declarations
from core.pruning.criteria import SynflowPruner
from core.pruning.snp import StructuredPruner

ROOT = pathlib.Path(__file__).resolve().parents[1]

# written out here, not imported from core, so that dropping one from core fails the test
NEEDS = {"kind": str, "needs_data": bool, "needs_training": bool, "iterative": bool,
         "schedules_many_sparsities": bool, "seeded": bool, "rounds": int,
         "memory_per_image": float, "formula": str, "explanation": str}

# the values that differ from Pruner's defaults, per criterion shipped today (a criterion
# added later is held to the types and the registration checks only)
DIFFERENT = {
    "random": {"needs_data": False, "seeded": True},
    "magnitude": {"needs_data": False},
    "snip": {},
    "attention-snip": {},
    "grasp": {"memory_per_image": 3.0},
    "synflow": {"needs_data": False, "iterative": True, "schedules_many_sparsities": True,
                "rounds": 100},
    "snp": {"kind": "structured"},
    "reverse": {"kind": "structured"},
    "snp-act": {"kind": "structured"},
    "l2-norm": {"kind": "structured", "needs_data": False},
    "gm": {"kind": "structured", "needs_data": False},
    "structured-random": {"kind": "structured", "needs_data": False, "seeded": True},
    "taylor": {"kind": "structured"},
    "activation": {"kind": "structured"},
    "amap": {"kind": "structured", "needs_training": True, "seeded": True},
}
DEFAULTS = {"kind": "unstructured", "needs_data": True, "needs_training": False,
            "iterative": False, "schedules_many_sparsities": False, "seeded": False,
            "rounds": 1, "memory_per_image": 1.0}


def _cls(name: str) -> type[Pruner]:
    return type(get_pruner(name))


@pytest.mark.parametrize("name", list_pruners())
def test_every_registered_pruner_declares_each_need_with_its_type(name):
    cls = _cls(name)
    for attr, typ in NEEDS.items():
        assert type(getattr(cls, attr)) is typ, (name, attr, getattr(cls, attr))
    assert cls.kind in ("unstructured", "structured") and cls.rounds >= 1
    assert cls.memory_per_image > 0
    assert cls.formula and cls.explanation  # every shipped criterion teaches
    # study reads exactly the declarations
    info = study.criterion_info(name)
    for attr in NEEDS:
        assert getattr(info, attr) == getattr(cls, attr), (name, attr)
    # the seed field and the declaration agree (what make_pruner relies on)
    assert cls.seeded == ("seed" in {f.name for f in fields(cls)})


@pytest.mark.parametrize("name", sorted(DIFFERENT))
def test_shipped_criteria_declare_what_they_do(name):
    if name not in list_pruners():
        pytest.skip(f"{name} not registered")
    cls = _cls(name)
    want = {**DEFAULTS, **DIFFERENT[name]}
    assert {a: getattr(cls, a) for a in DEFAULTS} == want


def test_synflow_default_schedule_is_its_declared_rounds():
    assert SynflowPruner().iterations == SynflowPruner.rounds


# ---------------------------------------------------------------------------- registration

def _refused(cls: type, match: str) -> None:
    name = f"test-needs-{cls.__name__.lower()}"
    with pytest.raises(TypeError, match=match):
        register_pruner(name)(cls)
    assert name not in list_pruners()


def _mask_prune_override(self, model, sparsity, images=None, labels=None, scope="global"):
    return Pruner.prune_model(self, model, sparsity, images, labels, scope)


def test_an_override_of_prune_model_must_be_declared_iterative():
    @dataclass(frozen=True)
    class Undeclared(Pruner):
        prune_model = _mask_prune_override
    _refused(Undeclared, "declare iterative = True")


def test_iterative_without_its_own_prune_model_is_refused():
    @dataclass(frozen=True)
    class Claims(Pruner):
        iterative = True
    _refused(Claims, "declares iterative = True but prunes with the default")


def test_prune_many_and_its_declaration_go_together():
    @dataclass(frozen=True)
    class Hidden(Pruner):
        iterative = True
        prune_model = _mask_prune_override

        def prune_many(self, model, sparsities, images=None, labels=None, scope="global"):
            return [self.prune_model(model, s, images, labels, scope) for s in sparsities]
    _refused(Hidden, "schedules_many_sparsities must be True exactly when")

    @dataclass(frozen=True)
    class Promised(Pruner):
        iterative = True
        schedules_many_sparsities = True
        prune_model = _mask_prune_override
    _refused(Promised, "schedules_many_sparsities must be True exactly when")

    @dataclass(frozen=True)
    class OneShot(Pruner):
        schedules_many_sparsities = True

        def prune_many(self, model, sparsities, images=None, labels=None, scope="global"):
            return []
    _refused(OneShot, "iterative criteria only")


def test_a_seed_field_and_seeded_go_together():
    @dataclass(frozen=True)
    class Draws(Pruner):
        seed: int = 0
    _refused(Draws, "seeded must be True exactly when")

    @dataclass(frozen=True)
    class NoSeed(Pruner):
        seeded = True
    _refused(NoSeed, "seeded must be True exactly when")


@pytest.mark.parametrize("attr, value", [("needs_data", 1), ("memory_per_image", 3),
                                         ("rounds", 2.0), ("iterative", "yes"),
                                         ("kind", "semi"), ("rounds", 0),
                                         ("memory_per_image", 0.0)])
def test_a_need_of_the_wrong_type_or_range_is_refused(attr, value):
    cls = dataclass(frozen=True)(type("Wrong", (Pruner,), {attr: value}))
    _refused(cls, attr if attr != "kind" else "kind must be one of")


def test_rounds_need_an_iterative_criterion():
    @dataclass(frozen=True)
    class Rounds(Pruner):
        rounds = 5
    _refused(Rounds, "rounds = 5 but iterative = False")


def test_a_one_shot_structured_pruner_must_offer_prune_scored():
    @dataclass(frozen=True)
    class Shrinks(Pruner):
        kind = "structured"
        prune_model = _mask_prune_override
    _refused(Shrinks, "must offer prune_scored")

    @dataclass(frozen=True)
    class Fine(StructuredPruner):  # inherits prune_scored
        needs_data = True
    check_declarations(Fine, "fine")  # accepted (not registered: the registry stays as is)


def test_a_consistent_class_is_accepted():
    @dataclass(frozen=True)
    class Iter(Pruner):
        needs_data = False
        iterative = True
        schedules_many_sparsities = True
        seeded = True
        rounds = 10
        memory_per_image = 2.0
        prune_model = _mask_prune_override
        seed: int = 0

        def prune_many(self, model, sparsities, images=None, labels=None, scope="global"):
            return [self.prune_model(model, s, images, labels, scope) for s in sparsities]
    check_declarations(Iter, "iter")


# ---------------------------------------------------------------------------- study reads them

def test_make_pruner_and_seed_free_follow_the_declarations():
    for name in list_pruners():
        cls = _cls(name)
        p = study.make_pruner(name, seed=7)
        assert ("seed" in p.options and p.options["seed"] == 7) == cls.seeded, name
        assert study.seed_free(name) == (not cls.needs_data and not cls.seeded), name
    assert study.seed_free("magnitude") and study.seed_free("synflow")
    assert not study.seed_free("random") and not study.seed_free("snip")


def test_study_prune_many_batches_only_a_criterion_that_declares_it(monkeypatch):
    torch.manual_seed(0)
    model = build_model("vit-tiny", 3, img_size=8, patch_size=4, embed_dim=8, depth=1,
                        num_heads=2).eval()
    calls = []
    original = SynflowPruner.prune_many

    def counted(self, *args, **kwargs):
        calls.append(args[1])
        return original(self, *args, **kwargs)
    monkeypatch.setattr(SynflowPruner, "prune_many", counted)
    opts = {"iterations": 3}
    got = study.prune_many(model, "synflow", [0.0, 0.3, 0.6], options=opts)
    assert calls == [[0.3, 0.6]]
    for p, s in zip(got[1:], (0.3, 0.6)):
        alone = study.prune_at(model, "synflow", s, options=opts)
        assert all(torch.equal(p.masks[k], alone.masks[k]) for k in alone.masks)
    calls.clear()
    study.prune_many(model, "synflow", [0.0, 0.3], options=opts)  # one target: no batching
    assert calls == []


# ---------------------------------------------------------------------------- the dashboard

def test_dashboard_calibration_cap_comes_from_memory_per_image():
    from dashboard.state.keys import SCORE_MB, Experiment, Setup
    calib = 64
    image_bytes = int(SCORE_MB * 2**20 / 40)  # 40 one-pass images fit the budget
    s = Setup(Experiment(calib=calib), None, None, None, None, None, (), image_bytes)
    for name in list_pruners():
        cls = _cls(name)
        want = calib if not cls.needs_data else max(
            1, min(calib, int(SCORE_MB * 2**20 // (image_bytes * cls.memory_per_image))))
        assert s.calib(name) == want, name
    assert s.calib("snip") == 40 and s.calib("grasp") == 13 and s.calib("magnitude") == 64
    unknown = Setup(Experiment(calib=calib), None, None, None, None, None, (), 0)
    assert unknown.calib("grasp") == calib  # no activation size known: nothing to cap


def test_dashboard_progress_units_come_from_rounds():
    from dashboard.state.prune_work import _score_units
    for name in list_pruners():
        cls = _cls(name)
        units = _score_units(name, 16, False)
        if cls.needs_data:
            assert units == 3.0 * cls.rounds * 16, name
        elif cls.iterative:
            assert units == 3.0 * cls.rounds, name
        else:
            assert units == 0.5, name
    assert _score_units("synflow", 16, False) == 300.0  # as before the declarations


# ---------------------------------------------------------------------------- no per-name code

# A criterion's name compared as a literal is allowed only where it is not a criterion being
# asked what it needs: the Train page's modes and job kinds ("finetune" / "amap") name its
# two forms, AMAP's being its own page section with its own widgets (budget, steps).
ALLOWED = {("dashboard/pages/train.py", 'snap["kind"] == "amap"'),
           ("dashboard/pages/train.py", 'mode == "amap"')}


def _sources(*roots: str):
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            src = path.read_text(encoding="utf-8")
            yield path.relative_to(ROOT).as_posix(), src, ast.parse(src)


def _literals(node: ast.AST) -> list[str]:
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [x.value for x in items if isinstance(x, ast.Constant) and isinstance(x.value, str)]


def _per_name_code(src: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, source) of every comparison with a name in ``names`` as a literal, dict literal
    from such a name to a number, subscript by such a name and ``case`` on one."""
    out = []
    for node in ast.walk(ast.parse(src)):
        hits: list[str] = []
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                hits += [v for v in _literals(side) if v in names]
        elif isinstance(node, ast.Dict):
            hits += [k.value for k, v in zip(node.keys, node.values)
                     if isinstance(k, ast.Constant) and k.value in names
                     and isinstance(v, ast.Constant) and isinstance(v.value, (int, float))]
        elif isinstance(node, ast.Subscript):
            hits += [v for v in _literals(node.slice) if v in names]
        elif isinstance(node, ast.match_case):
            hits += [p.value.value for p in ast.walk(node.pattern)
                     if isinstance(p, ast.MatchValue) and isinstance(p.value, ast.Constant)
                     and p.value.value in names]
        if hits:
            where = node.pattern if isinstance(node, ast.match_case) else node
            out.append((where.lineno, ast.get_source_segment(src, where) or ""))
    return out


def test_the_scanner_sees_what_it_forbids():
    bad = ('if name == "grasp" or name in ("synflow", "x"):\n'
           '    f = {"grasp": 3.0}\n'
           '    g = table["grasp"]\n'
           'match name:\n'
           '    case "synflow":\n'
           '        pass\n'
           'fine = {"grasp": "text"}; name == "other"\n')
    found = _per_name_code(bad, {"grasp", "synflow"})
    assert sorted(line for line, _ in found) == [1, 1, 2, 3, 5]


def test_no_criterion_name_in_a_conditional_or_a_per_name_table():
    """No ``== "grasp"``, ``in ("synflow", ...)``, ``{"grasp": 3.0}``, ``x["grasp"]`` or
    ``case "grasp"`` in dashboard/ and core/study/: what differs between criteria is declared
    on their classes."""
    names = set(list_pruners())
    found = [f"{rel}:{line}: {seg[:70]}" for rel, src, _ in _sources("dashboard", "core/study")
             for line, seg in _per_name_code(src, names) if (rel, seg) not in ALLOWED]
    assert not found, "criterion names in conditionals / tables:\n" + "\n".join(found)


PROBED = set(NEEDS) | {"prune_many", "prune_model", "prune_scored", "structured_scores",
                       "seed", "score"}


def test_no_probing_of_a_criterion_outside_its_registration():
    """``getattr``/``hasattr`` of a need or a pruner method, ``cls.prune_model is ...`` and
    ``fields(get_pruner(...))`` appear nowhere in core/ and dashboard/ but in
    ``check_declarations`` (which runs once, when a class is registered)."""
    found = []
    for rel, src, tree in _sources("core", "dashboard"):
        skip = set()
        if rel == "core/pruning/base.py":
            check = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                     and n.name == "check_declarations"]
            skip = {id(n) for c in check for n in ast.walk(c)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                fn = node.func.id
                if fn in ("getattr", "hasattr") and len(node.args) >= 2 \
                        and set(_literals(node.args[1])) & PROBED:
                    found.append(f"{rel}:{node.lineno}: {ast.get_source_segment(src, node)}")
                if fn == "fields" and node.args and isinstance(node.args[0], ast.Call) \
                        and isinstance(node.args[0].func, ast.Name) \
                        and node.args[0].func.id == "get_pruner":
                    found.append(f"{rel}:{node.lineno}: {ast.get_source_segment(src, node)}")
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot))
                                                     for op in node.ops):
                attrs = [s.attr for s in (node.left, *node.comparators)
                         if isinstance(s, ast.Attribute)]
                if set(attrs) & PROBED:
                    found.append(f"{rel}:{node.lineno}: {ast.get_source_segment(src, node)}")
    assert not found, "reflection on a criterion:\n" + "\n".join(found)
