"""save_model and load_model refuse what they cannot do in one line naming the problem,
and leave nothing half-written (issue: shared-server, item 9)."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from safetensors.torch import save_file

from core.models import CheckpointError, build_model, load_model, save_model


def tiny():
    torch.manual_seed(0)
    return build_model("vit-tiny", num_classes=3)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("fmt,name", [("prunelens", "m.safetensors"), ("hf", "m"),
                                      ("onnx", "m.onnx")])
def test_nan_weights_are_refused_at_save_and_nothing_is_written(tmp_path, fmt, name):
    model = tiny()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError) as err:
        save_model(model, tmp_path / name, format=fmt)
    assert "head.weight" in one_line(err) and "NaN" in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_a_module_that_is_not_a_prunelens_model_is_named(tmp_path):
    for fmt in ("prunelens", "hf", "onnx"):
        with pytest.raises(CheckpointError, match="Linear is not a PruneLens model"):
            save_model(torch.nn.Linear(2, 2), tmp_path / "x", format=fmt)


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    (tmp_path / "taken").write_text("a file")
    for fmt, name in (("prunelens", "m.safetensors"), ("onnx", "m.onnx"), ("hf", "m")):
        with pytest.raises(CheckpointError) as err:
            save_model(tiny(), tmp_path / "taken" / name, format=fmt)
        assert "taken is a file, not a folder" in one_line(err)


def test_a_full_disk_during_hf_export_leaves_no_folder(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError):
        save_model(tiny(), tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is kept (emptied of nothing of ours)
    with pytest.raises(OSError):
        save_model(tiny(), tmp_path / "mine", format="hf")
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling"])
def test_a_config_json_that_is_no_file_says_what_it_is(tmp_path, kind):
    folder = tmp_path / "model"
    folder.mkdir()
    config = folder / "config.json"
    if kind == "folder":
        config.mkdir()
    elif kind == "fifo":
        os.mkfifo(config)
    else:
        config.symlink_to(tmp_path / "gone.json")
    with pytest.raises(CheckpointError) as err:
        load_model(folder)
    want = {"folder": "a folder", "fifo": "a FIFO", "dangling": "a broken link"}[kind]
    assert f"config.json is {want}, not a file" in one_line(err)


def test_lightning_and_bare_hf_weights_are_told_apart(tmp_path):
    sd = tiny().state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()},
                "pytorch-lightning_version": "2.4.0", "epoch": 3}, tmp_path / "l.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "l.ckpt")
    assert "every key starts with 'model.' (a PyTorch Lightning checkpoint?)" in one_line(err)
    save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="DistributedDataParallel"):
        load_model(tmp_path / "d.safetensors")
    from transformers import ViTConfig, ViTForImageClassification
    hf = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=37,
                                             image_size=32, patch_size=8, num_labels=3))
    save_file(hf.state_dict(), tmp_path / "hf.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "hf.safetensors")
    assert "bare Hugging Face ViT/DeiT weights" in one_line(err)
