"""AMAP (seed 002) against SNP, l2-norm and random at equal attention MACs, same training budget.

    python benchmarks/bench_amap.py                                   # ~6 min, loaded 2-core CPU
    python benchmarks/bench_amap.py --steps 300 --budget 0.5 --seeds 0 1 2
    python benchmarks/bench_amap.py --no-ablations \
        --cases vit-tiny:shapes linformer-vit-tiny:digits

Per case (preset:dataset) the dense model is the shipped checkpoint
(``core.models.pretrained_path``) or, where there is none, one trained here for
``--pretrain-steps`` steps (cached under the system temp dir). Then, with the same ``--steps``
optimizer steps, batch size and learning-rate schedule for every method:

- ``amap``: ``amap_prune(dense, budget, train_set, steps)`` — the steps include its search
  (``search_frac``) and the fine-tuning under the frozen masks;
- ``snp``, ``l2-norm``, ``random``: one-shot structured pruning (``core.pruning.snp``) to
  *exactly AMAP's per-block channel counts* (so attention MACs are equal to the MAC), then
  ``core.train.train`` for ``--steps`` steps;
- ``dense``: no pruning, fine-tuned for the same steps (the reference);
- ablations (unless ``--no-ablations``): AMAP without the similarity weights, with a uniform
  init instead of the attention differences, without the reweight module.

``acc_oneshot`` is the accuracy right after pruning (before any fine-tuning; AMAP has none,
it prunes while training), ``acc`` after the training budget. Attention MACs: the q/k/v and
output projections and the two attention products of every block
(``core.pruning.amap.attention_macs``); ``GMACs`` is the whole model (``count_macs``) and
``macs_kept`` its fraction of the dense model's (a budget of attention MACs removes less of the
whole model: patch embedding, FFN and head are not pruned).
The second table is the indicator's convergence: attention-MACs ratio of the binarised
indicator (and of the sigmoid gates' expectation) every ``--log-every`` steps.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Subset

from core.data import calibration_batch, load_dataset  # noqa: E402
from core.models import (build_model, count_macs, load_model, pretrained_path,  # noqa: E402
                         save_model)
from core.pruning.amap import amap_prune, attention_macs  # noqa: E402
from core.pruning.ratios import StructuredRatios  # noqa: E402
from core.pruning.snp import structured_prune  # noqa: E402
from core.pruning.structured import block_views  # noqa: E402
from core.train import TrainConfig, evaluate, train  # noqa: E402

BASELINES = ("snp", "l2-norm", "random")
ABLATIONS = {"amap −similarity": {"similarity": 0.0},
             "amap −attention init": {"init": "uniform"},
             "amap −reweight": {"reweight": False}}


def dense_model(preset: str, dataset: str, train_set, val_set, args) -> torch.nn.Module:
    """The shipped checkpoint, else a short training run (cached in the temp dir)."""
    classes = len(train_set.classes)
    if pretrained_path(preset, dataset).exists():
        return build_model(preset, classes, pretrained=True, dataset=dataset)
    cache = (Path(tempfile.gettempdir()) / "prunelens_bench_amap"
             / f"{preset}_{dataset}_{args.pretrain_steps}.safetensors")
    if cache.exists():
        return load_model(cache)
    print(f"[{preset}/{dataset}] no shipped checkpoint: training {args.pretrain_steps} steps",
          flush=True)
    model = build_model(preset, classes)
    train(model, train_set, val_set, TrainConfig(epochs=1000, max_steps=args.pretrain_steps,
                                                 batch_size=64, lr=2e-3, precision="fp32"))
    save_model(model, cache)
    return model


def finetune(model, train_set, val_set, args, seed: int) -> None:
    train(model, train_set, val_set,
          TrainConfig(epochs=1000, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      precision="fp32", seed=seed, eval_batch_size=512))


def counts_of(model) -> list[tuple[int, int]]:
    return [(v.qk_dim, v.v_dim) for v in block_views(model)]


def ratios_for(model, counts) -> StructuredRatios:
    """Structured ratios that remove exactly down to ``counts`` (q/k, v per head)."""
    views = block_views(model)
    return StructuredRatios(qk=tuple(1 - nq / v.qk_dim for v, (nq, _) in zip(views, counts)),
                            v=tuple(1 - nv / v.v_dim for v, (_, nv) in zip(views, counts)),
                            mlp=(0.0,) * len(views), heads=(0.0,) * len(views))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+",
                    default=["vit-tiny:shapes", "linformer-vit-tiny:shapes"])
    ap.add_argument("--budget", type=float, default=0.7, help="attention MACs kept (0.7 = −30%%)")
    ap.add_argument("--steps", type=int, default=100, help="training steps of every method")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--search-frac", type=float, default=0.6)
    ap.add_argument("--calibration", type=int, default=32, help="calibration images")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--val", type=int, default=0, help="cap on validation images (0 = all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    rows, conv = [], []
    for case in args.cases:
        preset, dataset = case.split(":")
        train_set, val_set = load_dataset(dataset, 32, seed=0)
        if args.val:
            val_set = Subset(val_set, range(min(args.val, len(val_set))))
        dense = dense_model(preset, dataset, train_set, val_set, args).eval()
        attn_full, macs_full = attention_macs(dense), count_macs(dense)
        acc_dense = evaluate(dense, val_set, batch_size=512)["accuracy"]
        for seed in args.seeds:
            images, _ = calibration_batch(train_set, args.calibration, seed)

            def row(method, model, acc_oneshot, seconds):
                macs = count_macs(model)
                # the closed form against the counter: only attention MACs may have changed
                assert macs_full - macs == attn_full - attention_macs(model), method
                rows.append({"case": case, "seed": seed, "method": method,
                             "attn_ratio": attention_macs(model) / attn_full,
                             "macs_kept": macs / macs_full,
                             "GMACs": macs / 1e9,
                             "counts q/k·v": " ".join(f"{q}·{v}" for q, v in counts_of(model)),
                             "acc_oneshot": acc_oneshot,
                             "acc": evaluate(model, val_set, batch_size=512)["accuracy"],
                             "seconds": seconds})
                print(f"[{case} seed {seed}] {method}: acc {rows[-1]['acc']:.4f} "
                      f"attn ratio {rows[-1]['attn_ratio']:.4f} ({seconds:.0f}s)", flush=True)

            t0 = time.perf_counter()
            m = copy.deepcopy(dense)
            finetune(m, train_set, val_set, args, seed)
            row("dense", m, acc_dense, time.perf_counter() - t0)

            t0 = time.perf_counter()
            res = amap_prune(dense, args.budget, train_set, args.steps, images,
                             search_frac=args.search_frac, batch_size=args.batch_size,
                             lr=args.lr, seed=seed)
            row("amap", res.model, float("nan"), time.perf_counter() - t0)
            counts = res.extra["counts"]
            for r in res.extra["history"]:
                if r["step"] % args.log_every == 0 or r["step"] == 1:
                    conv.append({"case": case, "seed": seed, "step": r["step"],
                                 "phase": r["phase"], "macs_ratio": r["macs_ratio"],
                                 "expected_ratio": r["expected_ratio"]})

            for name in BASELINES:
                t0 = time.perf_counter()
                small = structured_prune(dense, name, ratios_for(dense, counts), images,
                                         **({"seed": seed} if name == "random" else {})).model
                oneshot = evaluate(small, val_set, batch_size=512)["accuracy"]
                finetune(small, train_set, val_set, args, seed)
                row(name, small, oneshot, time.perf_counter() - t0)

            if not args.no_ablations:
                for name, opts in ABLATIONS.items():
                    t0 = time.perf_counter()
                    r = amap_prune(dense, args.budget, train_set, args.steps, images,
                                   search_frac=args.search_frac, batch_size=args.batch_size,
                                   lr=args.lr, seed=seed, **opts)
                    row(name, r.model, float("nan"), time.perf_counter() - t0)
        print(f"[{case}] dense: {macs_full / 1e9:.4f} GMACs, attention {attn_full / 1e6:.2f} "
              f"MMACs, accuracy before fine-tuning {acc_dense:.4f}", flush=True)

    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    table = pd.DataFrame(rows)
    print(f"\nbudget {args.budget} (attention MACs kept), {args.steps} steps, batch "
          f"{args.batch_size}, lr {args.lr}, seeds {args.seeds}\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if len(args.seeds) > 1:
        print("\nmean over seeds:")
        print(table.groupby(["case", "method"], sort=False)[["acc_oneshot", "acc"]]
              .agg(["mean", "std"]).to_string(float_format=lambda v: f"{v:.4f}"))
    print("\nindicator convergence (attention-MACs ratio of the binarised / expected gates):")
    c = pd.DataFrame(conv)
    pivot = c.pivot_table(index=["step", "phase"], columns=["case", "seed"],
                          values=["macs_ratio", "expected_ratio"])
    print(pivot.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
