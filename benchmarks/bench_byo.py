"""Bring your own ViT: loading cost of a Hugging Face folder, and onnxruntime vs PyTorch eager.

    python benchmarks/bench_byo.py                 # both parts
    python benchmarks/bench_byo.py --runs 50 --load-runs 9

1. Loading: a DeiT-S-sized ``DeiTForImageClassificationWithTeacher`` (random weights,
   ``save_pretrained``) through ``load_model(folder)`` (config + key conversion + checks +
   build) against reading the same weights' PruneLens safetensors with ``load_file`` and
   ``load_state_dict`` into an already built module of the same architecture. Target ≤ 1.5×.
2. Latency: DeiT-T dense and SNP-shrunk at the paper's ratios (``DeiT_t``), PyTorch eager
   (``torch.inference_mode``) vs onnxruntime (CPU provider, ``save_model(format="onnx")``),
   batch 1, 1 thread for both. Target: onnxruntime's pruned speed-up ≥ PyTorch's.

Medians of interleaved runs (the order alternates run by run), so load from other processes
hits every contender alike.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from core.models import build_model, load_model, save_model  # noqa: E402
from core.pruning import prune  # noqa: E402


def interleaved(fns: list[Callable[[], object]], runs: int, warmup: int) -> list[float]:
    """Median ms of each function, called in alternating order run by run."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(warmup):
        for f in fns:
            f()
    for r in range(runs):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def bench_loading(tmp: Path, runs: int) -> None:
    import transformers
    from safetensors.torch import load_file

    torch.manual_seed(0)
    hf = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
        image_size=224, patch_size=16, num_labels=1000, layer_norm_eps=1e-6)).eval()
    folder = tmp / "deit-s-hf"
    hf.save_pretrained(folder)
    ours = load_model(folder)
    ours_path = save_model(ours, tmp / "deit-s.safetensors")
    target = load_model(ours_path)  # the built module the baseline loads into
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        err = (hf((x - 0.5) / 0.5).logits - ours(x)).abs().max().item()

    def baseline() -> None:
        target.load_state_dict(load_file(ours_path))

    t_hf, t_base, t_ours = interleaved(
        [lambda: load_model(folder), baseline, lambda: load_model(ours_path)], runs, 1)
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"\n1. loading a DeiT-S-sized HF folder ({params:.1f} M parameters, "
          f"max |logit diff| vs transformers {err:.1e}); median of {runs} interleaved runs")
    print(f"   load_model(HF folder)                        {t_hf:7.1f} ms")
    print(f"   load_file + load_state_dict into built module {t_base:7.1f} ms")
    print(f"   load_model(PruneLens .safetensors)            {t_ours:7.1f} ms")
    print(f"   ratio HF folder / baseline: {t_hf / t_base:.2f}x (target <= 1.5x); "
          f"HF folder / PruneLens file (both build the module): {t_hf / t_ours:.2f}x")


def bench_onnx(tmp: Path, runs: int, warmup: int, calibration: int) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    dense = build_model("deit-tiny", 1000).eval()
    images = torch.rand(calibration, 3, 224, 224)
    small = prune(dense, "snp", 0.0, images=images, ratios="DeiT_t").model.eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    x = torch.rand(1, 3, 224, 224)
    fns, sizes = [], {}
    for name, model in (("dense", dense), ("pruned", small)):
        path = save_model(model, tmp / f"deit-t-{name}.onnx", format="onnx")
        sizes[name] = path.stat().st_size / 1e6
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"images": x.numpy()}
        with torch.inference_mode():
            err = abs(sess.run(["logits"], feed)[0] - model(x).numpy()).max()
        print(f"   {name}: ONNX {sizes[name]:.1f} MB, max |onnxruntime - PyTorch| {err:.1e}")

        def eager(model=model) -> None:
            with torch.inference_mode():
                model(x)
        fns += [eager, lambda sess=sess, feed=feed: sess.run(["logits"], feed)]
    t = interleaved(fns, runs, warmup)
    t_pt_dense, t_ort_dense, t_pt_small, t_ort_small = t
    print(f"\n2. DeiT-T, SNP ratios DeiT_t, batch 1, 1 thread, median of {runs} interleaved "
          f"runs after {warmup} warm-up (torch {torch.__version__}, onnxruntime "
          f"{ort.__version__})")
    print(f"   {'':10s} {'dense ms':>9s} {'pruned ms':>10s} {'speed-up':>9s}")
    print(f"   {'PyTorch':10s} {t_pt_dense:9.2f} {t_pt_small:10.2f} "
          f"{t_pt_dense / t_pt_small:8.2f}x")
    print(f"   {'onnxrt':10s} {t_ort_dense:9.2f} {t_ort_small:10.2f} "
          f"{t_ort_dense / t_ort_small:8.2f}x")
    print(f"   onnxruntime over PyTorch eager: dense {t_pt_dense / t_ort_dense:.2f}x, "
          f"pruned {t_pt_small / t_ort_small:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed latency runs")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--load-runs", type=int, default=7, help="timed loads")
    ap.add_argument("--calibration", type=int, default=8, help="random SNP calibration images")
    ap.add_argument("--skip-loading", action="store_true")
    ap.add_argument("--skip-onnx", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        if not args.skip_loading:
            bench_loading(Path(d), args.load_runs)
        if not args.skip_onnx:
            bench_onnx(Path(d), args.runs, args.warmup, args.calibration)


if __name__ == "__main__":
    main()
