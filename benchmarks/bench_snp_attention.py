"""Attention preservation under q/k pruning — the quantitative form of SNP's Fig. 3 (seed 001).

    python benchmarks/bench_snp_attention.py [--images 300] [--calibration 64]

On the trained ``vit-tiny`` (shapes; ``--checkpoint``, else the shipped checkpoint, else one
trained here for ``--epochs`` and cached in the temp dir), prune the q/k channel
pairs of every block at 10 … 90% (locally: the same ratio in every head of every block), no
fine-tuning, with ``snp``, ``l2-norm``, ``gm``, ``reverse`` and ``random`` (mean of 3 seeds).
For ``--images`` validation images, compare the pruned model's attention with the original's:
the CLS → patch row of the last block (heads averaged) and of the attention rollout, by cosine
similarity and Pearson correlation per image, averaged; plus validation accuracy (all 1200).
A second table compares SNP's γ (``rank``). Writes ``benchmarks/results/snp_attention.csv``,
``snp_attention.png`` (curves) and ``snp_attention_maps.png`` (Fig. 3-style rollout maps).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
from core.attention import (attention_rollout, capture_attention, cls_attention,  # noqa: E402
                            patch_heatmap, rollout_map)
from core.data import calibration_batch, load_dataset  # noqa: E402
from core.models import build_model, load_model, pretrained_path, save_model  # noqa: E402
from core.pruning.ratios import StructuredRatios  # noqa: E402
from core.pruning.snp import structured_pruner  # noqa: E402
from core.pruning.structured import select, shrink  # noqa: E402
from core.train import TrainConfig, evaluate, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
CRITERIA = ["snp", "l2-norm", "gm", "reverse", "random"]


def trained_vit_tiny(train_set, val_set, checkpoint: str | None,
                     epochs: int) -> torch.nn.Module:
    """``--checkpoint``, else the shipped checkpoint, else one trained here (cached)."""
    if checkpoint:
        return load_model(checkpoint)
    if pretrained_path("vit-tiny", "shapes").exists():
        return build_model("vit-tiny", num_classes=len(train_set.classes), pretrained=True)
    cache = Path(tempfile.gettempdir()) / f"prunelens_bench_vit-tiny_shapes_{epochs}.safetensors"
    if cache.exists():
        return load_model(cache)
    print(f"no shipped vit-tiny/shapes checkpoint: training one for {epochs} epochs")
    model = build_model("vit-tiny", num_classes=len(train_set.classes))
    train(model, train_set, val_set,
          TrainConfig(epochs=epochs, batch_size=128, lr=2e-3, seed=0))
    save_model(model, cache)
    return model


def rows_of(maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"cls": cls_attention(maps[-1]), "rollout": rollout_map(attention_rollout(maps))}


def similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean over images of the cosine similarity and the Pearson correlation, (B, P) each."""
    cos = F.cosine_similarity(a, b, dim=1)
    ac, bc = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    pearson = F.cosine_similarity(ac, bc, dim=1, eps=1e-12)
    return float(cos.mean()), float(pearson.mean())


def measure(model, ref: dict[str, torch.Tensor], images: torch.Tensor, val_set) -> dict:
    got = rows_of(capture_attention(model, images))
    out = {}
    for key in ("cls", "rollout"):
        out[f"{key} cos"], out[f"{key} pearson"] = similarity(got[key], ref[key])
    out["accuracy"] = evaluate(model, val_set)["accuracy"]
    return out


