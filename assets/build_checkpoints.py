"""Rebuild the trained checkpoints shipped in ``assets/checkpoints`` (fixed seeds, CPU).

Run from the repository root:  python assets/build_checkpoints.py [--only vit-tiny_shapes]
Each entry trains a preset from scratch with ``core.train`` and writes
``assets/checkpoints/{model}_{dataset}.safetensors`` plus its validation metrics to
``assets/checkpoints/manifest.json``. ``build_model(name, n, pretrained=True, dataset=...)``
loads them. About a minute per entry on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from core.data import load_dataset  # noqa: E402
from core.models import build_model, pretrained_path, save_model  # noqa: E402
from core.train import TrainConfig, evaluate, train  # noqa: E402

# (model, dataset) → training config. Same seed everywhere; epochs chosen to pass 90% val acc.
RECIPES: dict[tuple[str, str], TrainConfig] = {
    ("vit-tiny", "shapes"): TrainConfig(epochs=16, batch_size=64, lr=2e-3, seed=0),
    ("linformer-vit-tiny", "shapes"): TrainConfig(epochs=16, batch_size=64, lr=2e-3, seed=0),
    ("vit-tiny", "digits"): TrainConfig(epochs=30, batch_size=64, lr=2e-3, seed=0),
    ("linformer-vit-tiny", "digits"): TrainConfig(epochs=30, batch_size=64, lr=2e-3, seed=0),
}


def build(model_name: str, dataset: str, config: TrainConfig) -> dict:
    train_set, val_set = load_dataset(dataset, image_size=32, seed=0)
    model = build_model(model_name, num_classes=len(train_set.classes))
    t0 = time.perf_counter()
    result = train(model, train_set, val_set, config)
    seconds = time.perf_counter() - t0
    if result.status != "finished":
        raise SystemExit(f"{model_name}/{dataset}: training {result.status}: {result.reason}")
    metrics = evaluate(model, val_set)
    path = pretrained_path(model_name, dataset)
    save_model(model, path, extra={"dataset": dataset, "classes": json.dumps(train_set.classes)})
    print(f"{model_name}/{dataset}: val acc {metrics['accuracy']:.4f} "
          f"loss {metrics['loss']:.4f} F1 {metrics['macro_f1']:.4f} in {seconds:.0f} s → {path}")
    return {"model": model_name, "dataset": dataset, "classes": train_set.classes,
            "config": config.__dict__, "seconds": round(seconds, 1),
            **{k: round(v, 4) for k, v in metrics.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="entries like vit-tiny_shapes")
    args = ap.parse_args()
    manifest_path = pretrained_path("x", "y").parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for (model_name, dataset), config in RECIPES.items():
        key = f"{model_name}_{dataset}"
        if args.only and key not in args.only:
            continue
        manifest[key] = build(model_name, dataset, config)
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
