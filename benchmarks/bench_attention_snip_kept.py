"""What SNIP and attention-aware SNIP keep, by component: q, k, v, out-projection, FFN, patch
embedding, head (seed 000's question: does attention-SNIP keep the attention path?).

    python benchmarks/bench_attention_snip_kept.py [--setups seed000 vit-tiny] [--sparsity 0.9]

``seed000``: seed 000's setup as ``python -m core.experiments.seed_snip --data digits`` prunes
it (``linformer-vit-paper`` at 224×224, untrained initialisation after ``seed_everything(0)``,
digits, calibration batch of 64 drawn with seed 0). ``vit-tiny``: the shipped trained
``vit-tiny`` on ``shapes`` (calibration batch of 64, seed 0). Kept fraction = non-zero entries
of the masked weights over all entries, per component summed over blocks (read through the
family adapter's block views, so q and k are the same slices SNP and AMAP prune). ``|MA-1|``:
how far the pruned model's attention is from uniform, max over blocks, heads, rows and the
first 8 calibration images of ``|M·A − 1|`` (M keys per row; 0 = every query averages every
key alike; Linformer's ``P̄`` over its k projected keys). No timing.
"""
from __future__ import annotations

import argparse

import torch

from core.attention import capture_attention
from core.data import calibration_batch, load_dataset
from core.models import block_views, build_model
from core.pruning import prune
from core.train import seed_everything


def _setup(name: str):
    if name == "seed000":
        probe = build_model("linformer-vit-paper", 2)
        size = probe.input_shape[1]
        train_set, _ = load_dataset("digits", size, seed=0)
        seed_everything(0)
        model = build_model("linformer-vit-paper", len(train_set.classes))
    elif name == "vit-tiny":
        train_set, _ = load_dataset("shapes", 32, seed=0)
        model = build_model("vit-tiny", num_classes=len(train_set.classes), pretrained=True)
    else:
        raise ValueError(name)
    images, labels = calibration_batch(train_set, 64, 0)
    return model, images, labels


def kept_by_component(model: torch.nn.Module) -> dict[str, float]:
    """Kept fraction of q, k, v, out, fc1+fc2 over all blocks, plus embedding and head."""
    kept: dict[str, list[int]] = {}

    def add(part: str, w: torch.Tensor) -> None:
        k, n = kept.setdefault(part, [0, 0])
        kept[part] = [k + int((w != 0).sum()), n + w.numel()]

    for view in block_views(model):
        add("q", view.q_weight)
        add("k", view.k_weight)
        add("v", view.v_weight)
        add("out", view.out_weight)
        add("ffn", view.fc1.weight.detach())
        add("ffn", view.fc2.weight.detach())
    add("embed", model.patch_embed.proj.weight.detach())  # both families name it so
    add("head", model.head.weight.detach())
    qk = [a + b for a, b in zip(kept["q"], kept["k"])]
    kept["q+k"] = qk
    return {part: k / n for part, (k, n) in kept.items()}


def distance_from_uniform(model: torch.nn.Module, images: torch.Tensor) -> float:
    maps = capture_attention(model, images[:8], raw=True)
    return max(float((a * a.shape[-1] - 1).abs().max()) for a in maps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", nargs="+", default=["seed000", "vit-tiny"])
    p.add_argument("--sparsity", type=float, default=0.9)
    args = p.parse_args()
    torch.set_num_threads(1)
    for setup in args.setups:
        model, images, labels = _setup(setup)
        print(f"{setup}: {type(model).__name__}, calibration {tuple(images.shape)}, "
              f"sparsity {args.sparsity}")
        rows = {"dense": {**kept_by_component(model),
                          "|MA-1|": distance_from_uniform(model, images)}}
        for criterion in ("snip", "attention-snip"):
            result = prune(model, criterion, args.sparsity, images, labels)
            rows[criterion] = {**kept_by_component(result.model),
                               "|MA-1|": distance_from_uniform(result.model, images)}
        parts = list(rows["dense"])
        print(f"  {'kept fraction':<16}" + "".join(f"{c:>9}" for c in parts))
        for criterion, row in rows.items():
            print(f"  {criterion:<16}" + "".join(f"{row[c]:9.4f}" for c in parts))


if __name__ == "__main__":
    main()
