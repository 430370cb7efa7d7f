"""SynFlow: the sweep's per-sparsity loop against ``SynflowPruner.prune_many``; float64 vs float32.

    python benchmarks/bench_synflow.py                    # ~2-4 min on a loaded 2-core CPU
    python benchmarks/bench_synflow.py --deit-iterations 100   # deit-tiny full schedule (slow)
    python benchmarks/bench_synflow.py --precision        # + float32 vs float64 masks (~5 min)

1. vit-tiny (shipped ``shapes`` checkpoint, 32×32): the 12 sweep sparsities with the paper's
   100 rounds, ``[prune_model(m, s) for s in S]`` against ``prune_many(m, S)``: wall and CPU
   seconds (``time.process_time``, all threads), their ratio, and the mask entries that differ.
2. deit-tiny (``torch.manual_seed(0)``, 224×224, random init): cost of one round (forward +
   backward + scores of the all-ones image) in float64 and float32 at sparsity 0.5, and
   ``prune_many`` of 3 sparsities against the loop, run with ``--deit-iterations`` rounds
   (default 5) and with 1 round; ``fixed + 99 x per-round`` extrapolates to 100 rounds (said
   so in the output).
3. ``--precision``: masks of the batched schedules in float32 against float64 at 50/90/99%
   (vit-tiny and linformer-vit-tiny at 100 rounds; deit-tiny at ``--deit-iterations``).
"""
from __future__ import annotations

import argparse
import time

import torch

from core.models import build_model
from core.pruning import get_pruner

SWEEP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]


def clock(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def differing(a: dict, b: dict) -> int:
    return sum(int((a[k] != b[k]).sum()) for k in a)


def deit():
    torch.manual_seed(0)
    return build_model("deit-tiny", 6)


def pretrained(name: str):
    return build_model(name, 6, pretrained=True, dataset="shapes")


def sweep_vit_tiny() -> None:
    model = pretrained("vit-tiny")
    p = get_pruner("synflow")
    seq, w1, c1 = clock(lambda: [p.prune_model(model, s) for s in SWEEP])
    many, w2, c2 = clock(lambda: p.prune_many(model, SWEEP))
    diff = [differing(a.masks, b.masks) for a, b in zip(many, seq)]
    n = sum(m.numel() for m in seq[0].masks.values())
    print(f"vit-tiny, {len(SWEEP)} sparsities x 100 rounds, {n:,} prunable weights, "
          f"{torch.get_num_threads()} torch threads")
    print(f"  loop of prune_model : wall {w1:7.2f} s   CPU {c1:7.2f} s")
    print(f"  prune_many          : wall {w2:7.2f} s   CPU {c2:7.2f} s")
    print(f"  ratio loop/many     : wall {w1 / w2:5.2f}x    CPU {c1 / c2:5.2f}x")
    print(f"  mask entries differing per sparsity: {diff}")


def round_cost(model, dtype: torch.dtype, repeats: int = 3) -> float:
    """Seconds of one SynFlow round (abs copy at sparsity 0.5's first-round masks)."""
    p = get_pruner("synflow")
    net = p._abs_copy(model).to(dtype)
    params = p.parameters(net)
    shape = model.input_shape
    theta = torch.cat([q.param.detach().reshape(-1) for q in params])[None]
    best = float("inf")
    for _ in range(repeats):
        _, w, _ = clock(lambda: p._batched_round(net, params, shape, theta))
        best = min(best, w)
    return best


def bench_deit(iterations: int) -> None:
    model = deit()
    print(f"deit-tiny (224x224), {torch.get_num_threads()} torch threads")
    f64, f32 = round_cost(model, torch.float64), round_cost(model, torch.float32)
    print(f"  one round, 1 parameter set: float64 {f64:.3f} s, float32 {f32:.3f} s "
          f"(ratio {f64 / f32:.2f}x); 100 rounds at 0.5: ~{100 * f64:.0f} s in float64")
    ss = [0.5, 0.9, 0.99]
    print(f"  3 sparsities {ss}:")
    got = {}
    for label, run in (("loop of prune_model", lambda p: [p.prune_model(model, s) for s in ss]),
                       ("prune_many", lambda p: p.prune_many(model, ss))):
        got[label], w, c = clock(lambda: run(get_pruner("synflow", iterations=iterations)))
        if iterations == 100:
            print(f"  {label:20s}: wall {w:7.2f} s   CPU {c:7.2f} s (100 rounds, measured)")
            continue
        # fixed part (abs copy, deep copies, tables) from a 1-round run; the rest is rounds
        _, w1, c1 = clock(lambda: run(get_pruner("synflow", iterations=1)))
        per_w, per_c = (w - w1) / (iterations - 1), (c - c1) / (iterations - 1)
        print(f"  {label:20s}: {iterations} rounds wall {w:6.2f} s CPU {c:6.2f} s, 1 round "
              f"wall {w1:5.2f} s; per round (all 3) wall {per_w:.3f} s CPU {per_c:.3f} s "
              f"-> 100 rounds ~{w1 + 99 * per_w:.0f} s wall, ~{c1 + 99 * per_c:.0f} s CPU "
              "(extrapolated, not measured)")
    diff = [differing(a.masks, b.masks)
            for a, b in zip(got["prune_many"], got["loop of prune_model"])]
    print(f"  mask entries differing, prune_many vs loop ({iterations} rounds): {diff}")


def precision(deit_iterations: int) -> None:
    ss = [0.5, 0.9, 0.99]
    cases = [("vit-tiny", pretrained("vit-tiny"), 100),
             ("linformer-vit-tiny", pretrained("linformer-vit-tiny"), 100),
             ("deit-tiny", deit(), deit_iterations)]
    print("float32 vs float64 (batched schedules): mask entries differing, float32 scores that "
          "are exactly 0 on weights float64 keeps")
    for name, model, iterations in cases:
        p = get_pruner("synflow", iterations=iterations)
        got = {dt: clock(lambda dt=dt: p._batched_schedules(model, model.input_shape, ss,
                                                             "global", dt))
               for dt in (torch.float64, torch.float32)}
        (r64, w64, _), (r32, w32, _) = got[torch.float64], got[torch.float32]
        n = sum(m.numel() for m in r64[ss[0]][0].values())
        for s in ss:
            (m64, s64), (m32, s32) = r64[s], r32[s]
            zeros = sum(int(((s32[k] == 0) & (s64[k] != 0) & m64[k]).sum()) for k in s64)
            finite = all(bool(torch.isfinite(v).all()) for v in s32.values())
            print(f"  {name:19s} {iterations:3d} rounds, sparsity {s:.2f}: "
                  f"{differing(m64, m32):7,d} of {n:,} differ; zeros {zeros:,}; "
                  f"float32 finite {finite}")
        print(f"  {name:19s} wall float64 {w64:.1f} s, float32 {w32:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deit-iterations", type=int, default=5)
    ap.add_argument("--precision", action="store_true")
    ap.add_argument("--skip-vit", action="store_true")
    ap.add_argument("--skip-deit", action="store_true")
    args = ap.parse_args()
    if not args.skip_vit:
        sweep_vit_tiny()
    if not args.skip_deit:
        bench_deit(args.deit_iterations)
    if args.precision:
        precision(args.deit_iterations)


if __name__ == "__main__":
    main()
