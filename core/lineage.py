"""Where a model comes from: a chain of steps, each ``{"operation", "params"}``, from the
dense model down (dense → pruned by a criterion at a sparsity with a seed → fine-tuned by a
run → exported).

The run store keeps the steps as a tree (table ``lineage``, :meth:`core.runs.RunStore.
add_lineage`): a node per step, its parent, the operation, its parameters, and the accuracy and
MACs measured on it. A PruneLens file carries its own chain in its metadata
(``prunelens_lineage``, a JSON list written by ``save_model(..., lineage=chain)``), read back
by :func:`read_lineage`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

OPERATIONS = ("dense", "pruned", "fine-tuned", "exported")
META_KEY = "prunelens_lineage"

Step = dict[str, Any]  # {"operation": str, "params": dict}


def step(operation: str, **params: Any) -> Step:
    """One step; ValueError for an operation outside :data:`OPERATIONS`."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown lineage operation {operation!r}; one of {OPERATIONS}")
    return {"operation": operation, "params": {k: v for k, v in params.items() if v is not None}}


def dense(model: str, dataset: str, source: str = "") -> Step:
    return step("dense", model=model, dataset=dataset, source=source or None)


def pruned(criterion: str, sparsity: float, seed: int, scope: str = "",
           calibration: int | None = None, pattern: str = "") -> Step:
    return step("pruned", criterion=criterion, sparsity=float(sparsity), seed=int(seed),
                scope=scope or None, calibration=calibration, pattern=pattern or None)


def finetuned(run_id: str, **params: Any) -> Step:
    return step("fine-tuned", run=run_id, **params)


def exported(format: str, file: str = "") -> Step:
    return step("exported", format=format, file=file or None)


def check(chain: Sequence[Mapping[str, Any]]) -> list[Step]:
    """A chain as plain steps (ValueError naming the first bad one)."""
    out = []
    for i, s in enumerate(chain):
        if not isinstance(s, Mapping) or not isinstance(s.get("params", {}), Mapping):
            raise ValueError(f"lineage step {i} must be {{'operation': str, 'params': dict}}")
        out.append(step(str(s.get("operation")), **dict(s.get("params", {}))))
    return out


def node_id(parent: str | None, s: Mapping[str, Any]) -> str:
    """A step's node id: a digest of its parent and itself, so that recording the same chain
    twice (two runs of one pruned model) gives the same nodes."""
    text = json.dumps([parent, s["operation"], s["params"]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_json(chain: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(check(chain), sort_keys=True, default=str)


def read_lineage(path: str | Path) -> list[Step]:
    """The chain a PruneLens file records ([] when it records none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if META_KEY not in meta:
        return []
    return check(json.loads(meta[META_KEY]))


def label(operation: str, params: Mapping[str, Any]) -> str:
    """An edge's words: ``pruned by magnitude at 50% (seed 0)``, ``fine-tuned by run …``."""
    if operation == "pruned":
        return (f"pruned by {params.get('criterion')} at {float(params.get('sparsity', 0)):.0%}"
                f" (seed {params.get('seed', 0)})")
    if operation == "fine-tuned":
        return f"fine-tuned by run {params.get('run')}"
    if operation == "exported":
        return f"exported as {params.get('format')}"
    return f"dense {params.get('model', '')} on {params.get('dataset', '')}".strip()


def tree(nodes: pd.DataFrame) -> list[tuple[int, dict]]:
    """The nodes of :meth:`RunStore.lineage` in depth-first order with their depth, roots
    (and nodes whose parent is gone) first, children by creation."""
    rows = {r["id"]: r for r in nodes.to_dict("records")}
    children: dict[str | None, list[dict]] = {}
    for r in rows.values():
        parent = r["parent"] if r["parent"] in rows else None
        children.setdefault(parent, []).append(r)
    out: list[tuple[int, dict]] = []
    stack = [(0, r) for r in reversed(children.get(None, []))]
    while stack:
        depth, r = stack.pop()
        out.append((depth, r))
        stack += [(depth + 1, c) for c in reversed(children.get(r["id"], []))]
    return out
