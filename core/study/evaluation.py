"""The one evaluator: training's per-epoch validation, :func:`evaluate`, the sweeps'
:class:`~core.study.sweeps.Measure` and the dashboard's slice-by-slice counts all go through
:func:`eval_counts`.

A model maps images ``(B, C, H, W)`` to logits ``(B, C)`` (C classes). Counts are the sum of
float64 cross-entropy, the sample count and the ``(C, C)`` confusion matrix (rows true,
columns predicted); counts of disjoint slices add up, and :func:`eval_metrics` turns them into
accuracy, mean loss and macro-F1.
"""
from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import boot
from .cancel import cancellable, current_event


DEVICE_ENV = "PRUNELENS_DEVICE"  # a server's default for "auto" (e.g. cuda:1)
EVAL_PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None = "auto",
                   hint: str = "use --device cpu or auto") -> torch.device:
    """The ``torch.device`` for ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` (or a
    ``torch.device``). ``"auto"`` (and None) is ``$PRUNELENS_DEVICE`` when set, else CUDA, else
    MPS, else the CPU. A device that is not there is a one-line ``ValueError`` naming what is
    (ending in ``hint``, what the caller's user can change)."""
    if device is None or str(device) == "auto":
        device = os.environ.get(DEVICE_ENV) or "auto"
        if device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if _mps_available():
                return torch.device("mps")
            return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {str(device)!r}: use auto, cpu, cuda, cuda:N or mps "
                         f"({_one_line(e)})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has no CUDA GPU "
                             f"(torch {torch.__version__}); {hint}")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {count} "
                             f"CUDA GPU(s): cuda:0 … cuda:{count - 1}")
    elif dev.type == "mps" and not _mps_available():
        raise ValueError(f"device {str(device)!r} asked for, but MPS (Apple GPU) is not "
                         f"available here; {hint}")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"device {str(device)!r} is not supported: use auto, cpu, cuda, cuda:N "
                         "or mps")
    return dev


def device_label(device: torch.device) -> str:
    """``"cpu"``, ``"cuda:0 (NVIDIA H100 80GB HBM3)"``, ``"mps"``: what a page or a log line
    says the work runs on."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return str(dev)
    index = torch.cuda.current_device() if dev.index is None else dev.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def supports_float64(device: torch.device) -> bool:
    """Whether ``device`` computes in float64 (MPS does not: SynFlow then scores on the CPU)."""
    return torch.device(device).type != "mps"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def autocast(precision: str, device: torch.device):
    """The context evaluating in ``precision``: fp32 (nothing), bf16 or fp16 autocast on
    ``device`` (fp16 on a CPU runs where torch's CPU autocast supports it). Weights stay
    float32; logits are cast back to float32 by the evaluator."""
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(EVAL_PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or device.type == "meta":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def macro_f1(confusion: Tensor) -> Tensor:
    """Macro-averaged F1 from a ``(C, C)`` confusion matrix (rows true, columns predicted).

    Per class ``2 TP / (2 TP + FP + FN)``, averaged over the classes that occur as a label or a
    prediction (sklearn's ``f1_score(average="macro")`` with its default ``labels=None``).
    Returns a 0-dim float64 tensor.
    """
    conf = confusion.double()
    tp = conf.diagonal()
    denom = conf.sum(0) + conf.sum(1)  # = 2TP + FP + FN
    present = denom > 0
    if not bool(present.any()):
        return torch.zeros((), dtype=torch.float64)
    return (2 * tp[present] / denom[present]).mean()


@torch.no_grad()
def eval_counts(model: Callable[[Tensor], Tensor], loader: Iterable, device: torch.device,
                num_classes: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sum of CE loss (float64), sample count and ``(C, C)`` confusion over ``loader``'s
    ``(x, y)`` batches, moved to ``device``. ``model`` is a module in the mode the caller
    chose, or any function of ``x`` giving logits (e.g. one that also records attention).
    The confusion is None when ``loader`` is empty and ``num_classes`` not given."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    conf = (torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
            if num_classes else None)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        logits = model(x)
        C = logits.shape[-1]
        if conf is None:
            conf = torch.zeros(C, C, dtype=torch.int64, device=device)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        count += y.numel()
        conf += torch.bincount(y * C + logits.argmax(-1), minlength=C * C).view(C, C)
    return loss_sum, count, conf


def eval_metrics(loss_sum: Tensor, count: Tensor, conf: Tensor) -> dict[str, float]:
    """``{"accuracy", "loss", "macro_f1"}`` of the counts of :func:`eval_counts`."""
    n = int(count)
    return {"accuracy": float(conf.diagonal().sum()) / n,
            "loss": float(loss_sum) / n,
            "macro_f1": float(macro_f1(conf))}


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter (else buffer) lives; the CPU for a model with none.
    Core's functions run where the model is: inputs follow it, results come back on the CPU."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


_model_device = model_device


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256,
             device: str | torch.device | None = None, num_workers: int = 0,
             precision: str = "fp32") -> dict[str, float]:
    """Accuracy, mean cross-entropy and macro-F1 of ``model`` on ``dataset``.

    Args:
        model: maps images ``(B, C, H, W)`` to logits ``(B, num_classes)``; put in eval mode
            for the call, its previous mode restored after.
        dataset: ``(image, int label)`` pairs.
        device: where to run; None → where the model's parameters are (the model is moved
            to ``device`` otherwise; see :func:`resolve_device`).
        precision: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast (:func:`autocast`).

    Returns:
        ``{"accuracy", "loss", "macro_f1"}`` as floats (macro-F1 as sklearn's, see
        :func:`macro_f1`).
    """
    if len(dataset) == 0:
        raise ValueError("evaluate: the dataset is empty")
    dev = _model_device(model) if device is None else resolve_device(device)
    model.to(dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    was_training = model.training
    model.eval()
    try:
        with autocast(precision, dev):
            counts = eval_counts(model, loader, dev, None)
    finally:
        model.train(was_training)
    return eval_metrics(*counts)


def counts_in_threads(net: nn.Module, batches: list, device: torch.device,
                      workers: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`eval_counts` over ``batches`` by ``workers`` threads taking batches in turn,
    each forward on one intra-op thread, the caller's cancel event carried over. Per-batch
    counts are summed in batch order: the same sums as one thread going through them.

    Why: two intra-op threads split every matrix multiply and wait for each other at its end,
    so when another program holds one of two cores (the browser drawing a page) a 2-thread
    forward is much slower than a 1-thread one. Threads that each run whole forwards never
    wait for each other.
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
    """Accuracy, mean loss and macro-F1 from the summed counts of
    :func:`~core.study.points.evaluate_counts` (``(loss sum, count, (C, C) confusion)`` per
    slice, as plain numbers)."""
    if not counts:
        raise ValueError("no evaluation counts to combine")
    loss = sum(c[0] for c in counts)
    n = sum(c[1] for c in counts)
    conf = sum(np.asarray(c[2], dtype=np.int64) for c in counts)
    return eval_metrics(torch.tensor(loss, dtype=torch.float64), torch.tensor(n),
                        torch.from_numpy(conf))
