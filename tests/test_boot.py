"""Process and thread settings (``core.boot``) and the MAC estimate that drives them."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from core import boot
from core.models import approx_macs, build_model, count_macs, get_adapter


def test_small_work_runs_on_one_thread_and_restores_it():
    torch.set_num_threads(2)
    with boot.threads_for(boot.SMALL_WORK_MACS):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2

    # in a worker thread (the dashboard's work), the main thread keeps its count meanwhile
    inside, main_meanwhile = [], []
    entered, checked = threading.Event(), threading.Event()

    def work() -> None:
        with boot.threads_for(0):
            inside.append(torch.get_num_threads())
            entered.set()
            checked.wait(10)
        inside.append(torch.get_num_threads())
    worker = threading.Thread(target=work)
    worker.start()
    entered.wait(10)
    main_meanwhile.append(torch.get_num_threads())
    checked.set()
    worker.join()
    assert inside[0] == 1 and main_meanwhile == [2]
    with boot.threads_for(boot.SMALL_WORK_MACS + 1):  # large work: untouched
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with boot.threads_for(0):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_approx_macs_is_parameters_times_tokens():
    torch.manual_seed(0)
    for name in ("vit-tiny", "linformer-vit-tiny"):
        model = build_model(name, 6)
        tokens = get_adapter(model).num_tokens(model)
        params = sum(p.numel() for p in model.parameters())
        assert approx_macs(model) == params * tokens
        # the linear layers dominate: within 20% of the counted MACs on these models
        assert abs(approx_macs(model) - count_macs(model)) < 0.2 * count_macs(model)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # no family, no shape
    assert approx_macs(net) == 4 * 3 + 3 + 3 * 2 + 2
