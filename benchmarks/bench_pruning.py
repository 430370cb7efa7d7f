"""Pruning-core timings against the issue's targets (prints them; not a test).

- scoring cost of ``snip``/``attention-snip`` (≤ 1.5×) and ``grasp`` (≤ 4×) relative to one
  forward + backward of the same batch (eval mode, ``loss.backward()``), on vit-tiny (batch 64)
  and linformer-vit-paper (a small batch);
- ``compute_masks`` over the 2,757,376 weights of linformer-vit-paper (≤ 50 ms);
- a masked training step (AdamW) relative to the dense one (≤ 1.10×).

Timings are interleaved (one of each per round), the median of ``--repeats`` rounds, and in
CPU time of this process (``time.process_time``): on a shared machine wall time mostly measures
the neighbours (we saw wall = 3x CPU time); wall medians are printed alongside. Ratios, the
targets, are of CPU time.

    python benchmarks/bench_pruning.py [--repeats 7] [--paper-batch 8] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


from core.models import build_model  # noqa: E402
from core.pruning import compute_masks, get_pruner, prune  # noqa: E402


WALL: dict[str, float] = {}


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds per function, one call of each per round (after a warm-up round);
    wall-clock medians go to ``WALL``."""
    for fn in fns.values():
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, t = time.perf_counter(), time.process_time()
            fn()
            cpu[k].append(time.process_time() - t)
            wall[k].append(time.perf_counter() - w)
    WALL.clear()
    WALL.update({k: statistics.median(v) for k, v in wall.items()})
    return {k: statistics.median(v) for k, v in cpu.items()}


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "MISSED"


def bench_scoring(name: str, batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    x = torch.rand(batch, *model.input_shape)
    y = torch.arange(batch) % 10

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    pruners = {n: get_pruner(n) for n in ("snip", "attention-snip", "grasp")}
    fns = {"forward+backward": fwd_bwd}
    fns |= {n: (lambda p=p: p.score(model, x, y)) for n, p in pruners.items()}
    t = interleaved(fns, repeats)
    base = t["forward+backward"]
    print(f"\n{name}, batch {batch}: forward+backward {base * 1e3:.1f} ms CPU "
          f"({WALL['forward+backward'] * 1e3:.0f} ms wall)")
    for n, target in (("snip", 1.5), ("attention-snip", 1.5), ("grasp", 4.0)):
        r = t[n] / base
        print(f"  {n:15s} {t[n] * 1e3:8.1f} ms  {r:5.2f}x  (target <= {target}x: "
              f"{verdict(r, target)}; wall {WALL[n] * 1e3:.0f} ms)")


def bench_masks(repeats: int) -> None:
    torch.manual_seed(0)
    model = build_model("linformer-vit-paper", 38)
    x = torch.rand(4, *model.input_shape)
    scores = get_pruner("snip").score(model, x, torch.arange(4))
    n = sum(s.numel() for s in scores.values())
    t = interleaved({s: (lambda s=s: compute_masks(scores, 0.9, scope=s))
                     for s in ("global", "layer")}, repeats)
    print(f"\ncompute_masks, linformer-vit-paper ({n:,} weights, sparsity 0.9)")
    for s, v in t.items():
        print(f"  scope {s:6s} {v * 1e3:7.1f} ms CPU, {WALL[s] * 1e3:.1f} ms wall  "
              f"(target <= 50 ms: {verdict(max(v, WALL[s]), 0.05)})")


def bench_masked_step(name: str, batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    dense = build_model(name, 10)
    masked = prune(dense, "magnitude", 0.9).model
    x = torch.rand(batch, *dense.input_shape)
    y = torch.arange(batch) % 10
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (dense, masked)}

    def step(m):
        opt = opts[id(m)]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()

    t = interleaved({"dense": lambda: step(dense), "masked": lambda: step(masked)}, repeats)
    r = t["masked"] / t["dense"]
    print(f"\ntraining step, {name}, batch {batch}: dense {t['dense'] * 1e3:.1f} ms, "
          f"masked {t['masked'] * 1e3:.1f} ms CPU  {r:.3f}x  (target <= 1.10x: "
          f"{verdict(r, 1.10)}; wall {WALL['dense'] * 1e3:.0f} / {WALL['masked'] * 1e3:.0f} ms)")


def bench_synflow(repeats: int) -> None:
    torch.manual_seed(0)
    model = build_model("vit-tiny", 10)
    p = get_pruner("synflow", iterations=10)
    t = interleaved({"score": lambda: p.score(model),
                     "prune10": lambda: p.prune_model(model, 0.9)}, max(1, repeats // 3))
    print(f"\nsynflow, vit-tiny: one round {t['score'] * 1e3:.0f} ms CPU; 10-round prune "
          f"{t['prune10']:.2f} s CPU (the default 100 rounds: ~10x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--paper-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {a.repeats} interleaved rounds")
    bench_scoring("vit-tiny", 64, a.repeats)
    bench_scoring("linformer-vit-paper", a.paper_batch, a.repeats)
    bench_masks(a.repeats)
    bench_masked_step("vit-tiny", 64, a.repeats)
    bench_masked_step("linformer-vit-paper", a.paper_batch, a.repeats)
    bench_synflow(a.repeats)


if __name__ == "__main__":
    main()
