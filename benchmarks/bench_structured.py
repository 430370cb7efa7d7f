"""Every structured criterion at equal MACs, why SNP's redundancy scores lose, and what
hardware-friendly widths buy in latency.

    python benchmarks/bench_structured.py                        # all three parts
    python benchmarks/bench_structured.py --parts accuracy --seeds 0 1 2 --steps 100
    python benchmarks/bench_structured.py --parts why            # v / FFN alone, 0.3/0.5/0.7
    python benchmarks/bench_structured.py --parts latency --runs 20

**accuracy** — the shipped ``vit-tiny`` and ``linformer-vit-tiny`` (shapes, 32×32): for each
criterion and MAC target (−30 / −50 / −70%), the uniform sparsity of q/k, v and FFN that
gives the target MACs is searched (bisection on the closed-form MACs, ``--round-to`` and
``--ranking`` included), then: one-shot accuracy on ``--val`` validation images, accuracy
after ``--steps`` AdamW steps of fine-tuning (batch 64, lr 5e-4), and the cosine between the
last block's CLS → patch attention (heads averaged) of the pruned and the dense model
(one-shot). Seeds change the calibration batch (64 class-balanced training images), the
random criterion and the fine-tuning order; the table gives the mean (± std) over seeds.

**why** — v channels alone and FFN neurons alone pruned at 0.3 / 0.5 / 0.7 on vit-tiny with
SNP's redundancy (the paper's formula), its inverse, the output-side reading (out-projection
/ fc2 columns), a greedy removal that re-scores the remaining set after each pick (one per
head per round), the magnitude factor alone, ``snp-act``, l2 and random (3 seeds); and
the Spearman correlation of SNP's ω with the neurons' output size.

**latency** — DeiT-T and DeiT-S (random weights; latency does not depend on them) at the
paper's ratio files with round_to 1, 8 and 16, and with 8 plus a third of the heads (``snp``
on 8 random calibration images); batch 1, ``torch.set_num_threads(1)``, dense and pruned
forwards interleaved, median of ``--runs``; speed-up divided by the MAC ratio. Measured in
PyTorch (eager) and in ONNX Runtime on the exported files (``save_model(..., format="onnx")``,
one thread), the runtime a user who takes the smaller model away would deploy it in.
"""
from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch
import torch.nn.functional as F

from core.attention import capture_attention, cls_attention
from core.data import calibration_batch, load_dataset
from core.models import build_model, count_macs, token_layout
from core.pruning import get_pruner, prune
from core.pruning.ratios import StructuredRatios
from core.pruning.snp import value_redundancy_scores
from core.pruning.structured import (StructuredScores, block_views, config_macs, select,
                                     shrink, shrunk_config)

from bench_byo import interleaved  # calls alternating run by run
from bench_snp import latencies  # the same interleaved timing as the SNP benchmark

CRITERIA = ["snp", "snp-act", "reverse", "taylor", "activation", "l2-norm", "gm",
            "structured-random"]


# ---------------------------------------------------------------------------- helpers

