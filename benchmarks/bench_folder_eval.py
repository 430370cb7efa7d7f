"""Streaming evaluation of an ImageNet-style folder against a plain torch DataLoader loop.

Targets (issue #23, item 4): folder evaluation (``load_dataset("folder", ..., model=...)`` +
``core.data.iterate_batches`` + a forward) at ≥ 0.9× the images/s of a plain ``DataLoader``
over the same files (``Image.open`` + the same ``to_model_input`` transform + the same
forward) in the same run; resident memory flat (≤ +10%) from 1,000 to 10,000 images.

Each size runs in a fresh child process: it generates nothing (the parent wrote the JPEGs:
random 160×120 pictures in ``--classes`` WordNet-id folders), scans the folder (timed apart,
it checks every image), then alternates the two loops ``--rounds`` times (ours first, then
plain, then ours…) and reports the median images/s of each. Memory is the resident set of
the child plus its DataLoader workers (``/proc``: ``VmRSS`` summed, so pages the forked
workers share are counted in each of them, the same way at both sizes), sampled at every
batch of our loop; the peak is printed, and the child's own peak alone.

The model is PruneLens' ``vit-tiny`` at 64×64 (16×16 patches) with 1000 outputs and a
timm-style eval transform (shorter side 73, bicubic, centre crop 64): the forward is a small
part of the cost, so the figures compare the input pipelines.

Run from the repository root:  python benchmarks/bench_folder_eval.py [--sizes 1000 10000]
[--workers 2] [--batch 64] [--rounds 3] [--classes 10]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE = 64


def write_folder(root: Path, n: int, classes: int, seed: int = 0) -> None:
    """``n`` random 160x120 JPEGs (smooth gradients plus noise, ~6 KB each) in ``classes``
    folders named by the first ImageNet-1k WordNet ids."""
    from PIL import Image

    from core.data import imagenet_classes

    rng = np.random.default_rng(seed)
    wnids = [w for w, _ in imagenet_classes()[:classes]]
    yy, xx = np.mgrid[0:120, 0:160]
    for w in wnids:
        (root / w).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = np.stack([xx * rng.uniform(0.5, 1.5), yy * rng.uniform(0.5, 2), xx + yy], -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / wnids[i % classes] / f"{i:06d}.jpg", quality=85)


def tree_rss(pid: int) -> tuple[int, int]:
    """(VmRSS of ``pid``, VmRSS of ``pid`` and all its descendants), bytes."""
    def rss(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    own, total, todo = rss(pid), 0, [pid]
    while todo:
        p = todo.pop()
        total += rss(p)
        todo += children(p)
    return own, total


class PlainFolder:
    """The baseline: a list of (path, label) and ``Image.open`` + the same transform."""

    def __init__(self, root: Path, prep, wnid_to_id: dict[str, int]) -> None:
        self.items = [(str(p), wnid_to_id[p.parent.name]) for p in sorted(root.glob("*/*.jpg"))]
        self.prep = prep

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        from core.data import to_model_input

        path, label = self.items[i]
        with Image.open(path) as im:
            return to_model_input(im, self.prep), label


def child(root: Path, workers: int, batch: int, rounds: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from core import boot
    from core.data import imagenet_classes, iterate_batches, load_dataset
    from core.data.preprocess import Preprocessing, attach_inputs
    from core.models import build_model

    boot.configure()
    torch.manual_seed(0)
    prep = Preprocessing(resize=73, crop=(SIDE, SIDE), interpolation="bicubic",
                         crop_rounding="round", mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225), source="timm-style eval transform")
    model = build_model("vit-tiny", 1000, img_size=SIDE, patch_size=16).eval()
    attach_inputs(model, prep, [n for _, n in imagenet_classes()],
                  [w for w, _ in imagenet_classes()])
    t0 = time.perf_counter()
    _, ours_set = load_dataset("folder", SIDE, root=root, model=model, val_fraction=1.0,
                               max_seconds=3600)
    scan_s = time.perf_counter() - t0
    plain_set = PlainFolder(root, prep, {w: i for i, (w, _) in enumerate(imagenet_classes())})
    assert len(plain_set) == len(ours_set)
    pid = os.getpid()
    peaks = {"own": 0, "tree": 0}

    def ours() -> int:
        n = 0
        for x, y in iterate_batches(ours_set, batch, workers):
            with torch.inference_mode():
                model(x)
            n += len(y)
            own, tree = tree_rss(pid)
            peaks["own"], peaks["tree"] = max(peaks["own"], own), max(peaks["tree"], tree)
        return n

    def plain() -> int:
        n = 0
        loader = DataLoader(plain_set, batch_size=batch, num_workers=workers)
        for x, y in loader:
            with torch.inference_mode():
                model(x)
            n += len(y)
        return n

    rates: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(rounds):
        for name, loop in (("ours", ours), ("plain", plain)):
            t = time.perf_counter()
            n = loop()
            rates[name].append(n / (time.perf_counter() - t))
    return {"n": len(ours_set), "scan_s": scan_s, "ours": statistics.median(rates["ours"]),
            "plain": statistics.median(rates["plain"]), "rounds": rates,
            "peak_own_mb": peaks["own"] / 2**20, "peak_tree_mb": peaks["tree"] / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workers, args.batch, args.rounds)))
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs); workers {args.workers}, batch {args.batch}, "
          f"rounds {args.rounds}, {args.classes} classes, {SIDE}x{SIDE} model input")
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunelens-bench-folder-") as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"n{n}"
            t = time.perf_counter()
            write_folder(root, n, args.classes)
            made = time.perf_counter() - t
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(root), "--workers", str(args.workers),
                 "--batch", str(args.batch), "--rounds", str(args.rounds)],
                capture_output=True, text=True, check=True,
                env={**os.environ, "PYTHONPATH": os.getcwd()})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{n:>6} images (written in {made:.0f} s, scan {r['scan_s']:.1f} s): ours "
                  f"{r['ours']:.0f} img/s, plain DataLoader {r['plain']:.0f} img/s, ratio "
                  f"{r['ours'] / r['plain']:.2f} (target ≥ 0.90); peak RSS {r['peak_own_mb']:.0f} "
                  f"MB main, {r['peak_tree_mb']:.0f} MB with workers; rounds "
                  + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(r["rounds"]["ours"],
                                                                 r["rounds"]["plain"])),
                  flush=True)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"RSS {a['n']} → {b['n']} images: main {b['peak_own_mb'] / a['peak_own_mb'] - 1:+.1%}"
              f", with workers {b['peak_tree_mb'] / a['peak_tree_mb'] - 1:+.1%} (target ≤ +10%)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
