"""Per-layer ratios of structured pruning (SNP, seed 001), incl. the paper's ratio files.

A ratio is the fraction of a structure *removed*. Per block: ``qk`` (of each head's q/k dim;
q and k channels go in pairs), ``v`` (of each head's v dim), ``mlp`` (of the FFN hidden
neurons), ``heads`` (of the block's heads); and one ``residual`` ratio for the channels of the
residual stream, shared by the whole model.

The paper's files (``assets/snp_ratios/*.json``) name nodes of the traced graph:
``matmul_{2i}`` = block i's ``Q·Kᵀ`` (block 0's is plain ``matmul``), ``matmul_{2i+1}`` = block
i's ``attn·V``, ``blocks_i_mlp_fc1`` = block i's FFN hidden, ``add_{2·depth}`` = the residual
channels. They carry no head ratio.

Rounding: the number removed from a structure of size n is ``round_half_up(ratio · n)``, at
most ``n − 1`` (never a structure of width 0). It is the rule that reproduces the paper's
MACs with the released files (DeiT-T 0.64, DeiT-S 2.04 / 1.27, DeiT-B 6.32 GMACs; flooring
gives 6.38 for DeiT-B, ceiling 6.30), and it round-trips: reading ``removed / n`` back and
rounding again gives the same count.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

RATIO_DIR = Path(__file__).resolve().parents[2] / "assets" / "snp_ratios"
BLOCK_COMPONENTS = ("qk", "v", "mlp", "heads")
COMPONENTS = (*BLOCK_COMPONENTS, "residual")


def removal_count(ratio: float, n: int) -> int:
    """How many of ``n`` structures a ``ratio`` removes: round half up, capped at ``n − 1``."""
    # the epsilon absorbs float noise such as 0.20052083333333334 · 768 = 154.00000000000003
    # or 0.15 · 10 = 1.4999999999999998 (meant as 1.5, rounded up)
    return min(max(math.floor(ratio * n + 0.5 + 1e-9), 0), n - 1)


def _check_ratio(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"ratio {what} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise ValueError(f"ratio {what} must be in [0, 1) (the fraction removed), got {value}")
    return value


@dataclass(frozen=True)
class StructuredRatios:
    """Fractions removed per block (``qk``, ``v``, ``mlp``, ``heads``) and of the residual."""

    qk: tuple[float, ...]
    v: tuple[float, ...]
    mlp: tuple[float, ...]
    heads: tuple[float, ...]
    residual: float = 0.0

    def __post_init__(self) -> None:
        depth = len(self.qk)
        for name in BLOCK_COMPONENTS:
            values = tuple(getattr(self, name))
            if len(values) != depth:
                raise ValueError(f"ratio {name!r} has {len(values)} entries for {depth} blocks")
            object.__setattr__(self, name, tuple(
                _check_ratio(r, f"{name}[{i}]") for i, r in enumerate(values)))
        object.__setattr__(self, "residual", _check_ratio(self.residual, "residual"))

    @property
    def depth(self) -> int:
        return len(self.qk)

    @staticmethod
    def uniform(depth: int, *, qk: float = 0.0, v: float = 0.0, mlp: float = 0.0,
                heads: float = 0.0, residual: float = 0.0) -> "StructuredRatios":
        """The same ratio in every block, per component."""
        return StructuredRatios((qk,) * depth, (v,) * depth, (mlp,) * depth, (heads,) * depth,
                                residual)

    @staticmethod
    def from_paper(spec: Mapping[str, float] | str | Path, depth: int) -> "StructuredRatios":
        """Ratios from a paper-format mapping or JSON file (path, or a shipped name: "DeiT_t").

        The file must hold exactly the keys of a ``depth``-block model; heads are not pruned.
        """
        data = _read_paper(spec) if isinstance(spec, (str, Path)) else dict(spec)
        expected = paper_keys(depth)
        unknown = sorted(set(data) - set(expected), key=_natural)
        missing = [k for k in expected if k not in data]
        if unknown or missing:
            other = _paper_depth(data)
            if other is not None and other != depth:
                raise ValueError(f"the ratio file is for a {other}-block model; this model has "
                                 f"{depth} blocks")
            parts = [f"unknown keys {unknown}" if unknown else "",
                     f"missing keys {missing}" if missing else ""]
            raise ValueError(f"bad SNP ratio file for a {depth}-block model: "
                             + "; ".join(p for p in parts if p)
                             + f" (expected {expected[:3]} … {expected[-2:]})")
        qk = tuple(_check_ratio(data[_qk_key(i)], _qk_key(i)) for i in range(depth))
        v = tuple(_check_ratio(data[f"matmul_{2 * i + 1}"], f"matmul_{2 * i + 1}")
                  for i in range(depth))
        mlp = tuple(_check_ratio(data[f"blocks_{i}_mlp_fc1"], f"blocks_{i}_mlp_fc1")
                    for i in range(depth))
        residual = _check_ratio(data[f"add_{2 * depth}"], f"add_{2 * depth}")
        return StructuredRatios(qk, v, mlp, (0.0,) * depth, residual)

    def to_paper(self) -> dict[str, float]:
        """The paper's format (head ratios are not part of it and are dropped)."""
        out: dict[str, float] = {}
        for i in range(self.depth):
            out[_qk_key(i)] = self.qk[i]
            out[f"matmul_{2 * i + 1}"] = self.v[i]
            out[f"blocks_{i}_mlp_fc1"] = self.mlp[i]
        out[f"add_{2 * self.depth}"] = self.residual
        return out

    def with_heads(self, heads: float | Sequence[float]) -> "StructuredRatios":
        """Copy with head ratios ("SNP + Head"): one number for all blocks, or one per block."""
        values = (heads,) * self.depth if isinstance(heads, (int, float)) else tuple(heads)
        return replace(self, heads=values)


