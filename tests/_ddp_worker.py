"""Run by test_train.py under ``python -m torch.distributed.run --nproc_per_node=2``.

Each rank trains the same tiny model through ``core.train.train`` (which sees WORLD_SIZE=2 and
goes distributed) and saves its final state dict and result to ``OUT/rank<r>.pt``; rank 0 also
saves the initial state dict to ``OUT/initial.pt``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from _tiny import tiny_data, tiny_model  # noqa: E402
from core.train import Callback, TrainConfig, train  # noqa: E402


class CountCalls(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step(self, event) -> None:
        self.steps += 1


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    train_set, val_set = tiny_data(n_train=100, n_val=30)  # 100 / 2 ranks: sampler pads nothing
    model = tiny_model(seed=rank)  # different on purpose: DDP must broadcast rank 0's weights
    if rank == 0:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "initial.pt")
    counter = CountCalls()
    result = train(model, train_set, val_set,
                   TrainConfig(epochs=2, batch_size=20, lr=1e-2, device="cpu"),
                   callbacks=(counter,))
    torch.save({"state": model.state_dict(), "status": result.status, "steps": result.steps,
                "history": result.history, "world": dist.get_world_size(),
                "callback_steps": counter.steps}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
