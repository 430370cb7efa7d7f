"""core.train: metrics against sklearn, schedule, masks, cancel, NaN, DDP; the train CLI."""
from __future__ import annotations

import dataclasses
import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from _tiny import tiny_data, tiny_model  # noqa: E402

from core.train import (Callback, EpochEvent, StepEvent, TrainConfig,  # noqa: E402
                        autocast_dtype, evaluate, lr_at, macro_f1, train)

ROOT = Path(__file__).resolve().parents[1]
CPU = dict(device="cpu", precision="fp32")  # the same arithmetic on every machine


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- evaluate

class LogitsAsInput(nn.Module):
    """The 'image' is the logits: lets a test choose every prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_evaluate_matches_sklearn_and_hand_computation():
    g = torch.Generator().manual_seed(0)
    C, n = 5, 53
    logits = torch.randn(n, C, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)  # classes 3, 4 never a label
    logits[:, 0] -= 100.0  # class 0 is a label but never predicted: F1 0
    logits[:, 4] -= 100.0  # class 4 neither label nor prediction: left out of the macro mean
    logits[:7, 3] += 100.0  # class 3 predicted, never a label: F1 0
    got = evaluate(LogitsAsInput(), TensorDataset(logits, labels), batch_size=7)

    pred = logits.argmax(1)
    assert 3 in pred and 0 not in pred and 4 not in pred
    assert got["accuracy"] == (pred == labels).sum().item() / n
    assert got["loss"] == pytest.approx(F.cross_entropy(logits.double(), labels).item(), rel=1e-6)
    assert got["macro_f1"] == pytest.approx(
        f1_score(labels.numpy(), pred.numpy(), average="macro", zero_division=0), abs=1e-12)


def test_macro_f1_by_hand():
    # true\pred: class 0: 2 right, 1 as class 1; class 1: 1 right; class 2 absent everywhere
    conf = torch.tensor([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
    f1_0 = 2 * 2 / (2 * 2 + 0 + 1)
    f1_1 = 2 * 1 / (2 * 1 + 1 + 0)
    assert macro_f1(conf).item() == pytest.approx((f1_0 + f1_1) / 2)


def test_evaluate_restores_training_mode_and_rejects_empty():
    model = tiny_model()
    model.train()
    evaluate(model, tiny_data()[1])
    assert model.training
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, TensorDataset(torch.zeros(0, 3, 4, 4), torch.zeros(0, dtype=torch.long)))


# ---------------------------------------------------------------------------- train

def test_train_learns_and_reports_history():
    train_set, val_set = tiny_data()
    model = tiny_model()
    steps, epochs = [], []

    def progress(event):
        (steps if isinstance(event, StepEvent) else epochs).append(event)

    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, **CPU)
    result = train(model, train_set, val_set, cfg, callbacks=(progress,))

    assert result.status == "finished" and result.reason is None
    assert result.steps == 3 * math.ceil(96 / 32) == len(steps)
    assert [e.step for e in steps] == list(range(1, result.steps + 1))
    assert all(e.total_steps == result.steps for e in steps)
    assert [e.epoch for e in epochs] == [1, 2, 3] and all(isinstance(e, EpochEvent) for e in epochs)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert set(result.history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                      "val_f1", "lr", "seconds"}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # the recorded validation metrics are those of an independent evaluation of the final model
    final = evaluate(model, val_set)
    assert result.final["val_acc"] == pytest.approx(final["accuracy"])
    assert result.final["val_loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert result.final["val_f1"] == pytest.approx(final["macro_f1"])
    assert final["accuracy"] >= 0.9
    # epoch train loss = mean of that epoch's step losses weighted by batch size (96 = 3 × 32)
    last = [e.loss for e in steps if e.epoch == 3]
    assert result.history[-1]["train_loss"] == pytest.approx(sum(last) / len(last), rel=1e-5)
    assert steps[-1].running_loss == pytest.approx(result.history[-1]["train_loss"], rel=1e-5)
    assert result.history[-1]["lr"] == pytest.approx(lr_at(result.steps - 1, result.steps,
                                                            cfg.lr, cfg.warmup_frac))


def test_train_is_deterministic_given_the_seed():
    train_set, val_set = tiny_data()
    states = []
    for _ in range(2):
        model = tiny_model(seed=1)
        train(model, train_set, val_set, TrainConfig(epochs=2, batch_size=16, seed=3, **CPU))
        states.append(clone_state(model))
    assert states_equal(*states)
    other = tiny_model(seed=1)
    train(other, train_set, val_set, TrainConfig(epochs=2, batch_size=16, seed=4, **CPU))
    assert not states_equal(states[0], clone_state(other))  # the seed drives the data order


def test_bf16_autocast_trains_and_keeps_float32_weights():
    train_set, val_set = tiny_data()
    model = tiny_model()
    mask = _half_mask(model.fc1.weight)
    result = train(model, train_set, val_set,
                   TrainConfig(epochs=3, batch_size=32, lr=1e-2, device="cpu", precision="bf16"),
                   masks={"fc1.weight": mask})
    assert result.status == "finished" and result.final["val_acc"] >= 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.all(model.fc1.weight[~mask] == 0)
    cpu = torch.device("cpu")
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("auto", cpu) in (torch.bfloat16, None)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


def test_lr_schedule_warmup_then_cosine():
    total, peak, frac = 50, 1e-3, 0.1
    warm = 5
    for s in range(total):
        want = (peak * (s + 1) / warm if s < warm
                else peak * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
        assert lr_at(s, total, peak, frac) == pytest.approx(want, rel=1e-12)
    assert lr_at(warm - 1, total, peak, frac) == pytest.approx(peak)
    assert lr_at(0, total, peak, 0.0) == pytest.approx(peak)  # no warmup


def test_max_steps_caps_the_run_and_records_the_partial_epoch():
    train_set, val_set = tiny_data()
    result = train(tiny_model(), train_set, val_set,
                   TrainConfig(epochs=5, batch_size=16, max_steps=8, **CPU))
    assert result.status == "finished" and result.steps == 8
    # 6 steps per epoch: epoch 1 full, epoch 2 cut at step 8 and still evaluated
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="warmup_frac"):
        TrainConfig(warmup_frac=1.0)
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(grad_clip=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------- masks

def _half_mask(weight: torch.Tensor) -> torch.Tensor:
    return torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) < 0.5


def test_mask_dict_keeps_pruned_weights_at_zero():
    train_set, val_set = tiny_data()
    cfg = TrainConfig(epochs=2, batch_size=16, weight_decay=0.0, **CPU)
    model = tiny_model()
    mask = _half_mask(model.fc1.weight)
    with torch.no_grad():
        model.fc1.weight[~mask] = 0.0
    before = model.fc1.weight.detach().clone()
    train(model, train_set, val_set, cfg, masks={"fc1.weight": mask})
    assert torch.all(model.fc1.weight[~mask] == 0)
    assert not torch.equal(model.fc1.weight[mask], before[mask])  # the kept weights trained

    control = tiny_model()  # without the mask the zeroed weights do move: the test has teeth
    with torch.no_grad():
        control.fc1.weight[~mask] = 0.0
    train(control, train_set, val_set, cfg)
    assert (control.fc1.weight[~mask] != 0).float().mean() > 0.9


def test_mask_dict_is_applied_before_the_first_step_and_checked():
    train_set, val_set = tiny_data()
    model = tiny_model()
    mask = _half_mask(model.fc2.weight)
    train(model, train_set, val_set, TrainConfig(epochs=1, batch_size=32, **CPU),
          masks={"fc2.weight": mask})
    assert torch.all(model.fc2.weight[~mask] == 0)
    with pytest.raises(ValueError, match="does not have"):
        train(model, train_set, val_set, TrainConfig(epochs=1, **CPU),
              masks={"fc3.weight": mask})
    with pytest.raises(ValueError, match="shape"):
        train(model, train_set, val_set, TrainConfig(epochs=1, **CPU),
              masks={"fc1.weight": mask})


class FakeSparsity(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mask * w


def test_parametrized_mask_keeps_pruned_weights_at_zero():
    train_set, val_set = tiny_data()
    model = tiny_model()
    mask = _half_mask(model.fc1.weight)
    parametrize.register_parametrization(model.fc1, "weight", FakeSparsity(mask.float()))
    original = model.fc1.parametrizations.weight.original.detach().clone()
    result = train(model, train_set, val_set, TrainConfig(epochs=2, batch_size=16, **CPU))
    assert result.status == "finished"
    assert torch.all(model.fc1.weight[~mask] == 0)
    assert not torch.equal(model.fc1.parametrizations.weight.original, original)


# ---------------------------------------------------------------------------- cancel, NaN

def test_cancel_is_honoured_within_one_step():
    train_set, val_set = tiny_data()
    cancel = threading.Event()

    class CancelAt(Callback):
        def on_step(self, event: StepEvent) -> None:
            if event.step == 3:
                cancel.set()

    ends = []

    class End(Callback):
        def on_end(self, result) -> None:
            ends.append(result)

    model = tiny_model()
    result = train(model, train_set, val_set, TrainConfig(epochs=3, batch_size=16, **CPU),
                   callbacks=(CancelAt(), End()), cancel=cancel)
    assert result.status == "cancelled" and result.steps == 3 and result.history == []
    assert "step" in result.reason
    assert ends == [result]

    result = train(tiny_model(), train_set, val_set, TrainConfig(epochs=1, **CPU), cancel=cancel)
    assert result.status == "cancelled" and result.steps == 0


class NaNAt(nn.Module):
    """Wraps a model; its ``bad_call``-th training forward makes the loss NaN (or +inf).

    NaN: every logit NaN. inf: class 0's logit -inf, so each class-0 sample costs +inf.
    """

    def __init__(self, inner: nn.Module, bad_call: int, kind: str = "nan") -> None:
        super().__init__()
        self.inner, self.bad_call, self.kind, self.calls = inner, bad_call, kind, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.bad_call:
                if self.kind == "nan":
                    out = out * float("nan")
                else:
                    out = torch.cat([torch.full_like(out[:, :1], -math.inf), out[:, 1:]], 1)
        return out


class Recorder(Callback):
    def __init__(self, model: nn.Module) -> None:
        self.model, self.epoch_states, self.results = model, [], []

    def on_epoch_end(self, event: EpochEvent) -> None:
        self.epoch_states.append(clone_state(self.model))

    def on_end(self, result) -> None:
        self.results.append(result)


@pytest.mark.parametrize("kind, word", [("nan", "NaN"), ("inf", "inf")])
def test_nonfinite_loss_fails_and_restores_the_last_good_epoch(kind, word):
    train_set, val_set = tiny_data()  # 96 / 16 = 6 steps per epoch
    model = NaNAt(tiny_model(), bad_call=6 + 4, kind=kind)
    rec = Recorder(model)
    result = train(model, train_set, val_set, TrainConfig(epochs=3, batch_size=16, **CPU),
                   callbacks=(rec,))
    assert result.status == "failed"
    assert word in result.reason and "step 10" in result.reason and "epoch 2" in result.reason
    assert len(result.history) == 1 and len(rec.epoch_states) == 1
    assert states_equal(clone_state(model), rec.epoch_states[0])  # restored to end of epoch 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert rec.results == [result]


def test_nan_in_first_epoch_restores_initial_weights():
    train_set, val_set = tiny_data()
    model = NaNAt(tiny_model(), bad_call=2)
    initial = clone_state(model)
    result = train(model, train_set, val_set, TrainConfig(epochs=2, batch_size=16, **CPU))
    assert result.status == "failed" and "step 2" in result.reason and result.history == []
    assert states_equal(clone_state(model), initial)


def test_exception_is_reported_to_callbacks_then_raised():
    train_set, val_set = tiny_data()
    rec = Recorder(tiny_model())
    with pytest.raises(RuntimeError):
        train(TinyWrong(), train_set, val_set, TrainConfig(epochs=1, **CPU), callbacks=(rec,))
    assert len(rec.results) == 1 and rec.results[0].status == "failed"
    assert "RuntimeError" in rec.results[0].reason


class TinyWrong(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)  # the images have 48 features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


# ---------------------------------------------------------------------------- distributed

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.torchrun
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", str(ROOT / "tests" / "_ddp_worker.py"), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    initial = torch.load(tmp_path / "initial.pt")
    assert r0["world"] == r1["world"] == 2
    assert r0["status"] == r1["status"] == "finished"
    assert r0["steps"] == r1["steps"] == 2 * math.ceil(50 / 10)  # 100 samples, 2 ranks × 10
    assert states_equal(r0["state"], r1["state"])
    assert not any(torch.equal(r0["state"][k], initial[k]) for k in initial)
    def timeless(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert timeless(r0["history"]) == timeless(r1["history"])  # all-reduced: ranks agree
    # ... and equal to one process evaluating the whole validation set
    model = tiny_model()
    model.load_state_dict(r0["state"])
    full = evaluate(model, tiny_data(n_train=100, n_val=30)[1])
    assert r0["history"][-1]["val_acc"] == pytest.approx(full["accuracy"])
    assert r0["history"][-1]["val_loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert r0["history"][-1]["val_f1"] == pytest.approx(full["macro_f1"])
    assert r0["callback_steps"] == r0["steps"] and r1["callback_steps"] == 0  # rank 0 only


# ---------------------------------------------------------------------------- CLI

@pytest.mark.slow  # a fresh interpreter
def test_cli_unknown_model_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "core", "train", "--model", "no-such-model",
         "--runs-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown model 'no-such-model'" in proc.stderr and "vit-tiny" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs.sqlite").exists()  # nothing recorded for a bad command


def test_cli_unknown_dataset_and_bad_option_exit_2(tmp_path, capsys):
    from core.__main__ import main

    assert main(["train", "--data", "no-such-data", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'no-such-data'" in err and "shapes" in err
    assert main(["train", "--epochs", "0", "--runs-dir", str(tmp_path)]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["train", "--data-opt", "bogus=1", "--runs-dir", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_train_records_the_run(tmp_path, capsys):
    from core.__main__ import main
    from core.models import load_model
    from core.runs import RunStore

    out = tmp_path / "model.safetensors"
    code = main(["train", "--model", "vit-tiny", "--data", "shapes",
                 "--data-opt", "num_train=64", "--data-opt", "num_val=24", "--epochs", "2",
                 "--batch-size", "32", "--max-steps", "3", "--device", "cpu", "--no-progress",
                 "--runs-dir", str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "finished after 3 steps" in printed and "val_acc" in printed
    store = RunStore(tmp_path / "runs")
    runs = store.list_runs()
    assert len(runs) == 1
    run = runs.iloc[0]
    assert (run.model, run.dataset, run.status, run.epochs) == ("vit-tiny", "shapes", "finished", 2)
    assert run.config["max_steps"] == 3 and run.config["image_size"] == [32, 32]
    loaded = load_model(out)
    assert loaded.input_shape == (3, 32, 32)
    assert store.checkpoint_path(run.id).exists()


@pytest.mark.torchrun
def test_cli_under_torchrun_records_one_run(tmp_path):
    from core.runs import RunStore

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", "-m", "core", "train", "--data-opt", "num_train=64",
         "--data-opt", "num_val=24", "--epochs", "1", "--batch-size", "32", "--max-steps", "2",
         "--device", "cpu", "--no-progress", "--runs-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("finished after 2 steps") == 1  # rank 0 prints, rank 1 does not
    runs = RunStore(tmp_path).list_runs()
    assert len(runs) == 1 and runs.iloc[0]["status"] == "finished"
    assert runs.iloc[0]["epochs"] == 1


def test_extra_loss_and_extra_param_groups_match_a_hand_written_loop():
    """train(extra_loss=..., extra_param_groups=...) = AdamW on CE + extra, the extra group at
    its own constant lr and betas, the model's groups on the schedule (what AMAP needs)."""
    from core.train import lr_at

    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 4, 4), torch.randint(0, 3, (16,))
    data = TensorDataset(x, y)

    def make():
        torch.manual_seed(1)
        net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        gate = nn.Parameter(torch.ones(3))
        return net, gate

    net, gate = make()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_frac=0.3, weight_decay=0.1,
                      precision="fp32")
    extra_group = {"params": [gate], "lr": 0.2, "betas": (0.5, 0.999)}
    res = train(net, data, None, cfg, extra_loss=lambda: (gate * net[1].bias).sum() ** 2,
                extra_param_groups=[extra_group])
    assert res.status == "finished" and res.steps == 3
    assert all(math.isnan(r["val_loss"]) for r in res.history)  # no validation set

    ref, ref_gate = make()
    opt = torch.optim.AdamW(
        [{"params": [ref[1].weight], "weight_decay": 0.1},
         {"params": [ref[1].bias], "weight_decay": 0.0},
         {"params": [ref_gate], "lr": 0.2, "betas": (0.5, 0.999), "weight_decay": 0.0}], lr=0.05)
    for step in range(3):
        for g in opt.param_groups[:2]:
            g["lr"] = lr_at(step, 3, 0.05, 0.3)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ref(x), y) + ((ref_gate * ref[1].bias).sum()) ** 2
        loss.backward()
        opt.step()
    torch.testing.assert_close(net[1].weight, ref[1].weight)
    torch.testing.assert_close(gate, ref_gate)


def test_on_step_begin_runs_before_each_step():
    seen = []

    class Begin(Callback):
        def on_step_begin(self, step: int) -> None:
            seen.append(("begin", step))

        def on_step(self, event) -> None:
            seen.append(("step", event.step))

    data = TensorDataset(torch.rand(8, 3, 4, 4), torch.randint(0, 2, (8,)))
    train(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), data, data,
          TrainConfig(epochs=1, batch_size=4, precision="fp32"), [Begin()])
    assert seen == [("begin", 1), ("step", 1), ("begin", 2), ("step", 2)]
