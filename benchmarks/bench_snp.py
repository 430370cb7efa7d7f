"""SNP's paper ratio files on our DeiT presets: parameters, GMACs and measured CPU latency.

    python benchmarks/bench_snp.py                       # DeiT-T, DeiT-S (both files)
    python benchmarks/bench_snp.py --models deit-base --runs 20 --threads 2 --heads 0.5

Random weights (latency does not depend on them); the SNP criterion runs on a calibration batch
of random 224×224 images. Latency: batch 1, eager PyTorch, ``torch.inference_mode``, the median
of ``--runs`` timed forwards after ``--warmup`` untimed ones, dense and pruned alternated (and
which goes first alternated too) so load from other processes hits both alike. Paper figures
(seed 001, Xeon Silver 4210R, PyTorch): DeiT-T 1.38×, DeiT-S 1.38× at 2.0 G and 1.60× at 1.3 G,
DeiT-B 1.89×. MACs are what papers call FLOPs (``core.models.count_macs``).
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from core.models import build_model, count_macs  # noqa: E402
from core.pruning import prune  # noqa: E402

from bench_byo import interleaved  # noqa: E402  (the models' forwards alternate run by run)

CASES = {  # preset → [(ratio file, paper speed-up on the Xeon)]
    "deit-tiny": [("DeiT_t", 1.38)],
    "deit-small": [("DeiT_s", 1.38), ("DeiT_s_small", 1.60)],
    "deit-base": [("DeiT_b", 1.89)],
}


def latencies(models: list[torch.nn.Module], x: torch.Tensor, runs: int,
              warmup: int) -> list[float]:
    """Median ms per model, the models' forwards interleaved run by run."""
    with torch.inference_mode():
        return interleaved([lambda m=m: m(x) for m in models], runs, warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["deit-tiny", "deit-small"],
                    choices=list(CASES))
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1 by default: the machine is shared)")
    ap.add_argument("--calibration", type=int, default=8, help="random calibration images")
    ap.add_argument("--heads", type=float, default=None,
                    help='also prune this fraction of heads per block ("SNP + Head")')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224)
    images = torch.rand(args.calibration, 3, 224, 224)
    rows = []
    for preset in args.models:
        dense = build_model(preset, 1000).eval()
        dense_macs = count_macs(dense)
        dense_params = sum(p.numel() for p in dense.parameters())
        for file, paper in CASES[preset]:
            t0 = time.perf_counter()
            small = prune(dense, "snp", 0.0, images=images, ratios=file,
                          heads=args.heads).model.eval()
            prune_s = time.perf_counter() - t0
            macs = count_macs(small)
            params = sum(p.numel() for p in small.parameters())
            t_dense, t_small = latencies([dense, small], x, args.runs, args.warmup)
            rows.append({
                "model": preset,
                "ratios": file + (f" + heads {args.heads}" if args.heads else ""),
                "params M": f"{dense_params / 1e6:.2f} → {params / 1e6:.2f}",
                "GMACs": f"{dense_macs / 1e9:.2f} → {macs / 1e9:.2f}",
                "MAC ratio": round(dense_macs / macs, 2),
                "dense ms": round(t_dense, 1), "pruned ms": round(t_small, 1),
                "speed-up": round(t_dense / t_small, 2),
                "speed-up / MAC ratio": round(t_dense / t_small / (dense_macs / macs), 2),
                "paper (Xeon)": paper, "prune s": round(prune_s, 1)})
            print(rows[-1], flush=True)
    print(f"\nbatch 1, torch {torch.__version__}, {args.threads} thread(s), median of "
          f"{args.runs} interleaved runs after {args.warmup} warm-up")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
