"""Sizes a model declares are bounded before anything is allocated, and so are the images made
for it (issue #21, item 1): a 420 KB PruneLens file declaring 2048×2048 inputs (patch 64, width
8) grew the dashboard past 7.7 GB, and ``python -m core sweep --model`` on it asked for 70 GiB
(the shapes dataset generated at the declared size) and ended in a traceback.

Memory is bounded by bytes (tracemalloc, a child's peak resident set), never by the clock.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core.data import calibration_batch, load_dataset
from core.models import CheckpointError, build_model, load_model, save_model

REPO = Path(__file__).resolve().parents[1]


def hostile_file(folder: Path, img: int = 2048, patch: int = 64, dim: int = 8) -> Path:
    """The issue's file: a PruneLens safetensors declaring ``img``×``img`` inputs in
    ``patch``-pixel patches, width ``dim`` (one block of 2 heads, 6 classes), whose tensors fit
    what it declares, so only the declared input size is wrong with it."""
    grid = img // patch
    small = build_model("vit-tiny", 6, img_size=grid * 4, patch_size=4, embed_dim=dim,
                        num_heads=2, depth=1)  # the same token grid and width
    saved = save_model(small, folder / "small.safetensors")
    sd = load_file(str(saved))
    with safe_open(str(saved), "pt") as f:
        meta = f.metadata()
    sd["patch_embed.proj.weight"] = torch.zeros(dim, 3, patch, patch)
    cfg = json.loads(meta["prunelens_config"])
    cfg.update(img_size=[img, img], patch_size=patch)
    path = folder / "hostile.safetensors"
    save_file(sd, str(path), metadata={**meta, "prunelens_config": json.dumps(cfg)})
    return path


def forged(folder: Path, family: str, **changes) -> Path:
    """A tiny file whose metadata declares a preset's architecture with ``changes`` (fields of
    the config; ``block``: fields of every block / layer)."""
    preset = "vit-tiny" if family == "vit" else "linformer-vit-tiny"
    saved = save_model(build_model(preset, 6), folder / f"{preset}.safetensors")
    with safe_open(str(saved), "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["prunelens_config"])
    per_block = changes.pop("block", {})
    key = "blocks" if family == "vit" else "layers"
    cfg[key] = [dict(b, **per_block) for b in cfg[key]]
    cfg.update(changes)
    path = folder / "forged.safetensors"
    save_file({"x": torch.zeros(1)}, str(path),
              metadata={**meta, "prunelens_config": json.dumps(cfg)})
    return path


def one_line(error: BaseException, *parts: str) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < 400, message
    for part in parts:
        assert part in message, (part, message)
    return message


# ---------------------------------------------------------------------------- the issue's file

def test_the_issues_file_is_refused_by_load_model_naming_field_value_and_bound(tmp_path):
    path = hostile_file(tmp_path)
    assert 400_000 < path.stat().st_size < 450_000  # "a 420 KB model file"
    with pytest.raises(CheckpointError) as caught:
        load_model(path)
    one_line(caught.value, "hostile.safetensors", "img_size", "2048", "1024")
    # the bounds are generous: the same file at ViT-L/16's 512 loads, and so do the token grid
    # of ViT-B/8 at 512 (its 12 heads' attention maps) and ImageNet-22k's 21,843 classes
    assert load_model(hostile_file(tmp_path, img=512, patch=16)).config.img_size == (512, 512)
    build_model("deit-base", 21_843, img_size=512, patch_size=8, embed_dim=24, num_heads=12,
                depth=1)


# Started from a small launcher, not from pytest: a process forked from a big parent counts
# the parent's pages in its peak (the kernel keeps the old address space's high-water mark
# across exec), so a long test session would read as the CLI's memory.
LAUNCHER = """
import json, os, resource, subprocess, sys
resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
with open(sys.argv[2], "wb") as e:
    p = subprocess.Popen(sys.argv[3:], stderr=e, stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024], f)
