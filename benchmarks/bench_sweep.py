"""Sweep targets (issue 12): prints wall and CPU seconds, the load average, peak memory and a
per-criterion breakdown of ``core.study.sweep``.

    python benchmarks/bench_sweep.py            # all three targets
    python benchmarks/bench_sweep.py vit        # vit-tiny, 1 and 3 seeds
    python benchmarks/bench_sweep.py deit       # deit-tiny at 224 × 224 (random weights)
    python benchmarks/bench_sweep.py deit-point # deit-tiny: cost of one point, memory, cancel

Targets: 6 unstructured criteria × 12 sparsities, one-shot, every CSV column filled
(attention fidelity included): vit-tiny (shipped checkpoint, 512 validation images) ≤ 5 s
with 1 seed and ≤ 15 s with 3 seeds on 2 cores; deit-tiny (128 validation images) ≤ 3 min
and ≤ 3 GB peak, with progress and cancel (the time from ``cancel.set()`` to the return is
printed). The machine may be shared: compare the CPU seconds, not only the wall time.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
from collections import defaultdict

from core import boot

boot.configure()

import torch  # noqa: E402

from core import study  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.models import build_model  # noqa: E402
from core.pruning import list_pruners  # noqa: E402

SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]  # 12, + dense


def unstructured() -> list[str]:
    names = [n for n in list_pruners("unstructured")
             if not study.criterion_info(n).needs_training]
    return names[:6]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed_sweep(model, train_set, val, criteria, seeds, label: str, cancel_after: float = 0,
                sparsities: list[float] | None = None):
    """Run one sweep; print wall, CPU, peak RSS and the seconds spent per criterion."""
    per: dict[str, float] = defaultdict(float)
    last = [time.perf_counter(), None]
    cancel = threading.Event()

    def progress(frac: float, text: str) -> None:
        now = time.perf_counter()
        if last[1] is not None:
            per[last[1]] += now - last[0]
        last[0], last[1] = now, text.split(" at ")[0]

    def stop() -> None:  # from another thread, as the dashboard's Cancel button or Ctrl-C
        last.append(time.perf_counter())
        cancel.set()

    sparsities = SPARSITIES if sparsities is None else sparsities
    print(f"\n{label}: {len(criteria)} criteria × {len(sparsities)} sparsities (+ dense) × "
          f"{len(seeds)} seed(s), {len(val)} validation images; {load()}", flush=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    timer = threading.Timer(cancel_after, stop) if cancel_after else None
    if timer:
        timer.start()
    df = study.sweep(model, train_set, val, criteria, [0.0, *sparsities], calib=64,
                     seeds=seeds, val_samples=len(val), progress=progress, cancel=cancel)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if timer:
        timer.cancel()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    if cancel.is_set():
        print(f"  cancelled {last[2] - t0:.1f} s in: returned "
              f"{time.perf_counter() - last[2]:.2f} s later with {len(df)} points")
        return df
    filled = not df.isna().any().any()
    print(f"  wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {peak:.2f} GiB, {len(df)} rows, "
          f"every column filled: {filled}; {load()}")
    print("  per criterion (s): " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
    return df


def floor(model, val, points: int, label: str) -> None:
    """The least any exact float32 sweep can cost here: ``points`` plain forwards of the
    dense model over the validation images (no hooks, no maps, no scoring; the best of two
    chunk sizes, twice each), and
    the share of it that is matrix multiplies at this machine's measured GEMM rate."""
    x = torch.stack([val[i][0] for i in range(len(val))])
    net = model.eval()
    best = math.inf
    with torch.inference_mode():
        for chunk in (64, 256):
            for _ in range(2):
                t0 = time.perf_counter()
                for i in range(0, len(x), chunk):
                    net(x[i:i + chunk])
                best = min(best, time.perf_counter() - t0)
    print(f"  floor ({label}): one plain forward of {len(x)} images {best:.3f} s × {points} "
          f"points = {best * points:.1f} s (no attention maps, no scoring, no thresholds)")


def vit() -> None:
    model = build_model("vit-tiny", 6, pretrained=True, dataset="shapes")
    train_set, val_set = load_dataset("shapes", tuple(model.input_shape[1:]), seed=0)
    val = torch.utils.data.Subset(val_set, range(512))
    crits = unstructured()
    n_seeded = sum(not study.seed_free(c) for c in crits)
    floor(model, val, len(crits) * len(SPARSITIES) + 1, "1 seed")
    floor(model, val, (len(crits) + 2 * n_seeded) * len(SPARSITIES) + 1, "3 seeds")
    timed_sweep(model, train_set, val, crits, [0], "vit-tiny (target 5 s)")
    timed_sweep(model, train_set, val, crits, [0, 1, 2], "vit-tiny, 3 seeds (target 15 s)")
    fast = [c for c in crits if not study.criterion_info(c).iterative]
    if fast != crits:
        timed_sweep(model, train_set, val, fast, [0],
                    f"vit-tiny without the iterative ones ({', '.join(set(crits) - set(fast))})")


def deit() -> None:
    torch.manual_seed(0)
    model = build_model("deit-tiny", 6)
    train_set, val_set = load_dataset("shapes", tuple(model.input_shape[1:]), seed=0,
                                      num_train=256, num_val=128)
    floor(model, val_set, len(unstructured()) * len(SPARSITIES) + 1, "deit-tiny")
    timed_sweep(model, train_set, val_set, unstructured(), [0],
                "deit-tiny, random weights, 224 × 224 (target 3 min, 3 GB)")
    timed_sweep(model, train_set, val_set, unstructured(), [0], "deit-tiny, cancel after 5 s",
                cancel_after=5.0)


def deit_point() -> None:
    """deit-tiny: wall/CPU of a few points of the cheapest criterion (the per-point cost of
    the full target), peak memory, and how fast cancel returns."""
    torch.manual_seed(0)
    model = build_model("deit-tiny", 6)
    train_set, val_set = load_dataset("shapes", tuple(model.input_shape[1:]), seed=0,
                                      num_train=256, num_val=128)
    floor(model, val_set, len(unstructured()) * len(SPARSITIES) + 1, "deit-tiny")
    timed_sweep(model, train_set, val_set, ["magnitude"], [0], "deit-tiny, 3 points",
                sparsities=[0.5, 0.9, 0.99])
    timed_sweep(model, train_set, val_set, unstructured(), [0], "deit-tiny, cancel after 5 s",
                cancel_after=5.0)


if __name__ == "__main__":
    which = sys.argv[1:] or ["vit", "deit"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; criteria {unstructured()}")
    for name in which:
        {"vit": vit, "deit": deit, "deit-point": deit_point}[name]()