def sweep(model, scores, ref, images, val_set, name: str) -> list[dict]:
    rows = []
    for r in RATIOS:
        plan = select(model, scores, StructuredRatios.uniform(model.config.depth, qk=r))
        small = shrink(model, plan)
        rows.append({"criterion": name, "ratio": r, "qk dim": small.config.blocks[0].qk_dim,
                     **measure(small, ref, images, val_set)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="a save_model file of a trained vit-tiny")
    ap.add_argument("--epochs", type=int, default=40,
                    help="epochs when no checkpoint exists (12 reached only ~40%% here)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    train_set, val_set = load_dataset("shapes", image_size=32, seed=0)
    model = trained_vit_tiny(train_set, val_set, args.checkpoint, args.epochs).eval()
    calib, _ = calibration_batch(train_set, args.calibration, seed=0)
    images = torch.stack([val_set[i][0] for i in range(args.images)])
    ref = rows_of(capture_attention(model, images))
    base_acc = evaluate(model, val_set)["accuracy"]
    print(f"vit-tiny/shapes: val accuracy {base_acc:.4f}; head q/k dim "
          f"{model.config.blocks[0].qk_dim}; {args.images} images, {args.calibration} "
          f"calibration images")

    rows: list[dict] = []
    for name in CRITERIA:
        if name == "random":
            per_seed = [sweep(model, structured_pruner("random", seed=s)(model), ref, images,
                              val_set, "random") for s in range(3)]
            for i in range(len(RATIOS)):
                vals = [p[i] for p in per_seed]
                rows.append({k: (sum(v[k] for v in vals) / 3 if isinstance(vals[0][k], float)
                                 and k != "ratio" else vals[0][k]) for k in vals[0]})
        else:
            rows += sweep(model, structured_pruner(name)(model, calib), ref, images, val_set, name)
        print(f"  {name} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)

    rank_rows = []
    for rank in (1, 2, 4, 8, None):
        scores = structured_pruner("snp", rank=rank)(model, calib)
        r = pd.DataFrame(sweep(model, scores, ref, images, val_set, f"snp γ={rank or 'all'}"))
        rank_rows.append({"rank γ": rank or "all (16)",
                          **r.drop(columns=["criterion", "ratio", "qk dim"]).mean().to_dict()})

    pd.set_option("display.width", 200)
    fmt = {c: "{:.3f}".format for c in df.columns if df[c].dtype == float and c != "ratio"}
    print(f"\nq/k pruned at each ratio in every block, no fine-tuning (dense accuracy "
          f"{base_acc:.4f})")
    print(df.to_string(index=False, formatters=fmt))
    summary = df.groupby("criterion", sort=False).mean(numeric_only=True) \
        .drop(columns=["ratio", "qk dim"])
    print("\nmean over the 9 ratios")
    print(summary.to_string(float_format="{:.3f}".format))
    print("\nSNP's γ (mean over the 9 ratios)")
    print(pd.DataFrame(rank_rows).to_string(index=False, float_format="{:.3f}".format))

    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / "snp_attention.csv", index=False)
    try:
        plot(df, base_acc, model, images, calib)
    except ImportError:
        print("matplotlib not installed: no plots")
    print(f"\nwritten to {RESULTS} in {time.perf_counter() - t0:.0f} s")


def plot(df: pd.DataFrame, base_acc: float, model, images: torch.Tensor,
         calib: torch.Tensor) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["cls cos", "rollout cos", "rollout pearson", "accuracy"]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.4))
    for ax, col in zip(axes, cols):
        for name, g in df.groupby("criterion", sort=False):
            ax.plot(g["ratio"] * 100, g[col], marker="o", label=name)
        if col == "accuracy":
            ax.axhline(base_acc, color="grey", ls="--", lw=1, label="dense")
        ax.set_xlabel("q/k pruned (%)")
        ax.set_title(col)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("vit-tiny / shapes: attention kept under q/k pruning (no fine-tuning)")
    fig.tight_layout()
    fig.savefig(RESULTS / "snp_attention.png", dpi=110)
    plt.close(fig)

    # Fig. 3 style: rollout maps of one image, rows = criteria, columns = ratios
    img = images[:1]
    shown = [0.0, 0.3, 0.5, 0.7, 0.9]
    names = ["l2-norm", "gm", "reverse", "snp"]
    fig, axes = plt.subplots(len(names), len(shown) + 1, figsize=(2 * (len(shown) + 1),
                                                                   2 * len(names)))
    for i, name in enumerate(names):
        scores = structured_pruner(name)(model, calib)
        axes[i, 0].imshow(img[0].permute(1, 2, 0).numpy())
        axes[i, 0].set_ylabel(name)
        for j, r in enumerate(shown):
            m = shrink(model, select(model, scores, StructuredRatios.uniform(
                model.config.depth, qk=r)))
            heat = patch_heatmap(rollout_map(attention_rollout(capture_attention(m, img))),
                                 model.grid_size, img.shape[-2:])
            axes[i, j + 1].imshow(img[0].permute(1, 2, 0).numpy())
            axes[i, j + 1].imshow(heat[0].numpy(), cmap="jet", alpha=0.5)
            if i == 0:
                axes[i, j + 1].set_title(f"{int(r * 100)}%")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(RESULTS / "snp_attention_maps.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
