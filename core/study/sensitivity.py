"""Layer sensitivity (NNI's sensitivity analysis): accuracy when one layer alone is pruned.

A layer is one scored weight matrix ``(out, in)`` of an unstructured criterion, or one block's
q/k pairs, v channels or FFN neurons of a structured one.
"""
from __future__ import annotations

import copy
import threading
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ..models import get_adapter
from ..pruning import compute_masks, prune
from .calibrate import calibration, val_subset
from .criteria import criterion_info, make_pruner
from .points import Pruned, forward_model, score
from .sweeps import Measure

SENSITIVITY_COLUMNS = ["criterion", "layer", "ratio", "accuracy", "accuracy_drop"]
STRUCTURED_UNITS = ("qk", "v", "mlp")


def layer_sensitivity(model: nn.Module, train_set: Dataset | None, val_set: Dataset,
                      criteria: Sequence[str], ratios: Sequence[float] = (0.3, 0.6, 0.9), *,
                      calib: int = 64, seed: int = 0, val_samples: int = 128,
                      batch_size: int = 256,
                      progress: Callable[[float, str], None] | None = None,
                      cancel: threading.Event | None = None) -> pd.DataFrame:
    """Prune one layer at a time (NNI's sensitivity analysis): for an unstructured criterion
    each scored weight matrix alone at each ratio (its lowest keep-scores removed, every other
    layer dense); for a structured one each block's q/k pairs, v channels or FFN neurons alone
    (layers named ``blocks.<i>.qk`` / ``.v`` / ``.mlp``). Scores once per criterion.

    Returns the columns of :data:`SENSITIVITY_COLUMNS`, ``accuracy_drop`` = dense accuracy −
    accuracy (positive: worse), on the :func:`val_subset` of ``val_samples`` images. A
    ``cancel`` set stops before the next evaluation (``df.attrs["cancelled"]``)."""
    from ..pruning.ratios import StructuredRatios

    ratios = [round(float(r), 6) for r in ratios]
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"need ratios in (0, 1), got {list(ratios)}")
    base = copy.deepcopy(model).eval()
    scratch = copy.deepcopy(base)
    measure = Measure(base, val_subset(val_set, val_samples), batch_size, attention=False)
    dense_acc = measure(base)[0]["accuracy"]
    images, labels = calibration(train_set, calib, seed)
    plans: list[tuple[str, str, list[tuple[str, Callable[[float], Pruned]]]]] = []
    for name in criteria:
        info = criterion_info(name)
        if info.needs_training:
            raise ValueError(f"{name} learns its masks during training: no sensitivity")
        sc = score(base, name, images, labels, seed)
        units: list[tuple[str, Callable[[float], Pruned]]] = []
        if info.kind == "structured":
            depth = get_adapter(base).depth(base)
            for i in range(depth):
                for comp in STRUCTURED_UNITS:
                    def one(r: float, i=i, comp=comp, sc=sc, name=name) -> Pruned:
                        per = {c: tuple(r if (c == comp and j == i) else 0.0
                                        for j in range(depth)) for c in STRUCTURED_UNITS}
                        rat = StructuredRatios(per["qk"], per["v"], per["mlp"], (0.0,) * depth)
                        pr = make_pruner(name, seed, {"ratios": rat})
                        if sc is not None:
                            res = pr.prune_scored(base, sc.structured, None)
                        else:
                            res = prune(base, pr, None, images, labels)
                        return Pruned.from_result(name, r, "layer", res)
                    units.append((f"blocks.{i}.{comp}", one))
        else:
            weights = sc.weights if sc is not None else make_pruner(name, seed).score(
                copy.deepcopy(base), images, labels)
            for key in weights:
                def one(r: float, key=key, w=weights, name=name) -> Pruned:
                    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
                    masks.update(compute_masks({key: w[key]}, r, "layer"))
                    return Pruned(name, r, "layer", masks, w)
                units.append((key.removesuffix(".weight"), one))
        plans.append((name, info.kind, units))
    total = sum(len(u) for _, _, u in plans) * len(ratios)
    done, rows, cancelled = 0, [], False
    for name, _, units in plans:
        for layer, make in units:
            for r in ratios:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                if progress:
                    progress(done / total, f"{name}: {layer} at {r:.0%}")
                done += 1
                with forward_model(base, make(r), scratch) as net:
                    acc = measure(net)[0]["accuracy"]
                rows.append({"criterion": name, "layer": layer, "ratio": r, "accuracy": acc,
                             "accuracy_drop": dense_acc - acc})
            if cancelled:
                break
        if cancelled:
            break
    if progress and not cancelled:
        progress(1.0, "done")
    df = pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
    df.attrs["cancelled"] = cancelled
    df.attrs["dense_accuracy"] = dense_acc
    return df

