"""Seed 000's experiment: SNIP vs attention-aware SNIP at 90% sparsity on a Linformer-ViT.

Both criteria prune the same initialisation (one seed) with the same calibration batch at
initialisation, then train under the same schedule and data order (``core.train``). Printed:
the paper's Table 1 columns (train accuracy / loss, validation accuracy / loss) plus macro-F1,
layer collapse (layers losing ≥ 99% of their weights), kept weights and wall time. Written under
``--out``: ``table.csv``, ``table.md`` (next to the paper's figures), ``history.csv`` (one row per
criterion and epoch), ``curves.png`` (accuracy and loss per epoch) and ``config.json``.

Full replication: ``--data folder --root PlantVillage/ --epochs 50`` on a GPU (the paper:
Plant Disease Dataset, 38 classes, 224×224, 50 epochs). Offline it runs on the shipped
datasets; the defaults (shapes, 1200 training images at 224×224, 3 epochs) take minutes on a
CPU, and ``--model linformer-vit-tiny`` (32×32) takes seconds::

    python -m core.experiments.seed_snip --model linformer-vit-tiny --epochs 5 --out runs/seed

What we saw (see the per-layer table of ``prune()``): at 90%, SNIP empties the patch embedding
of linformer-vit-paper at init (the model then sees no image), while attention-SNIP keeps the
attention path but, its extra terms summing over batch × tokens, can starve the classifier
head (on linformer-vit-tiny it prunes all of it). ``--exclude-head`` keeps the head dense.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..data import calibration_batch, load_dataset
from ..models import build_model
from ..pruning import prune
from ..train import Callback, EpochEvent, TrainConfig, seed_everything, train


class _EpochLog(Callback):
    def __init__(self, name: str, log) -> None:
        self.name, self.log = name, log

    def on_epoch_end(self, event: EpochEvent) -> None:
        m = event.metrics
        self.log(f"  {self.name} epoch {event.epoch}/{event.epochs}: train loss "
                 f"{m['train_loss']:.4f} acc {m['train_acc']:.3f} | val loss {m['val_loss']:.4f} "
                 f"acc {m['val_acc']:.3f} f1 {m['val_f1']:.3f} | {m['seconds']:.1f}s")

CRITERIA = ("snip", "attention-snip")
# Seed 000, Table 1: 90% sparsity, 50 epochs, Plant Disease Dataset (accuracy in %).
PAPER_TABLE = pd.DataFrame(
    [{"criterion": "snip", "train_acc": 67.9, "train_loss": 1.01, "val_acc": 57.9,
      "val_loss": 1.22},
     {"criterion": "attention-snip", "train_acc": 98.9, "train_loss": 0.03, "val_acc": 94.9,
      "val_loss": 0.18}])
COLUMNS = ["criterion", "train_acc", "train_loss", "val_acc", "val_loss", "val_f1",
           "layer_collapse", "kept", "prunable", "epochs", "status", "prune_s", "train_s",
           "wall_s"]


@dataclass(frozen=True)
class SeedSnipConfig:
    """One run of the experiment; ``image_size`` None → the model's native size."""

    model: str = "linformer-vit-paper"
    data: str = "shapes"
    root: str | None = None
    image_size: int | None = None
    num_train: int = 1200
    num_val: int = 300
    epochs: int = 3
    sparsity: float = 0.9
    batch_size: int = 32
    lr: float = 1e-3
    calib_size: int = 64
    seed: int = 0
    exclude_head: bool = False
    device: str = "auto"
    max_steps: int | None = None
    out: str = "runs/seed_snip"


@dataclass
class SeedSnipResult:
    table: pd.DataFrame  # one row per criterion, COLUMNS (accuracies in %)
    history: pd.DataFrame  # criterion, epoch, train/val metrics
    out: Path


def _datasets(cfg: SeedSnipConfig, size: int):
    options: dict = {}
    if cfg.data == "shapes":
        options = {"num_train": cfg.num_train, "num_val": cfg.num_val}
    elif cfg.data == "folder":
        options = {"root": cfg.root}
    return load_dataset(cfg.data, size, seed=cfg.seed, **options)


