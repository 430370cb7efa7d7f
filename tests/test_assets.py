"""The shipped checkpoints load through build_model(pretrained=True) and are really trained."""
from __future__ import annotations

import json

import pytest

from core.data import load_dataset
from core.models import build_model, pretrained_path
from core.train import evaluate


@pytest.mark.parametrize("model_name", ["vit-tiny", "linformer-vit-tiny"])
@pytest.mark.parametrize("dataset", ["shapes", "digits"])
def test_shipped_checkpoint_accuracy(model_name, dataset):
    _, val = load_dataset(dataset, image_size=32, seed=0)
    model = build_model(model_name, num_classes=len(val.classes), pretrained=True,
                        dataset=dataset)
    metrics = evaluate(model, val)
    assert metrics["accuracy"] >= 0.90, metrics
    manifest = json.loads((pretrained_path(model_name, dataset).parent /
                           "manifest.json").read_text())
    assert manifest[f"{model_name}_{dataset}"]["classes"] == list(val.classes)
    assert metrics["accuracy"] == pytest.approx(
        manifest[f"{model_name}_{dataset}"]["accuracy"], abs=2e-3)


def test_missing_checkpoint_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint for 'deit-tiny'"):
        build_model("deit-tiny", num_classes=6, pretrained=True)