def stack(dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    idx = range(len(dataset) if n is None else min(n, len(dataset)))
    xs, ys = zip(*(dataset[i] for i in idx))
    return torch.stack(xs), torch.tensor(ys)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return float(sum((model(a).argmax(1) == b).sum() for a, b in
                     zip(x.split(256), y.split(256))) / len(y))


def cls_cosine(model, ref: torch.Tensor, x) -> float:
    row = cls_attention(capture_attention(model, x)[-1], layout=token_layout(model))
    return float(F.cosine_similarity(row, ref, dim=1).mean())


def finetune(model, x, y, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(y), (64,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def sparsity_for_macs(model, scores, keep: float, round_to: int, ranking: str) -> float:
    """The uniform q/k, v, FFN sparsity whose shrunk model has ``keep`` × the dense MACs
    (bisection on the closed form; the closest from above at the end)."""
    dense, depth = config_macs(model.config), len(block_views(model))

    def macs(s: float) -> int:
        plan = select(model, scores, StructuredRatios.uniform(depth, qk=s, v=s, mlp=s),
                      round_to, ranking)
        return config_macs(shrunk_config(model, plan))
    lo, hi = 0.0, 0.99
    for _ in range(18):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(mid) > keep * dense else (lo, mid)
    return min((lo, hi), key=lambda s: abs(macs(s) - keep * dense))


# ---------------------------------------------------------------------------- accuracy

def accuracy_part(args) -> pd.DataFrame:
    train_set, val_set = load_dataset("shapes", image_size=32, seed=0)
    xt, yt = stack(train_set)
    xv, yv = stack(val_set, args.val)
    rows = []
    for name in args.models:
        dense = build_model(name, num_classes=len(train_set.classes), pretrained=True,
                            dataset="shapes").eval()
        ref = cls_attention(capture_attention(dense, xv[:args.attn_images])[-1],
                            layout=token_layout(dense))
        print(f"{name}: dense accuracy {accuracy(dense, xv, yv):.3f}", flush=True)
        for seed in args.seeds:
            cx, cy = calibration_batch(train_set, 64, seed)
            for crit in CRITERIA:
                opts = {"seed": seed} if crit == "structured-random" else {}
                pruner = get_pruner(crit, round_to=args.round_to, ranking=args.ranking, **opts)
                t0 = time.perf_counter()
                scores = pruner.structured_scores(dense, cx, cy)
                score_s = time.perf_counter() - t0
                for target in args.targets:
                    s = sparsity_for_macs(dense, scores, 1 - target, args.round_to,
                                          args.ranking)
                    small = pruner.prune_scored(dense, scores, s).model.eval()
                    row = {"model": name, "criterion": crit, "target": f"-{target:.0%}",
                           "seed": seed, "sparsity": round(s, 3),
                           "macs kept": count_macs(small) / count_macs(dense),
                           "one-shot": accuracy(small, xv, yv),
                           "cls cos": cls_cosine(small, ref, xv[:args.attn_images]),
                           "score s": score_s}
                    if args.steps:
                        torch.manual_seed(seed)
                        finetune(small, xt, yt, args.steps, seed)
                        row[f"ft{args.steps}"] = accuracy(small, xv, yv)
                    rows.append(row)
                    print({k: (round(v, 3) if isinstance(v, float) else v)
                           for k, v in row.items()}, flush=True)
    df = pd.DataFrame(rows)
    metrics = ["one-shot"] + ([f"ft{args.steps}"] if args.steps else []) + ["cls cos"]
    table = df.groupby(["model", "criterion", "target"], sort=False)[metrics].agg(
        lambda v: f"{v.mean():.3f}" + (f"±{v.std():.3f}" if len(v) > 1 else ""))
    out = table.unstack("target")
    out = out[[(m, f"-{t:.0%}") for m in metrics for t in args.targets]]
    print(f"\naccuracy at equal MACs (val {len(yv)} images, seeds {args.seeds}, round_to "
          f"{args.round_to}, ranking {args.ranking}; macs kept "
          f"{df['macs kept'].min():.3f}…{df['macs kept'].max():.3f} of the targets' "
          f"{[round(1 - t, 2) for t in args.targets]})")
    print(out.to_string())
    return df


# ---------------------------------------------------------------------------- why

def greedy_redundancy(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Greedy SNP redundancy: in rounds, every head loses its neuron with the lowest
    ``Σ_{j alive} (1 − |cos|)`` over the neurons still alive (re-scored after each pick, so
    one member of a group of near-duplicates survives); score = the round it left in."""
    n = w.shape[0]
    d = n // num_heads
    c = F.normalize(w.double(), dim=1)
    dist = 1 - (c @ c.T).abs()
    alive = torch.ones(n, dtype=torch.bool)
    score = torch.full((n,), float(d), dtype=torch.float64)
    for r in range(d - 1):
        omega = (dist * alive).sum(1)
        for h in range(num_heads):
            idx = torch.arange(h * d, (h + 1) * d)
            idx = idx[alive[idx]]
            j = idx[omega[idx].argmin()]
            alive[j] = False
            score[j] = r
    return score


def why_part(args) -> pd.DataFrame:
    from scipy.stats import spearmanr
    train_set, val_set = load_dataset("shapes", image_size=32, seed=0)
    xv, yv = stack(val_set, args.val)
    model = build_model("vit-tiny", num_classes=6, pretrained=True, dataset="shapes").eval()
    cx, cy = calibration_batch(train_set, 64, 0)
    views = block_views(model)
    act = get_pruner("snp-act")(model, cx)
    variants: dict[str, dict[str, list[torch.Tensor]]] = {"v": {}, "mlp": {}}
    corr = []
    for i, b in enumerate(views):
        for comp in ("v", "mlp"):
            if comp == "v":
                w, H, out = b.v_weight.flatten(0, 1), b.num_heads, b.out_weight
                shape = (b.num_heads, b.v_dim)
                snpact = act.v[i].flatten().double()
            else:
                w, H, out = b.fc1.weight.detach(), 1, b.fc2.weight.detach()
                shape = (b.mlp_hidden,)
                snpact = act.mlp[i].double()
            omega = value_redundancy_scores(w, H).double()
            size = snpact / omega          # mean|a_i| · ‖W_out[:, i]‖
            corr.append({"block": i, "component": comp,
                         "spearman(ω, output size)": spearmanr(omega, size).statistic,
                         "spearman(ω, ‖w‖)": spearmanr(omega, w.norm(dim=1)).statistic})
            for key, s in {
                "snp ω (paper)": omega, "−ω (inverse)": -omega,
                "ω of the output-side vectors": value_redundancy_scores(
                    out.T.contiguous(), H).double(),
                "greedy ω (re-scored)": greedy_redundancy(w, H),
                "output size alone": size, "snp-act (ω·size)": snpact,
                "l2 of the row": w.norm(dim=1).double()}.items():
                variants[comp].setdefault(key, []).append(s.reshape(shape).float())
    rows = []
    for comp, named in variants.items():
        for seed in range(3):
            rnd = get_pruner("structured-random", seed=seed)(model)
            named[f"random (seed {seed})"] = rnd.v if comp == "v" else rnd.mlp
        for key, ss in named.items():
            base = get_pruner("structured-random")(model)
            sc = StructuredScores(base.qk, ss if comp == "v" else base.v,
                                  ss if comp == "mlp" else base.mlp, base.heads, base.residual)
            row = {"component": comp, "scores": key}
            for r in (0.3, 0.5, 0.7):
                plan = select(model, sc, StructuredRatios.uniform(len(views), **{comp: r}))
                row[r] = accuracy(shrink(model, plan), xv, yv)
            rows.append(row)
            print(row, flush=True)
    print("\nSpearman correlation of SNP's ω with each neuron's output size (mean|a|·‖W_out‖):")
    print(pd.DataFrame(corr).round(2).to_string(index=False))
    df = pd.DataFrame(rows)
    print(f"\none component pruned alone on vit-tiny (val {len(yv)} images, dense "
          f"{accuracy(model, xv, yv):.3f}), accuracy at ratio 0.3 / 0.5 / 0.7:")
    print(df.round(3).to_string(index=False))
    return df


# ---------------------------------------------------------------------------- latency

def ort_latencies(models: list[torch.nn.Module], x: torch.Tensor, runs: int,
                  warmup: int) -> list[float]:
    """Median ms per model in ONNX Runtime (the file ``save_model(..., format="onnx")``
    writes; one intra-op thread, all graph optimisations), the models interleaved run by
    run as in :func:`latencies`; each file's output is checked against PyTorch's first."""
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from core.models import save_model

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    feed = {"images": x.numpy()}
    sessions = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for i, m in enumerate(models):
            path = save_model(m, os.path.join(tmp, f"m{i}.onnx"), format="onnx")
            s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            diff = float(np.abs(s.run(None, feed)[0] - m(x).numpy()).max())
            assert diff < 1e-3, f"ONNX output differs from PyTorch's by {diff}"
            sessions.append(s)
    return interleaved([lambda s=s: s.run(None, feed) for s in sessions], runs, warmup)


def latency_part(args) -> pd.DataFrame:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224)
    calib = torch.rand(8, 3, 224, 224)
    rows = []
    cases = {"deit-tiny": "DeiT_t", "deit-small": "DeiT_s"}
    timers = {"PyTorch eager": latencies, "ONNX Runtime": ort_latencies}
    for preset in args.latency_models:
        dense = build_model(preset, 1000).eval()
        scores = get_pruner("snp").structured_scores(dense, calib)
        settings = [("paper ratios", 1, None), ("round_to=8", 8, None),
                    ("round_to=16", 16, None), ("round_to=8 + 1/3 heads", 8, 1 / 3)]
        smalls = [get_pruner("snp", ratios=cases[preset], round_to=rt, heads=h)
                  .prune_scored(dense, scores).model.eval() for _, rt, h in settings]
        macs = count_macs(dense)
        for runtime in args.runtimes:
            ms = timers[runtime]([dense, *smalls], x, args.runs, args.warmup)
            for (label, _, _), small, t in zip(settings, smalls, ms[1:]):
                mac_ratio = macs / count_macs(small)
                rows.append({"model": preset, "runtime": runtime, "setting": label,
                             "GMACs": f"{macs / 1e9:.2f} → {count_macs(small) / 1e9:.2f}",
                             "MAC ratio": round(mac_ratio, 2), "dense ms": round(ms[0], 1),
                             "pruned ms": round(t, 1), "speed-up": round(ms[0] / t, 2),
                             "speed-up / MAC ratio": round(ms[0] / t / mac_ratio, 2)})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print(f"\nlatency: batch 1, 1 thread, torch {torch.__version__}, median of {args.runs} "
          f"interleaved runs after {args.warmup} warm-up; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    print(df.to_string(index=False))
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["why", "accuracy", "latency"],
                    choices=["why", "accuracy", "latency"])
    ap.add_argument("--models", nargs="+", default=["vit-tiny", "linformer-vit-tiny"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7],
                    help="fractions of the MACs removed")
    ap.add_argument("--steps", type=int, default=100, help="fine-tuning steps (0: none)")
    ap.add_argument("--val", type=int, default=1200, help="validation images")
    ap.add_argument("--attn-images", type=int, default=64)
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--ranking", default="layer", choices=["layer", "global"])
    ap.add_argument("--latency-models", nargs="+", default=["deit-tiny", "deit-small"])
    ap.add_argument("--runtimes", nargs="+", default=["PyTorch eager", "ONNX Runtime"],
                    choices=["PyTorch eager", "ONNX Runtime"])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if "why" in args.parts:
        why_part(args)
    if "accuracy" in args.parts:
        accuracy_part(args)
    if "latency" in args.parts:
        latency_part(args)


if __name__ == "__main__":
    main()
