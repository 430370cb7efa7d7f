"""ImageNet-style folders matched onto a model's labels, streamed through a DataLoader
(``core.data.imagenet``, ``core.data.folder`` with ``model=``, ``core.data.stream``)."""
from __future__ import annotations

import gc
import os
import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import (NoMatchingClassError, imagenet_classes, iterate_batches, load_dataset,
                       match_class_folders, preprocessing_of, to_model_input)
from core.data.preprocess import Preprocessing, attach_inputs
from core.models import build_model

WNIDS = [w for w, _ in imagenet_classes()]
NAMES = [n for _, n in imagenet_classes()]


def imagenet_model(size: int = 32, prep: Preprocessing | None = None) -> torch.nn.Module:
    """vit-tiny with 1000 outputs carrying ImageNet-1k's names and WordNet ids."""
    torch.manual_seed(0)
    model = build_model("vit-tiny", num_classes=1000, img_size=size).eval()
    return attach_inputs(model, prep, NAMES, WNIDS)


def write_folder(root: Path, classes: dict[str, int], size=(40, 30), seed: int = 0) -> Path:
    """``root/<class>/<k>.jpg``: ``classes[name]`` random JPEGs each."""
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.jpg", quality=90)
    return root


def test_wordnet_and_name_folders_map_onto_the_models_ids(tmp_path):
    root = write_folder(tmp_path / "val", {"n01440764": 3, "n01443537": 2, "Golden_Retriever": 2,
                                           "not_a_class": 2})
    model = imagenet_model()
    with pytest.warns(UserWarning, match=r"1 of 4 class folder\(s\) match none of the model's "
                                         r"labels and are left out: 'not_a_class' \(no such"):
        train, val = load_dataset("folder", 32, root=root, model=model, val_fraction=1.0)
    assert train is val and len(val) == 7 and val.classes == NAMES
    golden = NAMES.index("golden retriever")
    assert sorted(val.targets) == [0, 0, 0, 1, 1, golden, golden]
    for path, label in val.samples:  # the folder decides the label
        folder = Path(path).parent.name
        assert label == {"n01440764": 0, "n01443537": 1, "Golden_Retriever": golden}[folder]


def test_matching_rules():
    names = ["tench, Tinca tinca", "crane", "crane", "Golden Retriever", "sea lion"]
    wnids = ["n01440764", "n02012849", "n03126707", "n02099601", "n02077923"]
    matched, unmatched = match_class_folders(
        ["n03126707", "TENCH", " golden  retriever ", "sea_lion", "crane", "n09999999",
         "Tinca tinca", "misc"], names, wnids)
    assert matched == {"n03126707": 2, "TENCH": 0, " golden  retriever ": 3, "sea_lion": 4,
                       "Tinca tinca": 0}
    assert unmatched == {"crane": "ambiguous (2 labels)",
                         "n09999999": "a WordNet id the model does not have",
                         "misc": "no such label"}


def test_a_folder_with_no_matching_class_is_a_one_line_error(tmp_path):
    root = write_folder(tmp_path / "pets", {"cats": 1, "dogs": 1, "zebras_v2": 1})
    with pytest.raises(NoMatchingClassError) as err:
        load_dataset("folder", 32, root=root, model=imagenet_model())
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (f"no class folder of {str(root)!r} matches the model's 1000 labels: found "
                   "'cats', 'dogs', 'zebras_v2' (3 folder(s)); expected WordNet ids such as "
                   "n01440764, n01443537 or label names such as 'tench', 'goldfish', "
                   "'great white shark'")


def test_a_model_with_its_own_labels_and_no_wordnet_ids(tmp_path):
    root = write_folder(tmp_path / "d", {"Healthy": 2, "leaf-rust": 2, "n01440764": 2})
    model = attach_inputs(build_model("vit-tiny", num_classes=3), None,
                          ("healthy", "leaf-rust", "powdery mildew"))
    with pytest.warns(UserWarning, match="'n01440764' \\(a WordNet id; the model's labels have "
                                         "none\\)"):
        train, val = load_dataset("folder", 32, root=root, model=model, val_fraction=0.5)
    assert train.classes == ["healthy", "leaf-rust", "powdery mildew"]
    assert sorted(train.targets + val.targets) == [0, 0, 1, 1]
    # a model without labels keeps the plain folder classes
    plain = load_dataset("folder", 32, root=root, model=build_model("vit-tiny", num_classes=3))
    assert plain[0].classes == ["Healthy", "leaf-rust", "n01440764"]


def test_images_come_with_the_models_own_preprocessing(tmp_path):
    root = write_folder(tmp_path / "v", {"n01440764": 2, "n01443537": 1}, size=(57, 33))
    prep = Preprocessing(resize=36, crop=(32, 32), interpolation="bicubic", mean=(0.5,) * 3,
                         std=(0.5,) * 3, source="test")
    model = imagenet_model(32, prep)
    assert preprocessing_of(model) is prep
    _, val = load_dataset("folder", 32, root=root, model=model, val_fraction=1.0)
    for i, (path, _) in enumerate(val.samples):
        with Image.open(path) as im:
            assert torch.equal(val[i][0], to_model_input(im, prep))
    with pytest.raises(ValueError, match=r"gives \(32, 32\) images, not image_size \(48, 48\)"):
        load_dataset("folder", 48, root=root, model=model)


