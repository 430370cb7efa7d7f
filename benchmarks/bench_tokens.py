"""Token merging (ToMe) on CPU: images/s against r beside the MAC ratio.

    python benchmarks/bench_tokens.py                  # deit-tiny shapes, batch 32
    python benchmarks/bench_tokens.py --model deit-small --batch 16 --runs 9 --threads 2

``deit-tiny`` with random weights (speed does not depend on them), eval mode, no_grad, one
intra-op thread unless ``--threads``. The
contenders are the dense model and ``merge_tokens(model, r)`` for each r, r = 0 being the
baseline the ratios are against (the dense model shows what the hooks cost). Calls alternate
in order run by run (reversed every other run) and each figure is the median of ``--runs``,
so load from other processes hits every contender alike; the load average is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch

from core.models import build_model, count_macs
from core.tokens import merge_tokens, tokens_per_block


def interleaved(fns: list, runs: int, warmup: int) -> list[float]:
    """Median seconds of each function, called in alternating order run by run."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(warmup):
        for f in fns:
            f()
    for run in range(runs):
        order = range(len(fns)) if run % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit-tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--r", type=int, nargs="+", default=[0, 4, 8, 13, 16])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: least disturbed by other processes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dense = build_model(args.model, num_classes=1000).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a too large r is clipped; the table shows tokens left
        merged = {r: merge_tokens(dense, r) for r in args.r}
    x = torch.rand(args.batch, *dense.input_shape)
    names = ["dense"] + [f"r={r}" for r in args.r]
    models = [dense] + list(merged.values())

    def call(m: torch.nn.Module):
        def run() -> None:
            with torch.no_grad():
                m(x)
        return run

    load_before = os.getloadavg()
    secs = interleaved([call(m) for m in models], args.runs, args.warmup)
    load_after = os.getloadavg()
    macs = [count_macs(m) for m in models]
    base = 1 if 0 not in merged else names.index("r=0")
    print(f"{args.model} (random weights), batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.runs} interleaved runs")
    print(f"load average (1/5/15 min): before {load_before[0]:.2f}/{load_before[1]:.2f}/"
          f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/"
          f"{load_after[2]:.2f}")
    print(f"{'model':7s} {'tokens at last block':>21s} {'GMACs':>6s} {'MAC ratio':>9s} "
          f"{'ms/batch':>9s} {'images/s':>9s} {'speed-up':>8s}")
    for name, m, s, mac in zip(names, models, secs, macs):
        last = tokens_per_block(m)[-2]
        print(f"{name:7s} {last:21d} {mac / 1e9:6.3f} {macs[base] / mac:8.2f}x "
              f"{s * 1e3:9.1f} {args.batch / s:9.1f} {secs[base] / s:7.2f}x")


if __name__ == "__main__":
    main()
