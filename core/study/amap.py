"""AMAP's last step: its exported (shrunk) model evaluated, costed, and logged as a run."""
from __future__ import annotations

from torch.utils.data import Dataset

from ..pruning import PruneResult
from .costs import DenseCost, cost
from .evaluation import evaluate
from .points import Pruned


def finish_amap(result: PruneResult, val_set: Dataset, budget: float, dense: DenseCost,
                store=None, run_id: str | None = None, batch_size: int = 256) -> dict:
    """AMAP's exported model (``prune(model, "amap", ...)``'s result) evaluated on
    ``val_set`` and costed against the dense model; with a run ``store`` the numbers are
    logged as epoch 1 of ``run_id``, the model saved as its checkpoint and the run closed with
    AMAP's status. Returns ``attention_ratio, budget, params, macs, params_kept, macs_kept,
    val_acc, val_loss, val_f1, steps``."""
    small = result.model.eval()
    ev = evaluate(small, val_set, batch_size=batch_size)
    c = cost(dense, Pruned("amap", 1.0 - budget, "layer", small=small))
    extra = result.extra
    out = {"attention_ratio": extra["attention_ratio"], "budget": budget, **c,
           "val_acc": ev["accuracy"], "val_loss": ev["loss"], "val_f1": ev["macro_f1"],
           "steps": extra["steps"]}
    if store is not None:
        store.log_epoch(run_id, 1, {"val_acc": ev["accuracy"], "val_loss": ev["loss"],
                                    "val_f1": ev["macro_f1"],
                                    "attention_macs_ratio": extra["attention_ratio"],
                                    "params": c["params"], "macs": c["macs"],
                                    "steps": extra["steps"]})
        store.save_checkpoint(run_id, small, "last",
                              metadata={"pruner": "amap", "budget": str(budget),
                                        "steps": str(extra["steps"])})
        store.finish(run_id, extra["status"], extra["reason"])
    return out
