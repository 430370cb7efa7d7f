"""PruneLens on a CUDA GPU against a plain torch loop in the same run (issue #23, item 8).

    python benchmarks/bench_gpu.py [--model deit-small] [--batches 64 256] [--images 1000]

Prints, on deit-small (random weights; speed does not depend on the values):

- images/s of evaluation through ``core.study.evaluate`` (fp32 and bf16) and of a plain
  ``model(x).argmax`` loop over the same tensors, at each batch size, and their ratio;
- images/s of each registered unstructured criterion's scoring on one calibration batch;
- peak GPU memory of each;
- the wall time of a sweep of 6 criteria × 12 sparsities on ``--images`` validation images.

Without CUDA it says so and exits 0 (tests never depend on a GPU).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.data import TensorDataset


def timed(fn, repeat: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after one warm-up, synchronised."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_mb(fn) -> float:
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deit-small")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (run it on a machine with an "
              "NVIDIA GPU)")
        return 0

    from core import study
    from core.models import build_model
    from core.pruning import list_pruners

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)} · torch {torch.__version__} · "
          f"model {args.model}")
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=1000).to(dev).eval()
    C, H, W = model.input_shape
    x_all = torch.rand(max(args.batches) * 4, C, H, W)
    y_all = torch.randint(0, 1000, (len(x_all),))
    data = TensorDataset(x_all, y_all)

    print("\nevaluation, images/s (median of 3)")
    print(f"{'batch':>6} {'plain loop':>11} {'study fp32':>11} {'ratio':>6} {'study bf16':>11} "
          f"{'ratio':>6} {'peak MB':>8}")
    for b in args.batches:
        xb = [x_all[i:i + b].to(dev) for i in range(0, len(x_all), b)]

        @torch.no_grad()
        def plain():
            for x in xb:
                model(x).argmax(-1)

        t_plain = timed(plain)
        t32 = timed(lambda: study.evaluate(model, data, batch_size=b))
        t16 = timed(lambda: study.evaluate(model, data, batch_size=b, precision="bf16"))
        mem = peak_mb(lambda: study.evaluate(model, data, batch_size=b))
        n = len(x_all)
        print(f"{b:>6} {n / t_plain:>11.0f} {n / t32:>11.0f} {t_plain / t32:>6.2f} "
              f"{n / t16:>11.0f} {t_plain / t16:>6.2f} {mem:>8.0f}")

    print(f"\nscoring one calibration batch of {args.calib}, images/s and peak MB")
    xc, yc = x_all[:args.calib].to(dev), y_all[:args.calib].to(dev)
    for name in list_pruners():
        info = study.criterion_info(name)
        if info.kind != "unstructured" or info.needs_training:
            continue
        pruner = study.make_pruner(name)
        try:
            t = timed(lambda: pruner.score(model, xc, yc), repeat=1 if info.iterative else 3)
            mem = peak_mb(lambda: pruner.score(model, xc, yc))
        except Exception as e:  # noqa: BLE001  report and go on to the next criterion
            print(f"{name:>16}: failed ({type(e).__name__}: {str(e)[:80]})")
            continue
        print(f"{name:>16}: {args.calib / t:>9.0f} images/s  {mem:>8.0f} MB")

    if not args.no_sweep:
        val = TensorDataset(torch.rand(args.images, C, H, W),
                            torch.randint(0, 1000, (args.images,)))
        train = TensorDataset(x_all[:256], y_all[:256])
        criteria = [n for n in ("magnitude", "random", "snip", "attention-snip", "grasp",
                                "wanda") if n in list_pruners()][:6]
        sparsities = [round(0.05 + 0.08 * i, 2) for i in range(12)]
        t0 = time.perf_counter()
        study.sweep(model, train, val, criteria, sparsities, calib=args.calib, seeds=(0,),
                    val_samples=args.images)
        torch.cuda.synchronize()
        print(f"\nsweep: {len(criteria)} criteria × {len(sparsities)} sparsities on "
              f"{args.images} images: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
