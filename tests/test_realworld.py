"""Issue #23 leftovers: ``--device`` / ``--precision`` on every command, the dashboard's device,
labels and preprocessing kept through shrinking and saving, folder datasets read with the
model's labels.

No test assumes a GPU: a CUDA device is asked for only where this machine has none (the
one-line refusal), and "the data follows the model" is checked on the meta device.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from core import study
from core.__main__ import main
from core.models import build_model, save_model
from core.study.evaluation import DEVICE_ENV, model_device

DATA = ["--data", "shapes", "--data-opt", "num_train=40", "--data-opt", "num_val=24"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """vit-tiny shrunk to 8×8 images, 2 blocks of 2 heads, 6 classes (shapes), at its init."""
    torch.manual_seed(0)
    model = build_model("vit-tiny", 6, img_size=8, patch_size=4, embed_dim=16, depth=2,
                        num_heads=2)
    return save_model(model, tmp_path_factory.mktemp("m") / "tiny.safetensors")


def sweep_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--model", str(model), *DATA, "--criteria", "magnitude", "snip",
            "--sparsities", "0", "0.5", "--val", "24", "--calib", "8", "--grid-image", "-1",
            "--no-progress", "--out", str(out), *extra]


# ---------------------------------------------------------------------------- 1. CLI device

@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_device_cpu_runs_sweep_and_grid_end_to_end(model_file, tmp_path):
    assert main(sweep_args(model_file, tmp_path / "s", "--device", "cpu")) == 0
    df = pd.read_csv(tmp_path / "s" / "sweep.csv")
    assert len(df) == 4 and df["accuracy"].notna().all()
    assert main(["grid", "--model", str(model_file), *DATA, "--criteria", "magnitude",
                 "--ratios", "0", "0.5", "--calib", "8", "--no-progress", "--device", "cpu",
                 "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "grid.csv").is_file()


@NO_CUDA
@pytest.mark.parametrize("command", ["sweep", "grid", "train"])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_cuda_without_cuda_is_one_line_exit_2_before_any_model(command, how, model_file,
                                                               tmp_path, monkeypatch, capsys):
    import core.__main__ as cli
    import core.cli_compare as cc

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the device was checked")

    monkeypatch.setattr(cc, "resolve", no_model)
    monkeypatch.setattr(cli, "_preset", no_model)
    monkeypatch.setattr(cli, "_loaded", no_model)
    if how == "env":
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        device = []  # --device auto reads the variable
    else:
        monkeypatch.delenv(DEVICE_ENV, raising=False)
        device = ["--device", "cuda"]
    args = {"sweep": sweep_args(model_file, tmp_path / "s", *device),
            "grid": ["grid", "--model", str(model_file), *DATA, "--out", str(tmp_path / "g"),
                     *device],
            "train": ["train", "--model", str(model_file), *DATA, "--no-progress",
                      "--runs-dir", str(tmp_path / "runs"), *device]}[command]
    assert main(args) == 2
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if "error:" in line]  # (train adds its usage)
    assert len(err) == 1 and "Traceback" not in text, text
    assert "no CUDA GPU" in err[0]


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_bf16_sweep_rows_are_within_tolerance_of_fp32(model_file, tmp_path):
    assert main(sweep_args(model_file, tmp_path / "a", "--device", "cpu")) == 0
    assert main(sweep_args(model_file, tmp_path / "b", "--device", "cpu",
                           "--precision", "bf16")) == 0
    a, b = pd.read_csv(tmp_path / "a" / "sweep.csv"), pd.read_csv(tmp_path / "b" / "sweep.csv")
    assert list(a["criterion"]) == list(b["criterion"])
    assert list(a["sparsity"]) == list(b["sparsity"])
    assert (a["params_kept"] == b["params_kept"]).all()  # the same masks: scoring is float32
    assert (a["accuracy"] - b["accuracy"]).abs().max() <= 2 / 24 + 1e-9  # ≤ 2 of 24 flip
    assert ((a["loss"] - b["loss"]).abs() / a["loss"]).max() < 0.03
    for col in ("cls_cosine", "rollout_cosine"):
        assert (a[col] - b[col]).abs().max() < 0.02
    assert "bf16" in (tmp_path / "b" / "report.html").read_text()


def test_the_sweep_measure_keeps_the_images_where_the_model_is():
    """The validation images follow the model (meta: no data moves, no GPU needed)."""
    from torch.utils.data import TensorDataset

    from core.study.sweeps import Measure

    model = build_model("vit-tiny", 3, img_size=8, patch_size=4, embed_dim=16, depth=1,
                        num_heads=2).to("meta")
    val = TensorDataset(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    m = Measure(model, val, attention=False)
    assert m.x.device == m.y.device == model_device(model) == torch.device("meta")
    with pytest.raises(ValueError, match="precision"):
        Measure(model, val, attention=False, precision="fp8")


# ---------------------------------------------------------------------------- 2. dashboard device

def _captions(at) -> list[str]:
    from test_dashboard import shown

    return [shown(c.value) for c in at.sidebar.caption]


def test_the_sidebar_names_the_device_and_models_live_there(runs_dir, monkeypatch):
    from test_dashboard import make_app, ok

    from dashboard.state import data

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    expected = data.device_label(study.resolve_device("auto"))
    at = make_app(prune_pruners=["magnitude"]).run()
    at.switch_page("pages/rollout.py").run()
    ok(at)
    assert f"Computing on: {expected}" in _captions(at)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert data.server_device_line() == "Computing on: cpu"
    assert data.server_device() == torch.device("cpu")


@NO_CUDA
def test_a_device_the_server_lacks_is_one_readable_line_on_the_page(runs_dir, monkeypatch):
    from test_dashboard import errors, make_app, ok

    monkeypatch.setenv(DEVICE_ENV, "cuda")
    at = make_app(prune_pruners=["magnitude"]).run()
    at.switch_page("pages/rollout.py").run()
    ok(at)  # no exception (traceback) on the page
    msgs = [m for m in errors(at) if "CUDA" in m]
    assert msgs and all("\n" not in m and "Traceback" not in m for m in msgs), errors(at)
    assert f"set {DEVICE_ENV}=cpu" in msgs[0]
    assert any("Computing on: nothing" in c for c in _captions(at))


# ---------------------------------------------------------------------------- 3. labels kept

def _labelled(num_classes: int = 3):
    from core.data.preprocess import Preprocessing, attach_inputs

    torch.manual_seed(0)
    model = build_model("vit-tiny", num_classes, img_size=8, patch_size=4, embed_dim=16,
                        depth=2, num_heads=2)
    prep = Preprocessing(resize=10, crop=(8, 8), interpolation="bicubic", crop_rounding="round",
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         source="preprocessor_config.json (ViTImageProcessor)")
    return attach_inputs(model, prep, tuple(f"thing {i}" for i in range(num_classes)),
                         tuple(f"n0000000{i}" for i in range(num_classes)))


def test_shrink_save_load_keeps_labels_and_preprocessing(tmp_path):
    from core.models import load_model
    from core.pruning.structured import full_plan, shrink

    model = _labelled()
    small = shrink(model, full_plan(model))
    assert (small.labels, small.wnids, small.preprocessing) == (
        model.labels, model.wnids, model.preprocessing)
    back = load_model(save_model(small, tmp_path / "s.safetensors"))
    assert back.labels == model.labels and back.wnids == model.wnids
    assert back.preprocessing == model.preprocessing
    plain = build_model("vit-tiny", 3, img_size=8, patch_size=4, embed_dim=16, depth=2,
                        num_heads=2)  # a preset carries none: none written, none read
    again = load_model(save_model(plain, tmp_path / "p.safetensors"))
    assert getattr(again, "labels", None) is None


@pytest.mark.parametrize("inputs, named", [
    ('{"labels": ["a"], "wnids": null, "preprocessing": null}', "labels"),
    ('{"labels": null, "wnids": [1, 2, 3], "preprocessing": null}', "wnids"),
    ('{"labels": null, "wnids": null, "preprocessing": {"resize": 0}}', "preprocessing"),
    ('{"labels": null, "wnids": null, "preprocessing": {"colour": 1, "resize": 8}}',
     "preprocessing"),
    ('[1, 2]', "prunelens_inputs"),
    ('{"labels": "' + "x" * (5 * 2**20) + '"}', "characters"),
])
def test_bad_inputs_metadata_is_a_one_line_checkpoint_error(tmp_path, inputs, named):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from core.models import CheckpointError, load_model

    path = save_model(_labelled(), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    save_file(load_file(str(path)), str(path), metadata={**meta, "prunelens_inputs": inputs})
    with pytest.raises(CheckpointError, match=named) as e:
        load_model(path)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
