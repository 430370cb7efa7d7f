"""``core.diff.compare_models`` against its floor: two plain forward passes with attention capture.

    python benchmarks/bench_diff.py [--rounds 3] [--batch-size 32]

Per case, model A against A pruned by magnitude at 50% (a masked copy), on the same images
through the same DataLoader: the baseline runs each batch through A then B, each inside
``record_attention`` (the maps a diff needs, and nothing else); ``compare_models`` does that
plus the softmax, rollout rows, per-layer and per-head rows, distances and the evaluator's
counts. The two alternate (baseline, diff, baseline, diff, ...) so that load from other
programs falls on both alike; printed: each wall and CPU time (``process_time``, all threads:
less sensitive to other programs than the wall time), the ratios of the medians, and the load
average before and after.

Cases: vit-tiny (shipped checkpoint on shapes, 32×32) on 1,000 images; deit-tiny (seeded
initialisation, 224×224) on 128 images. Targets (issue #24): ratio ≤ 1.3 for vit-tiny, every
deit-tiny time ≤ 10 s on a 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from core import boot

boot.configure()

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from core.attention import record_attention  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.diff import compare_models  # noqa: E402
from core.models import build_model  # noqa: E402
from core.pruning import prune  # noqa: E402


@torch.no_grad()
def plain(a: torch.nn.Module, b: torch.nn.Module, dataset, batch_size: int) -> None:
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        for m in (a, b):
            with record_attention(m):
                m(x)


def case(name: str, a: torch.nn.Module, dataset, rounds: int, batch_size: int) -> None:
    b = prune(a, "magnitude", 0.5).model.eval()
    load_before = os.getloadavg()
    base, diff, base_cpu, diff_cpu = [], [], [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        plain(a, b, dataset, batch_size)
        base.append(time.perf_counter() - t)
        base_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        df = compare_models(a, b, dataset, batch_size=batch_size)
        diff.append(time.perf_counter() - t)
        diff_cpu.append(time.process_time() - c)
    assert len(df) == len(dataset)
    load_after = os.getloadavg()
    ratio = statistics.median(diff) / statistics.median(base)
    print(f"{name}: {len(dataset)} images, batch {batch_size}, {torch.get_num_threads()} threads")
    cpu = statistics.median(diff_cpu) / statistics.median(base_cpu)
    for what, wall, used in (("two forwards with capture", base, base_cpu),
                             ("compare_models", diff, diff_cpu)):
        print(f"  {what:26} wall {', '.join(f'{s:.2f}' for s in wall)} s; CPU "
              f"{', '.join(f'{s:.2f}' for s in used)} s")
    print(f"  ratio of medians: wall {ratio:.3f}, CPU {cpu:.3f}; mean rollout change "
          f"{df['rollout_change'].mean():.4f}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    print(f"cpu count {os.cpu_count()}, torch {torch.__version__}")
    _, val = load_dataset("shapes", (32, 32), seed=0, num_train=16, num_val=1000)
    vit = build_model("vit-tiny", len(val.classes), pretrained=True, dataset="shapes").eval()
    case("vit-tiny", vit, val, args.rounds, args.batch_size)
    _, val = load_dataset("shapes", (224, 224), seed=0, num_train=16, num_val=128)
    torch.manual_seed(0)
    deit = build_model("deit-tiny", len(val.classes)).eval()
    case("deit-tiny", deit, val, max(2, args.rounds - 1), args.batch_size)


if __name__ == "__main__":
    main()
