"""Training loop figures (printed, not asserted): overhead of ``train()`` and the default run.

(a) Time per step of ``core.train.train`` against a bare PyTorch loop (zero_grad, forward,
    loss, backward, AdamW step) on vit-tiny + shapes: same initial weights, same batches (the
    same seeded ``DataLoader`` over the same subset), measured interleaved in shuffled order,
    ``--repeats`` times. ``train()`` is timed whole (setup, its end-of-epoch evaluation on a
    16-image validation set and the CPU snapshot included), so its ratio is an upper bound.
    Also timed: ``train()`` with a per-step callback that reads the loss every step.
    Target: ratio <= 1.05.
(b) The default short run: ``python -m core train`` with its defaults (vit-tiny on shapes from
    scratch, ``TrainConfig()``): wall time and final validation accuracy.
    Target: >= 90 % in <= 60 s on 2 CPU cores.

Run from the repository root:  python benchmarks/bench_train.py [--steps 60] [--repeats 7]
[--precision auto|fp32|bf16] [--skip-default] [--skip-overhead]. About 20 s for (a) and 40 s for
(b) on 2 idle cores (AVX512-BF16 CPU); timings on a shared machine are not meaningful.
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import time


import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from core.data import load_dataset  # noqa: E402
from core.models import build_model  # noqa: E402
from core.train import (Callback, StepEvent, TrainConfig, autocast_dtype,  # noqa: E402
                        seed_everything, train)


def bare_loop(model: nn.Module, data: Subset, config: TrainConfig) -> int:
    """The reference: a plain AdamW loop over the same seeded DataLoader, same precision."""
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    criterion = nn.CrossEntropyLoss()
    dtype = autocast_dtype(config.precision, torch.device("cpu"))
    model.train()
    steps = 0
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        steps += 1
    return steps


class ReadLossEveryStep(Callback):
    """What a dashboard progress callback showing the loss would do."""

    def on_step(self, event: StepEvent) -> None:
        event.loss


def overhead(steps: int, repeats: int, precision: str) -> None:
    train_set, val_set = load_dataset("shapes", 32, seed=0)
    config = TrainConfig(epochs=1, device="cpu", precision=precision)
    data = Subset(train_set, range(steps * config.batch_size))
    tiny_val = Subset(val_set, range(16))
    seed_everything(0)
    initial = build_model("vit-tiny", num_classes=len(train_set.classes))

    variants = {
        "bare loop": lambda m: bare_loop(m, data, config),
        "train()": lambda m: train(m, data, tiny_val, config).steps,
        "train() + loss-reading callback": lambda m: train(
            m, data, tiny_val, config, callbacks=(ReadLossEveryStep(),)).steps,
    }
    for fn in variants.values():  # warm-up: allocator, thread pool, first-call costs
        fn(copy.deepcopy(initial))
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            model = copy.deepcopy(initial)
            t0 = time.perf_counter()
            n = variants[name](model)
            times[name].append((time.perf_counter() - t0) / n)
    base, base_min = statistics.median(times["bare loop"]), min(times["bare loop"])
    dtype = autocast_dtype(config.precision, torch.device("cpu"))
    print(f"(a) time per step, vit-tiny + shapes, batch {config.batch_size}, {steps} steps × "
          f"{repeats} interleaved repeats, {torch.get_num_threads()} threads, "
          f"precision {config.precision} → {dtype or torch.float32}")
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        print(f"    {name:34s} median {med * 1e3:7.1f} ms  min {best * 1e3:7.1f} ms  "
              f"ratio to bare (median) {med / base:.3f}  (min) {best / base_min:.3f}")
    paired = [t / b for t, b in zip(times["train()"], times["bare loop"])]
    print(f"    train()/bare per repeat: {', '.join(f'{r:.3f}' for r in paired)}  (target <= 1.05)")


def default_run() -> None:
    t0 = time.perf_counter()
    config = TrainConfig()
    train_set, val_set = load_dataset("shapes", 32, seed=config.seed)
    seed_everything(config.seed)
    model = build_model("vit-tiny", num_classes=len(train_set.classes))
    t1 = time.perf_counter()
    result = train(model, train_set, val_set, config)
    t2 = time.perf_counter()
    f = result.final
    print(f"(b) default run: vit-tiny on shapes from scratch, {config}")
    print(f"    status {result.status}, {result.steps} steps, data + model {t1 - t0:.1f} s, "
          f"train {t2 - t1:.1f} s, total {t2 - t0:.1f} s")
    print(f"    final val_acc {f['val_acc']:.4f}  val_f1 {f['val_f1']:.4f}  "
          f"val_loss {f['val_loss']:.4f}  (target >= 0.90 in <= 60 s)")
    print("    val_acc per epoch: " + ", ".join(f"{h['val_acc']:.3f}" for h in result.history))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="steps per timed loop")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--precision", default="auto", help="precision of both loops in (a)")
    ap.add_argument("--skip-default", action="store_true", help="only (a)")
    ap.add_argument("--skip-overhead", action="store_true", help="only (b)")
    args = ap.parse_args()
    if not args.skip_overhead:
        overhead(args.steps, args.repeats, args.precision)
    if not args.skip_default:
        default_run()


if __name__ == "__main__":
    main()