def run(cfg: SeedSnipConfig, log=print) -> SeedSnipResult:
    """Prune one initialisation with both criteria, train both, write the outputs."""
    probe = build_model(cfg.model, 2)
    size = cfg.image_size or probe.input_shape[1]
    train_set, val_set = _datasets(cfg, size)
    overrides = {} if size == probe.input_shape[1] else {"img_size": size}
    seed_everything(cfg.seed)
    model = build_model(cfg.model, len(train_set.classes), **overrides)
    images, labels = calibration_batch(train_set, min(cfg.calib_size, len(train_set)), cfg.seed)
    log(f"{cfg.model} at {size}×{size} on {cfg.data} ({len(train_set)} train / {len(val_set)} "
        f"val, {len(train_set.classes)} classes); calibration batch {len(labels)}; "
        f"sparsity {cfg.sparsity}")
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                       device=cfg.device, max_steps=cfg.max_steps)
    rows, history = [], []
    for name in CRITERIA:
        t0 = time.perf_counter()
        pruned = prune(model, name, cfg.sparsity, images, labels, exclude_head=cfg.exclude_head)
        t1 = time.perf_counter()
        log(f"{name}: pruned in {t1 - t0:.1f}s, layer collapse {pruned.layer_collapse}")
        result = train(pruned.model, train_set, val_set, tcfg, callbacks=(_EpochLog(name, log),))
        t2 = time.perf_counter()
        final = result.final or {}
        kept = int(sum(int(m.sum()) for m in pruned.masks.values()))
        prunable = int(sum(m.numel() for m in pruned.masks.values()))
        rows.append({"criterion": name,
                     "train_acc": 100 * final.get("train_acc", math.nan),
                     "train_loss": final.get("train_loss", math.nan),
                     "val_acc": 100 * final.get("val_acc", math.nan),
                     "val_loss": final.get("val_loss", math.nan),
                     "val_f1": final.get("val_f1", math.nan),
                     "layer_collapse": pruned.layer_collapse, "kept": kept,
                     "prunable": prunable, "epochs": len(result.history),
                     "status": result.status, "prune_s": t1 - t0, "train_s": t2 - t1,
                     "wall_s": t2 - t0})
        history += [{"criterion": name, **h} for h in result.history]
        log(f"{name}: {result.status} after {result.steps} steps, "
            f"val acc {rows[-1]['val_acc']:.1f}%, layer collapse {pruned.layer_collapse}, "
            f"{t2 - t0:.1f}s")
    table = pd.DataFrame(rows, columns=COLUMNS)
    out = _write(cfg, table, pd.DataFrame(history))
    return SeedSnipResult(table, pd.DataFrame(history), out)


def markdown(table: pd.DataFrame, cfg: SeedSnipConfig) -> str:
    """Our rows next to the paper's Table 1 (tabulate-free markdown)."""
    head = ", head kept dense" if cfg.exclude_head else ""
    lines = [f"Seed 000 replication: `{cfg.model}` on `{cfg.data}`, sparsity {cfg.sparsity}"
             f"{head}, {cfg.epochs} epoch(s), seed {cfg.seed}. Accuracy in %.", "",
             "| run | criterion | train acc | train loss | val acc | val loss | val macro-F1 "
             "| layer collapse | wall s |", "|" + "---|" * 9]
    for r in table.itertuples():
        lines.append(f"| ours | {r.criterion} | {r.train_acc:.1f} | {r.train_loss:.3f} | "
                     f"{r.val_acc:.1f} | {r.val_loss:.3f} | {r.val_f1:.3f} | "
                     f"{r.layer_collapse} | {r.wall_s:.1f} |")
    for r in PAPER_TABLE.itertuples():
        lines.append(f"| paper (50 epochs, Plant Disease) | {r.criterion} | {r.train_acc:.1f} | "
                     f"{r.train_loss:.2f} | {r.val_acc:.1f} | {r.val_loss:.2f} | – | – | – |")
    return "\n".join(lines) + "\n"


def _plot(history: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, h in history.groupby("criterion", sort=False):
        for ax, metric in zip(axes, ("acc", "loss")):
            ax.plot(h["epoch"], h[f"train_{metric}"], "--", marker="o", label=f"{name} train")
            ax.plot(h["epoch"], h[f"val_{metric}"], "-", marker="o", label=f"{name} val")
    for ax, title in zip(axes, ("accuracy", "cross-entropy loss")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(cfg: SeedSnipConfig, table: pd.DataFrame, history: pd.DataFrame) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    history.to_csv(out / "history.csv", index=False)
    (out / "table.md").write_text(markdown(table, cfg))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if len(history):
        _plot(history, out / "curves.png")
    return out


def main(argv: list[str] | None = None) -> SeedSnipResult:
    d = SeedSnipConfig()
    p = argparse.ArgumentParser(prog="python -m core.experiments.seed_snip",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=d.model, help="model preset (default %(default)s)")
    p.add_argument("--data", default=d.data, choices=["shapes", "digits", "folder"])
    p.add_argument("--root", default=None, help="image folder for --data folder")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's own")
    p.add_argument("--num-train", type=int, default=d.num_train, help="shapes only")
    p.add_argument("--num-val", type=int, default=d.num_val, help="shapes only")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--sparsity", type=float, default=d.sparsity)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--calib-size", type=int, default=d.calib_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--exclude-head", action="store_true",
                   help="keep the classifier dense (the paper prunes it too)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps per run")
    p.add_argument("--out", default=d.out)
    a = p.parse_args(argv)
    cfg = SeedSnipConfig(model=a.model, data=a.data, root=a.root, image_size=a.image_size,
                         num_train=a.num_train, num_val=a.num_val, epochs=a.epochs,
                         sparsity=a.sparsity, batch_size=a.batch_size, lr=a.lr,
                         calib_size=a.calib_size, seed=a.seed, exclude_head=a.exclude_head,
                         device=a.device,
                         max_steps=a.max_steps, out=a.out)
    result = run(cfg)
    print()
    print(markdown(result.table, cfg))
    print(f"written to {result.out}/ (table.csv, table.md, history.csv, curves.png)")
    return result


if __name__ == "__main__":
    main()
