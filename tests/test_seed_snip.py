"""Seed 000's experiment end to end on a tiny schedule: both rows, finite numbers, outputs."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from core.experiments.seed_snip import COLUMNS, main


@pytest.mark.slow  # two short trainings end to end
def test_seed_snip_tiny_run(tmp_path, capsys):
    out_dir = tmp_path / "out"
    result = main(["--model", "linformer-vit-tiny", "--image-size", "16", "--num-train", "48",
                   "--num-val", "24", "--epochs", "1", "--batch-size", "16", "--calib-size",
                   "12", "--max-steps", "2", "--device", "cpu", "--out", str(out_dir)])
    printed = capsys.readouterr().out
    assert "| ours | snip |" in printed and "| ours | attention-snip |" in printed
    assert "98.9" in printed  # the paper's row beside ours
    t = result.table
    assert list(t.columns) == COLUMNS
    assert list(t["criterion"]) == ["snip", "attention-snip"]
    for col in ("train_acc", "train_loss", "val_acc", "val_loss", "val_f1", "wall_s"):
        assert all(math.isfinite(v) for v in t[col]), col
    assert (t["status"] == "finished").all() and (t["epochs"] == 1).all()
    n = int(t["prunable"].iloc[0])
    assert (t["kept"] == n - math.floor(0.9 * n)).all()  # 90% sparsity, exactly
    assert ((t["val_acc"] >= 0) & (t["val_acc"] <= 100)).all()
    for name in ("table.csv", "table.md", "history.csv", "curves.png", "config.json"):
        assert (out_dir / name).stat().st_size > 0, name
    back = pd.read_csv(out_dir / "table.csv")
    assert list(back["criterion"]) == ["snip", "attention-snip"]
    assert set(pd.read_csv(out_dir / "history.csv")["criterion"]) == {"snip", "attention-snip"}