"""


def run_cli(args: list[str], tmp_path: Path, env: dict | None = None
            ) -> tuple[int, str, int]:
    """``python -m core *args`` in a fresh process (address space capped at 4 GB, so a
    regression fails instead of filling the machine) → (exit status, stderr, peak resident
    bytes of that process, from ``wait4`` in a small launcher)."""
    result, err = tmp_path / "cli.json", tmp_path / "cli.err"
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(result), str(err), sys.executable, "-m", "core",
         *args], cwd=REPO, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})})
    timer = threading.Timer(600, proc.kill)  # a hang fails the test instead of the run
    timer.start()
    try:
        proc.wait()
    finally:
        timer.cancel()
    rc, peak = json.loads(result.read_text())
    return rc, err.read_text(), peak


@pytest.mark.slow  # a fresh interpreter
def test_the_cli_sweep_on_the_issues_file_is_one_line_no_traceback(tmp_path):
    path = hostile_file(tmp_path)
    rc, stderr, peak = run_cli(["sweep", "--model", str(path), "--out", str(tmp_path / "out"),
                                "--no-progress"], tmp_path)
    assert rc != 0 and "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "img_size" in lines[0] and "2048" in lines[0] and "1024" in lines[0], lines[0]
    assert peak < 1024 * 2**20, f"{peak / 2**20:.0f} MB"  # interpreter + torch: ~350 MB
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a fresh interpreter
def test_the_cli_refuses_a_dataset_over_the_budget_for_a_legitimate_model(tmp_path):
    """A model within every bound, on a machine whose operator set a small data budget: the
    shapes dataset at its size (7200 images of 64×64, 118 MB) is refused before it is made."""
    model = build_model("vit-tiny", 6, img_size=64, patch_size=16, embed_dim=8, num_heads=2,
                        depth=1)
    path = save_model(model, tmp_path / "m64.safetensors")
    rc, stderr, _ = run_cli(["sweep", "--model", str(path), "--out", str(tmp_path / "out"),
                             "--no-progress", "--criteria", "magnitude", "--sparsities", "0.5",
                             "--val", "8", "--calib", "8", "--no-attention",
                             "--grid-image", "-1"], tmp_path, {"PRUNELENS_DATA_MB": "16"})
    assert rc == 2 and "Traceback" not in stderr, stderr
    (line,) = [ln for ln in stderr.splitlines() if ln.strip()]
    for part in ("shapes dataset", "7200 images of 64x64", "16 MB data budget",
                 "PRUNELENS_DATA_MB", "num_train"):
        assert part in line, (part, line)


def test_the_dashboard_refuses_the_issues_upload_in_one_line(runs_dir, tmp_path, monkeypatch):
    from test_dashboard import errors, make_app, ok

    import dashboard.state.data as data

    real = data.load_dataset

    def guarded(name, image_size, *args, **kwargs):  # a regression fails, never fills memory
        assert max(image_size if isinstance(image_size, tuple) else (image_size,)) <= 1024, (
            f"a dataset was built at {image_size} for a refused model")
        return real(name, image_size, *args, **kwargs)

    monkeypatch.setattr(data, "load_dataset", guarded)
    at = make_app(prune_source="upload", prune_pruners=["magnitude"]).run()
    at.file_uploader(key="prune_upload_file").set_value(
        ("hostile.safetensors", hostile_file(tmp_path).read_bytes(),
         "application/octet-stream")).run()
    ok(at)
    (shown,) = [e for e in errors(at) if e.startswith("Upload rejected")]
    assert "\n" not in shown
    for part in ("hostile.safetensors", "img_size", "2048", "1024"):
        assert part in shown, (part, shown)
    assert "upload_digest" not in at.session_state


# ---------------------------------------------------------------------------- every declared size

FORGED = {  # name → (family, config changes, what the message must name)
    "img_size": ("vit", dict(img_size=[2048, 2048], patch_size=64), ["img_size", "2048", "1024"]),
    "tokens": ("vit", dict(img_size=[1024, 1024], patch_size=8), ["16384 tokens", "4096"]),
    "classes": ("vit", dict(num_classes=40_000), ["num_classes", "40000", "32768"]),
    "heads": ("vit", dict(block=dict(num_heads=300)), ["num_heads", "300", "256"]),
    "attention": ("vit", dict(img_size=[512, 512], patch_size=8, block=dict(num_heads=100)),
                  ["attention maps", "100 heads", "4097", "268435456"]),
    "mlp": ("vit", dict(img_size=[512, 512], patch_size=8, block=dict(mlp_hidden=65_536)),
            ["MLP", "65536", "268435456"]),
    "linformer_img_size": ("linformer-vit", dict(img_size=[2048, 2048], patch_size=64),
                           ["img_size", "2048", "1024"]),
    "linformer_k": ("linformer-vit", dict(k=5000), ["LinformerViTConfig.k", "5000", "4096"]),
    "linformer_heads": ("linformer-vit", dict(block=dict(heads=300)), ["heads", "300", "256"]),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_every_declared_size_is_bounded_by_name_value_and_bound(tmp_path, case):
    family, changes, parts = FORGED[case]
    path = forged(tmp_path, family, **changes)
    with pytest.raises(CheckpointError) as caught:
        load_model(path)
    one_line(caught.value, "forged.safetensors", "prunelens_config", *parts)


HF = {"model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
      "image_size": 32, "patch_size": 8, "num_channels": 3, "num_labels": 2}
TIMM = {"architecture": "vit_tiny_patch16_224", "num_classes": 2,
        "model_args": {"num_heads": 3}, "pretrained_cfg": {"input_size": [3, 224, 224]}}
FOLDERS = {  # name → (config.json, what the message must name)
    "hf_image_size": ({**HF, "image_size": 2048}, ["image_size", "2048", "1024"]),
    "hf_tokens": ({**HF, "image_size": 1024, "patch_size": 8}, ["16384 tokens", "4096"]),
    "hf_labels": ({**HF, "num_labels": 40_000}, ["num_labels", "40000", "32768"]),
    "hf_heads": ({**HF, "hidden_size": 600, "num_attention_heads": 300},
                 ["num_attention_heads", "300", "256"]),
    "hf_attention": ({**HF, "hidden_size": 800, "num_attention_heads": 200, "image_size": 512},
                     ["attention maps", "200 heads", "268435456"]),
    "timm_input_size": ({**TIMM, "pretrained_cfg": {"input_size": [3, 2048, 2048]}},
                        ["pretrained_cfg.input_size", "2048", "1024"]),
    "timm_classes": ({**TIMM, "num_classes": 40_000}, ["num_classes", "40000", "32768"]),
    "timm_heads": ({**TIMM, "model_args": {"num_heads": 300}},
                   ["model_args.num_heads", "300", "256"]),
}


@pytest.mark.parametrize("case", list(FOLDERS))
def test_folder_configs_are_bounded_before_any_weight_is_read(tmp_path, monkeypatch, case):
    import core.models.checkpoint as checkpoint
    import core.models.hf as hf
    import core.models.timm_format as timm_format

    def never(*args, **kwargs):
        raise AssertionError("weights read before the declared sizes were checked")

    for module in (hf, timm_format, checkpoint):
        monkeypatch.setattr(module, "read_weights", never)
    config, parts = FOLDERS[case]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as caught:
        load_model(folder)
    one_line(caught.value, "config.json", *parts)


# ---------------------------------------------------------------------------- the data budget

def test_a_generated_dataset_over_the_budget_is_refused_before_generating(monkeypatch):
    monkeypatch.setenv("PRUNELENS_DATA_MB", "8")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as caught:  # DataBudgetError
            load_dataset("shapes", 256, num_train=100, num_val=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(caught.value).__name__ == "DataBudgetError"
    one_line(caught.value, "120 images of 256x256", "30 MB", "8 MB data budget",
             "PRUNELENS_DATA_MB", "num_train", "32 fit")
    assert peak < 2 * 2**20, f"{peak / 2**20:.1f} MB traced"  # the images would be 30 MB
    train, _ = load_dataset("shapes", 256, num_train=24, num_val=6)  # 30 images: 7.5 MB fit
    assert len(train) == 24


def test_calibration_batches_and_lazy_images_are_bounded_too(monkeypatch):
    monkeypatch.setenv("PRUNELENS_DATA_MB", "8")
    train, _ = load_dataset("digits", 256)  # lazy: one image (0.75 MB) at a time
    with pytest.raises(ValueError) as caught:
        calibration_batch(train, 64)  # 64 × 0.75 MB as float32
    one_line(caught.value, "calibration batch", "64 images of 256x256", "8 MB data budget",
             "10 fit", "fewer calibration images")
    images, _ = calibration_batch(train, 8)
    assert images.shape == (8, 3, 256, 256)
    with pytest.raises(ValueError) as caught:
        load_dataset("digits", 1024)  # one image alone is 12 MB
    one_line(caught.value, "digits dataset", "1 image of 1024x1024", "smaller image size")


def test_the_sweeps_stacked_validation_images_are_bounded(monkeypatch):
    from core.study import Measure

    monkeypatch.setenv("PRUNELENS_DATA_MB", "8")
    _, val = load_dataset("digits", 256)
    model = build_model("vit-tiny", 10, img_size=256, patch_size=32, embed_dim=8, num_heads=2,
                        depth=1)
    with pytest.raises(ValueError) as caught:
        Measure(model, torch.utils.data.Subset(val, range(64)), attention=False)
    one_line(caught.value, "validation images", "64 images", "--val")


@pytest.mark.parametrize("text, mb", [("", 2048), ("64", 64), ("0.5", 0.5), ("abc", 2048),
                                      ("-5", 2048), ("0", 2048), ("inf", 2048), ("nan", 2048)])
def test_the_operator_sets_the_budget_and_nonsense_reads_as_the_default(monkeypatch, text, mb):
    from core.data.common import data_budget_bytes

    monkeypatch.setenv("PRUNELENS_DATA_MB", text)
    assert data_budget_bytes() == int(mb * 2**20)
