"""Run by test_runs.py: trains a tiny model into a run store until killed.

Usage: ``python tests/_runs_worker.py STORE_ROOT``. Prints ``run <id>`` then ``epoch <k>`` after
each logged epoch (and its checkpoint); the first step of epoch 3 then waits to be killed (it
reads stdin, which the test never writes to), so the kill lands mid-run.
"""
from __future__ import annotations

import sys


import torch  # noqa: E402

from _tiny import tiny_data, tiny_model  # noqa: E402
from core.runs import RunStore, RunStoreCallback  # noqa: E402
from core.train import Callback, TrainConfig, train  # noqa: E402


class Report(Callback):
    def on_step(self, event) -> None:
        if event.epoch == 3:
            sys.stdin.read()

    def on_epoch_end(self, event) -> None:  # after RunStoreCallback: metrics and checkpoint saved
        print(f"epoch {event.epoch}", flush=True)


def main(root: str) -> None:
    torch.set_num_threads(1)
    store = RunStore(root)
    model = tiny_model()
    run_id = store.create_run("tiny", "blobs", None, None, {"epochs": 1000})
    print(f"run {run_id}", flush=True)
    train_set, val_set = tiny_data()
    train(model, train_set, val_set, TrainConfig(epochs=1000, batch_size=16, device="cpu"),
          callbacks=(RunStoreCallback(store, run_id, model), Report()))


if __name__ == "__main__":
    main(sys.argv[1])
