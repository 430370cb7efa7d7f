"""Short supervised runs: AdamW + warmup/cosine, masks kept, NaN-safe, cancellable, distributed.

``train(model, train_set, val_set, TrainConfig(...))`` runs a plain classification loop and
returns a :class:`TrainResult`. Per step it costs what a bare PyTorch loop costs (zero_grad,
forward, loss, backward, step) plus a few tiny tensor ops: the loss is never read back per step
(the non-finite check reads a window of losses every ``CHECK_EVERY`` steps), and per-step
callbacks get the loss lazily (:class:`StepEvent` ``.loss`` reads it only if asked).

Under ``torchrun --nproc_per_node=N`` (env ``WORLD_SIZE > 1``) the same call initialises the
process group (gloo on CPU, NCCL on CUDA), wraps the model in ``DistributedDataParallel``, shards
the data with ``DistributedSampler`` and all-reduces the metrics; callbacks run on rank 0 only.

Validation goes through the evaluator sweeps and the dashboard use
(:func:`core.study.evaluation.eval_counts`), so an epoch's ``val_acc`` is the number a page
shows for the same model and images.
"""
from __future__ import annotations

import gc
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

# the one evaluator (study's); evaluate and macro_f1 stay importable from here for callers
from .study.evaluation import (eval_counts, eval_metrics, evaluate,  # noqa: F401
                               macro_f1, resolve_device)

