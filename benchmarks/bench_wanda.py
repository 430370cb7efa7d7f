"""Wanda scoring against one forward pass, and what 2:4 buys on a GPU (prints; not a test).

1. ``get_pruner("wanda").score(model, x)`` over a plain ``torch.no_grad()`` forward of the same
   batch in eval mode (issue #25's target: ≤ 1.2×), on vit-tiny and deit-tiny shapes with
   random weights. Interleaved rounds (one of each per round, after a warm-up round), medians
   of CPU time of this process (``time.process_time``: on a shared machine wall time mostly
   measures the neighbours); wall medians printed alongside, with the load average.
2. N:M semi-structured speed: where CUDA with compute capability ≥ 8.0 is present, one
   Linear's 2:4 weight as ``torch.sparse.to_sparse_semi_structured`` against the dense matmul
   (fp16, ``F.linear``, CUDA events); otherwise it says no such device is present (exit 0).
   A CPU has no N:M kernels: masked weights are dense multiplications there, no faster.

    python benchmarks/bench_wanda.py [--repeats 7] [--batch 64] [--deit-batch 16] [--short]
                                     [--threads N]

The process is configured as the CLI and the dashboard configure theirs (``core.boot``):
without glibc keeping freed blocks, each hook's temporary is faulted in afresh.
"""
from __future__ import annotations

import argparse
import os
import statistics

from core import boot

boot.configure()  # as the CLI and the dashboard do, before torch: malloc keeps freed blocks

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from core.models import build_model  # noqa: E402
from core.pruning import compute_masks, get_pruner  # noqa: E402

from bench_pruning import WALL, interleaved  # noqa: E402  (the one interleaved timer)


def bench_scoring(name: str, batch: int, repeats: int, target: float = 1.2) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10).eval()  # random weights: timing only
    x = torch.rand(batch, *model.input_shape)
    wanda = get_pruner("wanda")

    def forward():
        with torch.no_grad():
            model(x)

    t = interleaved({"forward": forward, "wanda": lambda: wanda.score(model, x)}, repeats)
    r = t["wanda"] / t["forward"]
    print(f"{name:10s} batch {batch:3d}: forward {t['forward'] * 1e3:8.1f} ms CPU "
          f"({WALL['forward'] * 1e3:7.1f} wall)  wanda {t['wanda'] * 1e3:8.1f} ms CPU "
          f"({WALL['wanda'] * 1e3:7.1f} wall)  ratio {r:4.2f}x CPU, "
          f"{WALL['wanda'] / WALL['forward']:4.2f}x wall  (target <= {target}x: "
          f"{'ok' if r <= target else 'MISSED'})")


def bench_semi_structured(repeats: int) -> None:
    if not torch.cuda.is_available():
        print("2:4 semi-structured: no CUDA device present; nothing to measure (a CPU runs "
              "N:M masks as dense multiplications, no faster)")
        return
    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        print(f"2:4 semi-structured: {torch.cuda.get_device_name()} has compute capability "
              f"{cap[0]}.{cap[1]} < 8.0: no sparse tensor cores; nothing to measure")
        return
    from torch.sparse import to_sparse_semi_structured

    print(f"2:4 semi-structured on {torch.cuda.get_device_name()} (capability "
          f"{cap[0]}.{cap[1]}), fp16, F.linear(x, W):")
    for tokens, d_in, d_out in ((64 * 197, 768, 3072), (64 * 197, 3072, 768),
                                (8192, 4096, 4096)):
        lin = torch.nn.Linear(d_in, d_out, bias=False).half().cuda()
        mask = compute_masks({"w": lin.weight.detach().abs().float()}, None, pattern="2:4")["w"]
        w = lin.weight.detach() * mask
        sparse = to_sparse_semi_structured(w)
        x = torch.randn(tokens, d_in, dtype=torch.half, device="cuda")
        # F.linear with the semi-structured weight: the path nn.Linear takes (torch's tutorial)
        torch.testing.assert_close(F.linear(x, sparse), F.linear(x, w), rtol=2e-2, atol=2e-1)

        def timed(fn) -> float:
            for _ in range(3):
                fn()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(repeats):
                start.record()
                for _ in range(10):
                    fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 10)
            return statistics.median(times)

        dense = timed(lambda: F.linear(x, w))
        semi = timed(lambda: F.linear(x, sparse))
        print(f"  ({tokens} × {d_in}) · ({d_in} × {d_out}): dense {dense:.3f} ms, 2:4 "
              f"{semi:.3f} ms, speed-up {dense / semi:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64, help="vit-tiny calibration batch")
    ap.add_argument("--deit-batch", type=int, default=16, help="deit-tiny calibration batch")
    ap.add_argument("--short", action="store_true", help="3 rounds, deit-tiny batch 8")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, deit = (3, 8) if args.short else (args.repeats, args.deit_batch)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; medians of {repeats} interleaved rounds")
    bench_scoring("vit-tiny", args.batch, repeats)
    bench_scoring("deit-tiny", deit, repeats)
    bench_semi_structured(repeats)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