def test_iterate_batches_workers_progress_and_cancel(tmp_path):
    root = write_folder(tmp_path / "v", {"n01440764": 7, "n01443537": 6})
    _, val = load_dataset("folder", 32, root=root, model=imagenet_model(), val_fraction=1.0)
    seen: list[tuple[float, str]] = []
    one = list(iterate_batches(val, batch_size=4, workers=0))
    two = list(iterate_batches(val, batch_size=4, workers=2,
                               progress=lambda f, t: seen.append((f, t))))
    assert [len(y) for _, y in two] == [4, 4, 4, 1]
    for (xa, ya), (xb, yb) in zip(one, two):
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.cat([y for _, y in two]).tolist() == val.targets
    assert seen[-1] == (1.0, "13 of 13 images") and seen[0][1] == "4 of 13 images"
    # cancelled from the progress callback after the first batch: no more batches
    cancel = threading.Event()
    got = list(iterate_batches(val, batch_size=4, workers=2, cancel=cancel,
                               progress=lambda f, t: cancel.set()))
    assert len(got) == 1 and cancel.is_set()


def test_sweep_and_sensitivity_take_such_a_folder_for_validation(tmp_path):
    from core import study

    root = write_folder(tmp_path / "v", {"n01440764": 4, "n01443537": 4, "n01484850": 4})
    model = imagenet_model()
    train, val = load_dataset("folder", 32, root=root, model=model, val_fraction=0.5)
    df = study.sweep(model, train, val, ["magnitude", "snip"], [0.5], calib=3, val_samples=6,
                     attention=False)
    assert len(df) == 2 and df["accuracy"].between(0, 1).all()
    sens = study.layer_sensitivity(model, train, val, ["magnitude"], ratios=(0.5,), calib=3,
                                   val_samples=6)
    assert len(sens) > 0 and np.isfinite(sens["accuracy_drop"]).all()


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_streaming_two_thousand_images_keeps_memory_flat(tmp_path):
    """2,000 images of 64x64: streamed, the process holds a batch at a time. Kept, their
    float32 tensors alone would be 98 MB; the bounds below are a fraction of that."""
    root = tmp_path / "many"
    rng = np.random.default_rng(0)
    tile = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for c in range(4):
        (root / WNIDS[c]).mkdir(parents=True)
        for k in range(500):
            tile.save(root / WNIDS[c] / f"{k}.png")  # PNG: quick to write and to check
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every folder matches: no warning
        _, val = load_dataset("folder", 64, root=root, model=imagenet_model(64),
                              val_fraction=1.0)
    assert len(val) == 2000
    gc.collect()
    tracemalloc.start()
    checkpoints = []
    count = 0
    try:
        for images, labels in iterate_batches(val, batch_size=50, workers=0):
            count += len(labels)
            if count in (250, 2000):
                gc.collect()
                checkpoints.append((_rss_bytes(), tracemalloc.get_traced_memory()[0]))
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (rss_early, py_early), (rss_late, py_late) = checkpoints
    assert count == 2000
    assert rss_late - rss_early < 20 * 2**20, (rss_early, rss_late)
    assert py_late - py_early < 2 * 2**20 and python_peak < 8 * 2**20


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_cli_sweep_reads_an_imagenet_folder_through_the_models_labels(tmp_path):
    """The issue's end-to-end line: `python -m core sweep --model <saved model> --data folder
    --data-opt root=<ImageNet-style folder> --device cpu` writes its CSV and report; the class
    folders (two WordNet ids, one label name, one that matches nothing) map onto the model's
    1000 outputs, and the dense accuracy equals an evaluation by hand on the same subset."""
    import subprocess
    import sys

    import pandas as pd

    from core import study
    from core.models import load_model, save_model

    model = imagenet_model(32)
    path = save_model(model, tmp_path / "inet.safetensors")
    root = write_folder(tmp_path / "val", {WNIDS[1]: 6, WNIDS[7]: 6, NAMES[9]: 6,
                                           "not-a-class": 3})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "core", "sweep", "--model", str(path), "--data", "folder",
           "--data-opt", f"root={root}", "--data-opt", "val_fraction=1.0", "--device", "cpu",
           "--criteria", "magnitude", "--sparsities", "0", "0.5", "--val", "18", "--calib", "4",
           "--no-attention", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not-a-class" in proc.stderr  # the unmatched folder is named
    df = pd.read_csv(out / "sweep.csv")
    assert len(df) == 2 and (out / "report.html").exists()
    loaded = load_model(path)
    _, val = load_dataset("folder", 32, seed=0, root=root, val_fraction=1.0, model=loaded)
    assert len(val) == 18 and set(int(val[i][1]) for i in range(len(val))) == {1, 7, 9}
    hand = study.evaluate(loaded, study.val_subset(val, 18))
    dense = df[df.sparsity == 0].iloc[0]
    assert dense["accuracy"] == pytest.approx(hand["accuracy"], abs=1e-9)