def _qk_key(i: int) -> str:
    return "matmul" if i == 0 else f"matmul_{2 * i}"


def paper_keys(depth: int) -> list[str]:
    """The keys of a paper ratio file for a ``depth``-block model, in the file's order."""
    keys = []
    for i in range(depth):
        keys += [_qk_key(i), f"matmul_{2 * i + 1}", f"blocks_{i}_mlp_fc1"]
    return keys + [f"add_{2 * depth}"]


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def _paper_depth(data: Mapping[str, object]) -> int | None:
    """The depth a paper file was written for, when its keys tell (blocks_i / add_2L)."""
    adds = [int(m.group(1)) for k in data if (m := re.fullmatch(r"add_(\d+)", k))]
    if len(adds) == 1 and adds[0] % 2 == 0:
        return adds[0] // 2
    blocks = [int(m.group(1)) for k in data if (m := re.fullmatch(r"blocks_(\d+)_mlp_fc1", k))]
    return max(blocks) + 1 if blocks else None


def list_ratio_files() -> list[str]:
    """Names of the shipped paper ratio files (``DeiT_t``, ``DeiT_s``, ...)."""
    return sorted(p.stem for p in RATIO_DIR.glob("*.json"))


def _read_paper(spec: str | Path) -> dict:
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = RATIO_DIR / f"{spec}.json"
    if not path.exists():
        raise ValueError(f"no SNP ratio file {str(spec)!r}; shipped files: "
                         f"{', '.join(list_ratio_files())}, or give a path to a JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must hold a JSON object of key → ratio")
    return data


def resolve_ratios(spec: object, depth: int, *, sparsity: float | None = None,
                   heads: float | Sequence[float] | None = None) -> StructuredRatios:
    """Turn what a caller passes into :class:`StructuredRatios` for a ``depth``-block model.

    ``spec`` may be a :class:`StructuredRatios`; a paper file (path, or a shipped name such as
    ``"DeiT_t"``) or a paper-format mapping; a mapping of components (``qk``, ``v``, ``mlp``,
    ``heads``, ``residual``) to one number or (blocks only) one number per block, missing
    components 0; or None, in which case ``sparsity`` is applied to q/k, v and FFN of every
    block (residual and heads untouched). ``heads`` overrides the head ratios ("SNP + Head").
    """
    if spec is None:
        if sparsity is None:
            raise ValueError("give ratios=... (a paper file, a StructuredRatios or a mapping of "
                             "components) or a sparsity")
        s = _check_ratio(sparsity, "sparsity")
        ratios = StructuredRatios.uniform(depth, qk=s, v=s, mlp=s)
    elif isinstance(spec, StructuredRatios):
        ratios = spec
    elif isinstance(spec, (str, Path)):
        ratios = StructuredRatios.from_paper(spec, depth)
    elif isinstance(spec, Mapping):
        if set(spec) <= set(COMPONENTS):
            ratios = _from_components(spec, depth)
        elif any(k.startswith(("matmul", "blocks_", "add_")) for k in spec):
            ratios = StructuredRatios.from_paper(spec, depth)
        else:
            raise ValueError(f"unknown ratio keys {sorted(spec)}: use components "
                             f"{list(COMPONENTS)} or the paper's keys (matmul, matmul_1, "
                             "blocks_0_mlp_fc1, ..., add_24)")
    else:
        raise ValueError(f"cannot read ratios from {type(spec).__name__}")
    if ratios.depth != depth:
        raise ValueError(f"ratios are for {ratios.depth} blocks; this model has {depth}")
    return ratios.with_heads(heads) if heads is not None else ratios


def _from_components(spec: Mapping[str, object], depth: int) -> StructuredRatios:
    values = {}
    for name in BLOCK_COMPONENTS:
        r = spec.get(name, 0.0)
        if isinstance(r, Sequence) and not isinstance(r, str):
            if len(r) != depth:
                raise ValueError(f"ratio {name!r} has {len(r)} entries; this model has "
                                 f"{depth} blocks")
            values[name] = tuple(r)
        else:
            values[name] = (r,) * depth
    return StructuredRatios(**values, residual=spec.get("residual", 0.0))