# Steps between reads of the loss window (non-finite check) and, under DDP, the collective
# stop decision. Reading a loss forces a device sync on CUDA; once per 10 steps is noise.
CHECK_EVERY = 10
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run; hashable, JSON-able through ``dataclasses.asdict``.

    ``batch_size`` is the global batch: under DDP each of the N processes takes
    ``batch_size // N`` (N must divide it). ``lr`` is the peak of a linear warmup over
    ``warmup_frac`` of the steps followed by a cosine decay to 0 (Loshchilov & Hutter 2017).
    Weight decay applies to tensors with ``ndim >= 2`` only (not biases, norms), as in timm.
    ``max_steps`` caps the optimizer steps (the schedule is laid out over the capped count).
    ``precision``: ``"bf16"`` runs forward and loss under ``torch.autocast`` in bfloat16
    (weights, gradients and optimizer state stay float32; evaluation is float32), ``"fp32"``
    does not, ``"auto"`` picks bf16 where the hardware has it natively (CUDA with bf16,
    CPUs with AVX512-BF16 or AMX: vit-tiny steps 1.5× faster on 2 such cores) and fp32
    elsewhere.
    """

    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    eval_batch_size: int = 256
    max_steps: int | None = None
    precision: str = "auto"
    drop_last: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {what}")

        need(_is_int(self.epochs) and self.epochs >= 1,
             f"epochs must be an int >= 1, got {self.epochs!r}")
        need(_is_int(self.batch_size) and self.batch_size >= 1,
             f"batch_size must be an int >= 1, got {self.batch_size!r}")
        need(_is_int(self.eval_batch_size) and self.eval_batch_size >= 1,
             f"eval_batch_size must be an int >= 1, got {self.eval_batch_size!r}")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(0 <= self.warmup_frac < 1, f"warmup_frac must be in [0, 1), got {self.warmup_frac!r}")
        need(0 <= self.label_smoothing < 1,
             f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        need(self.grad_clip is None or self.grad_clip > 0,
             f"grad_clip must be None or > 0, got {self.grad_clip!r}")
        need(self.max_steps is None or (_is_int(self.max_steps) and self.max_steps >= 1),
             f"max_steps must be None or an int >= 1, got {self.max_steps!r}")
        need(_is_int(self.seed) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        need(_is_int(self.num_workers) and self.num_workers >= 0,
             f"num_workers must be an int >= 0, got {self.num_workers!r}")
        need(self.precision in PRECISIONS,
             f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict, ignoring keys that are not fields (e.g. a stored run config)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class StepEvent:
    """After optimizer step ``step`` (1-based) of ``total_steps``, in ``epoch`` (1-based).

    ``loss`` / ``accuracy`` are this batch's; ``running_loss`` / ``running_accuracy`` average the
    epoch so far (this process's shard under DDP). Each is read from the device only when asked.
    """

    step: int
    total_steps: int
    epoch: int
    _loss: Tensor = field(repr=False)
    _correct: Tensor = field(repr=False)
    _count: int = field(repr=False)
    _loss_sum: Tensor = field(repr=False)
    _correct_sum: Tensor = field(repr=False)
    _seen: int = field(repr=False)

    @property
    def loss(self) -> float:
        return float(self._loss)

    @property
    def accuracy(self) -> float:
        return float(self._correct) / self._count

    @property
    def running_loss(self) -> float:
        return float(self._loss_sum) / self._seen

    @property
    def running_accuracy(self) -> float:
        return float(self._correct_sum) / self._seen


@dataclass(frozen=True)
class EpochEvent:
    """End of a good epoch: ``metrics`` is the history row (see :class:`TrainResult`)."""

    epoch: int
    epochs: int
    step: int
    total_steps: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    ``history`` has one dict per finished epoch: ``epoch, train_loss, train_acc, val_loss,
    val_acc, val_f1, lr`` (the last step's) and ``seconds`` (train + eval wall time).
    ``reason`` says why a run did not finish; ``steps`` counts optimizer steps taken.
    """

    status: str
    history: list[dict[str, float]]
    reason: str | None
    steps: int
    seconds: float

    @property
    def final(self) -> dict[str, float] | None:
        """The last history row, or None when no epoch finished."""
        return self.history[-1] if self.history else None


class Callback:
    """Hooks called by :func:`train` on rank 0. Override any; the defaults do nothing.

    A plain callable passed in ``callbacks`` is called with every :class:`StepEvent` and
    :class:`EpochEvent` instead.
    """

    def on_step_begin(self, step: int) -> None:
        """Before optimizer step ``step`` (1-based) takes its batch: e.g. to switch a phase or
        refresh gates the next forward uses (AMAP)."""

    def on_step(self, event: StepEvent) -> None:
        pass

    def on_epoch_end(self, event: EpochEvent) -> None:
        pass

    def on_end(self, result: TrainResult) -> None:
        pass


class TqdmProgress(Callback):
    """A tqdm bar over the optimizer steps (stderr); shows the running loss and val accuracy."""

    def __init__(self, every: int = CHECK_EVERY) -> None:
        self.every = every
        self._bar = None

    def on_step(self, event: StepEvent) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=event.total_steps, unit="step", dynamic_ncols=True)
        self._bar.update(1)
        if event.step % self.every == 0:  # reading the loss syncs CUDA: not every step
            self._bar.set_postfix(epoch=event.epoch, loss=f"{event.running_loss:.4f}",
                                  refresh=False)

    def on_epoch_end(self, event: EpochEvent) -> None:
        m = event.metrics
        if self._bar is not None:
            self._bar.write(f"epoch {event.epoch}/{event.epochs}: train loss {m['train_loss']:.4f} "
                            f"acc {m['train_acc']:.3f} | val loss {m['val_loss']:.4f} "
                            f"acc {m['val_acc']:.3f} f1 {m['val_f1']:.3f} | {m['seconds']:.1f}s")

    def on_end(self, result: TrainResult) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------------------- helpers

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in this run: the process group's size, else env ``WORLD_SIZE`` (torchrun)."""
    return dist.get_world_size() if _group_ready() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank: the process group's, else env ``RANK``, else 0."""
    return dist.get_rank() if _group_ready() else int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0: the one process that logs, saves and prints."""
    return rank() == 0


def init_distributed(device: torch.device) -> tuple[torch.device, int, int]:
    """Join the torchrun process group if ``WORLD_SIZE > 1``: ``(device, rank, world_size)``.

    gloo on CPU, NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). An existing group
    is used as it is; without one and with ``WORLD_SIZE <= 1``, ``(device, 0, 1)``.
    """
    if world_size() <= 1:
        return device, 0, 1
    if device.type == "cuda":
        local = os.environ.get("LOCAL_RANK")
        index = int(local) if local is not None else rank() % torch.cuda.device_count()
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if not _group_ready():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), dist.get_world_size()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The ``torch.autocast`` dtype for ``precision`` on ``device`` (None: plain float32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        cpu = torch.cpu  # private probes; absent or failing → assume no native bf16
        native = any(bool(getattr(cpu, probe, lambda: False)())
                     for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    else:
        native = False
    if precision == "bf16" or native:
        return torch.bfloat16
    return None


def lr_at(step: int, total_steps: int, peak: float, warmup_frac: float) -> float:
    """Learning rate for 0-based ``step``: linear warmup to ``peak``, then cosine to 0.

    Warmup lasts ``round(warmup_frac * total_steps)`` steps; step ``s`` of it uses
    ``peak * (s + 1) / warmup``. After it, ``peak * (1 + cos(pi * t)) / 2`` with
    ``t = (s - warmup) / (total_steps - warmup)``.
    """
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# ---------------------------------------------------------------------------- training

def _resolve_masks(model: nn.Module, masks: Mapping[str, Tensor] | None,
                   device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
    """Parameters and float 0/1 masks to multiply them by, matched by parameter name."""
    if not masks:
        return [], []
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"masks name parameters the model does not have: {unknown[:5]}"
                         f"{' …' if len(unknown) > 5 else ''}")
    ps, ms = [], []
    for name, mask in masks.items():
        p = params[name]
        if tuple(mask.shape) != tuple(p.shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, "
                             f"parameter has {tuple(p.shape)}")
        ps.append(p)
        ms.append(mask.to(device=device, dtype=p.dtype))
    return ps, ms


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def split_callbacks(callbacks: Sequence[Callback | Callable]) -> tuple[list, list, list]:
    """``(on_step, on_epoch, on_end)``: the bound hooks of each kind, for loops other than
    :func:`train` (AMAP's) to call; hooks left at the base class's no-op are dropped."""
    on_step, on_epoch, on_end = [], [], []
    for cb in callbacks:
        if isinstance(cb, Callback):
            kind = type(cb)
            if kind.on_step is not Callback.on_step:
                on_step.append(cb.on_step)
            if kind.on_epoch_end is not Callback.on_epoch_end:
                on_epoch.append(cb.on_epoch_end)
            if kind.on_end is not Callback.on_end:
                on_end.append(cb.on_end)
        elif callable(cb):
            on_step.append(cb)
            on_epoch.append(cb)
        else:
            raise TypeError(f"callbacks must be Callback instances or callables, got {cb!r}")
    return on_step, on_epoch, on_end


def train(model: nn.Module, train_set: Dataset, val_set: Dataset | None,
          config: TrainConfig = TrainConfig(), callbacks: Sequence[Callback | Callable] = (),
          cancel: threading.Event | None = None,
          masks: Mapping[str, Tensor] | None = None,
          extra_loss: Callable[[], Tensor] | None = None,
          extra_param_groups: Sequence[Mapping[str, Any]] = ()) -> TrainResult:
    """Train ``model`` in place on ``train_set``, evaluating on ``val_set`` after each epoch.

    Args:
        model: images ``(B, C, H, W)`` → logits ``(B, num_classes)``; moved to the device.
            Masks registered with ``torch.nn.utils.parametrize`` stay enforced by construction.
        train_set, val_set: ``(image (C, H, W) float, int label)`` pairs.
        config: hyperparameters; ``config.seed`` seeds python/numpy/torch and the data order.
        callbacks: :class:`Callback` objects or callables (see there); called on rank 0 only.
        cancel: when set, the run stops before the next step: status ``"cancelled"``, weights
            as they are. (Under DDP it is polled every ``CHECK_EVERY`` steps, collectively.)
        masks: ``{parameter name (as in model.named_parameters()): bool tensor}``; weights
            where the mask is False are zeroed before the first step and after every step.
        val_set: None skips the per-epoch evaluation (the history's ``val_*`` are NaN).
        extra_loss: called after each forward; its scalar is added to the cross-entropy
            before the backward (e.g. AMAP's budget penalty). Events and the non-finite
            check report the cross-entropy alone.
        extra_param_groups: further AdamW parameter groups (``{"params": [...], "lr": ...,
            "betas": ..., "weight_decay": ...}``; weight decay defaults to 0) trained at their
            own constant ``lr``, outside the warmup + cosine schedule (e.g. AMAP's indicator).

    Returns:
        :class:`TrainResult`. A non-finite training or validation loss stops the run with
        status ``"failed"``, a reason naming the step, and the weights restored to the end of
        the last good epoch (the initial ones if none). Any exception is reported to the
        callbacks as ``"failed"`` (Ctrl-C as ``"cancelled"``) and re-raised. The model is
        left in eval mode.
    """
    start = time.perf_counter()
    on_step, on_epoch, on_end = split_callbacks(callbacks if is_main_process() else ())
    on_step_begin = [cb.on_step_begin for cb in callbacks if isinstance(cb, Callback)
                     and type(cb).on_step_begin is not Callback.on_step_begin]
    step = 0
    history: list[dict[str, float]] = []
    ended = False
    net = model  # the DistributedDataParallel wrapper under torchrun

    def finish(status: str, reason: str | None) -> TrainResult:
        nonlocal ended
        ended = True
        model.eval()
        result = TrainResult(status, history, reason, step, time.perf_counter() - start)
        for fn in on_end:
            fn(result)
        return result

    def restored(epoch: int) -> str:
        return (f"weights restored to the end of epoch {epoch - 1}" if epoch > 1
                else "weights restored to their initial values")

    try:
        device, rank_, world = init_distributed(resolve_device(config.device))
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                             f"{world} processes")
        if len(train_set) == 0 or (val_set is not None and len(val_set) == 0):
            raise ValueError("train: the training and validation sets must not be empty")
        seed_everything(config.seed)
        model.to(device)
        mask_params, mask_values = _resolve_masks(model, masks, device)
        if world > 1:
            kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
            net = nn.parallel.DistributedDataParallel(model, **kwargs)
        generator = torch.Generator().manual_seed(config.seed)
        sampler = (DistributedSampler(train_set, num_replicas=world, rank=rank_, shuffle=True,
                                      seed=config.seed) if world > 1 else None)
        loader = DataLoader(train_set, batch_size=config.batch_size // world,
                            shuffle=sampler is None, sampler=sampler, generator=generator,
                            num_workers=config.num_workers, pin_memory=device.type == "cuda",
                            persistent_workers=config.num_workers > 0,
                            drop_last=config.drop_last and len(train_set) > config.batch_size)
        val_loader = None if val_set is None else DataLoader(
            Subset(val_set, range(rank_, len(val_set), world)) if world > 1 else val_set,
            batch_size=config.eval_batch_size, shuffle=False, num_workers=config.num_workers,
            pin_memory=device.type == "cuda")
        total = len(loader) * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        optimizer = torch.optim.AdamW(
            _param_groups(model, config.weight_decay)
            + [{"weight_decay": 0.0, **g, "scheduled": False} for g in extra_param_groups],
            lr=config.lr)
        scheduled = [g for g in optimizer.param_groups if g.get("scheduled", True)]
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        clip = config.grad_clip
        amp_dtype = autocast_dtype(config.precision, device)
        amp = amp_dtype is not None
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if mask_params:
            with torch.no_grad():
                torch._foreach_mul_(mask_params, mask_values)
        good_state = _cpu_state(model)
        poll_cancel = cancel is not None and world == 1

        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            zero = torch.zeros((), device=device)
            loss_sum, correct_sum, seen = zero, zero.long(), 0
            window: list[Tensor] = []  # losses since the last check
            window_start = step + 1
            lr = config.lr
            stop: tuple[str, str] | None = None
            for x, y in loader:
                if poll_cancel and cancel.is_set():
                    stop = ("cancelled", f"cancelled before step {step + 1}")
                    break
                for fn in on_step_begin:
                    fn(step + 1)
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                lr = lr_at(step, total, config.lr, config.warmup_frac)
                for g in scheduled:
                    g["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                    logits = net(x)
                    loss = criterion(logits, y)
                (loss if extra_loss is None else loss + extra_loss()).backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(params, clip, foreach=True)
                optimizer.step()
                if mask_params:
                    with torch.no_grad():
                        torch._foreach_mul_(mask_params, mask_values)
                step += 1
                n = y.shape[0]
                batch_loss = loss.detach()
                batch_correct = (logits.detach().argmax(-1) == y).sum()
                loss_sum = loss_sum + batch_loss * n  # out of place: events keep their values
                correct_sum = correct_sum + batch_correct
                seen += n
                window.append(batch_loss)
                if on_step:
                    event = StepEvent(step, total, epoch, batch_loss, batch_correct, n,
                                      loss_sum, correct_sum, seen)
                    for fn in on_step:
                        fn(event)
                last = step >= total
                if step % CHECK_EVERY == 0 or last:
                    stop = _check(window, window_start, epoch, cancel, world, device)
                    window, window_start = [], step + 1
                    if stop is not None or last:
                        break
            if stop is None and window:  # the epoch's tail since the last check
                stop = _check(window, window_start, epoch, cancel, world, device)
            elif stop is not None and stop[0] == "cancelled" and world == 1 and window:
                # a cancel skips the tail check; a NaN in it must not pass as a good state
                bad = _check(window, window_start, epoch, None, 1, device)
                stop = bad or stop
            if stop is not None:
                status, reason = stop
                if status == "failed":
                    model.load_state_dict(good_state)
                    reason += "; " + restored(epoch)
                return finish(status, reason)

            totals = torch.stack([loss_sum.double(), correct_sum.double(),
                                  torch.tensor(float(seen), dtype=torch.float64, device=device)])
            if world > 1:
                dist.all_reduce(totals)
            model.eval()
            if val_loader is None:
                val = {"loss": math.nan, "accuracy": math.nan, "macro_f1": math.nan}
            else:
                counts = eval_counts(model, val_loader, device)
                if world > 1:
                    counts = _all_reduce_counts(counts, model, device)
                val = eval_metrics(*counts)
            if val_loader is not None and not math.isfinite(val["loss"]):
                model.load_state_dict(good_state)
                return finish("failed", f"validation loss is {val['loss']} after epoch {epoch} "
                              f"(step {step}); {restored(epoch)}")
            train_loss, train_correct, train_seen = totals.tolist()
            row = {"epoch": epoch, "train_loss": train_loss / train_seen,
                   "train_acc": train_correct / train_seen, "val_loss": val["loss"],
                   "val_acc": val["accuracy"], "val_f1": val["macro_f1"], "lr": lr,
                   "seconds": time.perf_counter() - epoch_start}
            history.append(row)
            good_state = _cpu_state(model)
            event = EpochEvent(epoch, config.epochs, step, total, row)
            for fn in on_epoch:
                fn(event)
            if step >= total:
                break
        return finish("finished", None)
    except BaseException as exc:
        if not ended:  # an on_end hook's own error is not reported to the hooks again
            cancelled = isinstance(exc, KeyboardInterrupt)
            finish("cancelled" if cancelled else "failed",
                   "interrupted (KeyboardInterrupt)" if cancelled
                   else f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if net is not model:
            # DDP sits in reference cycles; collected only at exit, after the process group is
            # gone, its reducer aborts the process ("terminate called without an active
            # exception", about 1 run in 5 with gloo). Free it while the group lives.
            net = None
            gc.collect()


def _check(window: list[Tensor], first_step: int, epoch: int, cancel: threading.Event | None,
           world: int, device: torch.device) -> tuple[str, str] | None:
    """Read the loss window (one sync); under DDP agree on stopping across all ranks.

    Returns ``("failed", reason)`` for a non-finite loss, ``("cancelled", reason)`` when the
    cancel event is set (on any rank under DDP, where this is the only place it is polled), or
    None.
    """
    losses = torch.stack(window) if window else torch.zeros(0, device=device)
    finite = torch.isfinite(losses)
    bad_local = math.inf
    kind = "non-finite"
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0, 0])
        bad_local = first_step + i
        kind = "NaN" if bool(torch.isnan(losses[i])) else str(float(losses[i]))
    bad, cancelled = bad_local, bool(cancel is not None and cancel.is_set())
    if world > 1:
        flags = torch.tensor([-float(cancelled), bad_local], dtype=torch.float64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        cancelled, bad = flags[0].item() < 0, flags[1].item()
        if bad != bad_local:
            kind = "non-finite"
    if math.isfinite(bad):
        return "failed", f"training loss is {kind} at step {int(bad)} (epoch {epoch})"
    if cancelled:
        return "cancelled", f"cancelled at step {first_step + len(window) - 1}"
    return None


def _all_reduce_counts(counts: tuple[Tensor, Tensor, Tensor | None], model: nn.Module,
                       device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Sum the evaluation counts of every rank (each evaluated its own shard of val)."""
    loss_sum, count, conf = counts
    if conf is None:  # this rank's shard was empty: learn C from a dummy forward
        C = model(torch.zeros(1, *_input_shape(model), device=device)).shape[-1]
        conf = torch.zeros(C, C, dtype=torch.int64, device=device)
    for t in (loss_sum, count, conf):
        dist.all_reduce(t)
    return loss_sum, count, conf


def _input_shape(model: nn.Module) -> tuple[int, ...]:
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("a rank got no validation samples and the model has no input_shape")
    return tuple(shape)
