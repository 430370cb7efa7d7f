"""Streaming a dataset from disk in batches: ``DataLoader`` workers, pinned memory on a GPU,
progress, cancellation, memory that does not grow with the dataset.

:func:`iterate_batches` is what an evaluation loop over a folder of 50,000 images wants:
workers decode and preprocess ahead (``prefetch`` batches each), the main process holds the
batches in flight only, and a cancel stops it between two batches with the workers shut down.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


def iterate_batches(dataset: Dataset, batch_size: int = 64, workers: int = 2,
                    device: torch.device | str = "cpu", cancel: threading.Event | None = None,
                    progress: Callable[[float, str], None] | None = None, prefetch: int = 2,
                    ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` batches of ``dataset`` in order, on ``device``.

    Args:
        dataset: any ``core.data`` dataset (``(image, label)`` items of one size).
        batch_size: ``B``; the last batch may be smaller.
        workers: ``DataLoader`` worker processes decoding ahead (0: in this process).
        device: where the batches go; on CUDA the loader pins memory and copies asynchronously.
        cancel: checked before each batch; once set, the iteration stops (no exception: a
            caller tells a cancelled run from a finished one by ``cancel.is_set()``) and the
            workers are shut down.
        progress: ``progress(fraction, text)`` after each batch, ``text`` like
            ``"1,024 of 50,000 images"``.
        prefetch: batches each worker prepares ahead.

    Yields:
        float32 ``(B, 3, H, W)`` and int64 ``(B,)`` on ``device``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0; got {workers!r}")
    device = torch.device(device)
    pin = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=pin, prefetch_factor=prefetch if workers else None,
                        persistent_workers=False)
    total, done = len(dataset), 0
    batches = iter(loader)
    try:
        while cancel is None or not cancel.is_set():
            batch = next(batches, None)
            if batch is None:
                return
            images, labels = batch
            done += len(labels)
            yield (images.to(device, non_blocking=pin),
                   torch.as_tensor(labels, dtype=torch.long).to(device, non_blocking=pin))
            if progress is not None:
                progress(done / max(total, 1), f"{done:,} of {total:,} images")
    finally:
        del batches  # the last reference: the loader's iterator shuts its workers down now
