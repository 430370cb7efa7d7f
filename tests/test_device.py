"""Devices and evaluation precision: a device that is not there is one line naming what is;
bf16/fp16 evaluation agrees with float32; nothing in the evaluator assumes the CPU."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from core import study
from core.models import build_model


def test_auto_is_the_environment_then_the_best_device_here(monkeypatch):
    monkeypatch.delenv("PRUNELENS_DEVICE", raising=False)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert study.resolve_device("auto").type in (want, "mps")
    assert study.resolve_device(None) == study.resolve_device("auto")
    monkeypatch.setenv("PRUNELENS_DEVICE", "cpu")
    assert study.resolve_device("auto") == torch.device("cpu")
    assert study.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine "
                    "without CUDA")
@pytest.mark.parametrize("asked,said", [("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"),
                                        ("tpu", "unknown device"), ("xla", "not supported"),
                                        ("banana:0", "unknown device")])
def test_a_device_that_is_not_there_is_one_line(asked, said):
    with pytest.raises(ValueError) as err:
        study.resolve_device(asked)
    msg = str(err.value)
    assert said in msg and "\n" not in msg and asked in msg


def test_mps_refused_where_absent_and_float64_support():
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        with pytest.raises(ValueError, match="MPS"):
            study.resolve_device("mps")
    assert study.supports_float64(torch.device("cpu"))
    assert not study.supports_float64(torch.device("mps"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_evaluation_agrees_with_float32(precision):
    torch.manual_seed(0)
    model = build_model("vit-tiny", num_classes=6, pretrained=True, dataset="shapes").eval()
    from core.data import load_dataset
    _, val = load_dataset("shapes", (32, 32), seed=0)
    sub = torch.utils.data.Subset(val, range(64))
    ref = study.evaluate(model, sub, batch_size=32)
    low = study.evaluate(model, sub, batch_size=32, precision=precision)
    assert abs(low["accuracy"] - ref["accuracy"]) <= 2 / 64  # at most two images flip
    assert low["loss"] == pytest.approx(ref["loss"], rel=0.05)
    assert next(model.parameters()).dtype == torch.float32  # weights untouched


def test_unknown_precision_is_refused():
    model = build_model("vit-tiny", num_classes=2)
    data = TensorDataset(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        study.evaluate(model, data, precision="fp8")


def test_the_evaluator_keeps_tensors_on_the_models_device():
    """On the meta device nothing can be computed, but any tensor the evaluator made on
    another device would raise a device mismatch first: the loop is device-agnostic."""
    model = build_model("vit-tiny", num_classes=3).to("meta")
    x = torch.zeros(4, 3, 32, 32, device="meta")
    y = torch.zeros(4, dtype=torch.long, device="meta")
    try:
        study.eval_counts(model, [(x, y)], torch.device("meta"), num_classes=3)
    except NotImplementedError:  # bincount has no meta kernel: reached after every forward
        pass
