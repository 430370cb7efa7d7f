"""Evaluation counts of a model on a dataset, in slices and threads, cancellable.

Per sample: cross-entropy of the logits ``(B, C)``, and the ``(C, C)`` confusion (rows true,
columns predicted). Counts of disjoint slices add up; :func:`metrics_from_counts` turns the
sums into accuracy, mean loss and macro-F1.
"""
from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import boot
from ..train import _eval_counts, _metrics_from_counts, evaluate  # noqa: F401
from .cancel import cancellable, current_event

eval_counts = _eval_counts


def counts_in_threads(net: nn.Module, batches: list, device: torch.device,
                      workers: int) -> tuple[Tensor, Tensor, Tensor]:
    """``_eval_counts`` over ``batches`` by ``workers`` threads taking batches in turn, each
    forward on one intra-op thread, the caller's cancel event carried over. Per-batch counts
    are summed in batch order: the same sums as one thread going through them.

    Why: two intra-op threads split every matrix multiply and wait for each other at its end,
    so when another program holds one of two cores (the browser drawing a page) a 2-thread
    forward takes 1.7× as long as a 1-thread one (deit-tiny, 12 images: 0.90 s vs 0.52 s;
    0.25 s on an idle machine). Threads that each run whole forwards never wait for each other.
    """
    out: list[tuple[Tensor, Tensor, Tensor] | None] = [None] * len(batches)
    todo = iter(range(len(batches)))
    lock = threading.Lock()
    failed: list[BaseException] = []
    event = current_event()

    def work() -> None:
        try:
            with (cancellable(event) if event is not None else nullcontext()), \
                    boot.one_thread(), torch.no_grad():
                while not failed:
                    with lock:
                        i = next(todo, None)
                    if i is None:
                        return
                    out[i] = eval_counts(net, batches[i:i + 1], device, None)
        except BaseException as e:  # noqa: BLE001  re-raised in the caller's thread
            failed.append(e)

    threads = [threading.Thread(target=work, name=f"prunelens-eval-{k}", daemon=True)
               for k in range(min(workers, len(batches)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if failed:
        raise failed[0]
    loss_sum, count, conf = out[0]
    for loss, n, c in out[1:]:
        loss_sum, count, conf = loss_sum + loss, count + n, conf + c
    return loss_sum, count, conf


def metrics_from_counts(counts: Sequence[tuple[float, int, np.ndarray]]) -> dict[str, float]:
    """Accuracy, mean loss and macro-F1 from the summed counts of :func:`evaluate_counts`."""
    if not counts:
        raise ValueError("no evaluation counts to combine")
    loss = sum(c[0] for c in counts)
    n = sum(c[1] for c in counts)
    conf = sum(np.asarray(c[2], dtype=np.int64) for c in counts)
    return _metrics_from_counts(torch.tensor(loss, dtype=torch.float64), torch.tensor(n),
                                torch.from_numpy(conf))
