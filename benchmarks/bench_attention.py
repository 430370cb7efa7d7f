"""Cost of ``capture_attention`` relative to a plain forward (target ≤ 1.10×).

Run: python benchmarks/bench_attention.py [--default-malloc]
Both are timed in eval mode under no_grad, interleaved, median of many repeats; the ratio is
what matters on a shared machine.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from core.attention import attention_rollout, capture_attention  # noqa: E402
from core.models import build_model  # noqa: E402
from core.boot import keep_freed_tensors_in_heap  # noqa: E402


def median_ratio(model: torch.nn.Module, x: torch.Tensor, repeats: int = 30) -> tuple[float, float, float]:
    model.eval()

    @torch.no_grad()
    def plain() -> None:
        model(x)

    def capture() -> None:
        capture_attention(model, x)

    for _ in range(3):
        plain(), capture()
    t_plain, t_cap = [], []
    for _ in range(repeats):
        for fn, out in ((plain, t_plain), (capture, t_cap)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    p, c = statistics.median(t_plain), statistics.median(t_cap)
    return p, c, c / p


def main() -> None:
    torch.manual_seed(0)
    tuned = "--default-malloc" not in sys.argv and keep_freed_tensors_in_heap()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"malloc {'tuned (core.boot, as the dashboard runs)' if tuned else 'default'}")
    print(f"{'model':22s} {'batch':>5s} {'forward ms':>11s} {'capture ms':>11s} {'ratio':>6s}")
    for name, batch in [("vit-tiny", 1), ("vit-tiny", 8), ("vit-tiny", 64),
                        ("linformer-vit-tiny", 8), ("linformer-vit-tiny", 64), ("deit-tiny", 1),
                        ("deit-tiny", 8), ("linformer-vit-paper", 16)]:
        model = build_model(name, num_classes=10)
        x = torch.rand(batch, *model.input_shape)
        p, c, r = median_ratio(model, x, repeats=20 if "deit" in name else 80)
        print(f"{name:22s} {batch:5d} {p * 1e3:11.2f} {c * 1e3:11.2f} {r:6.3f}")
    model = build_model("vit-tiny", num_classes=10)
    maps = capture_attention(model, torch.rand(64, 3, 32, 32))
    t0 = time.perf_counter()
    for _ in range(20):
        attention_rollout(maps)
    print(f"rollout of 4 blocks, batch 64: {(time.perf_counter() - t0) / 20 * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
