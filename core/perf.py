"""Process-level performance settings for CPU inference of small models.

``keep_freed_tensors_in_heap()``: glibc returns large freed blocks (≥ 128 KiB, a threshold it
raises dynamically) to the OS and faults fresh pages in for the next allocation. A forward that
keeps its attention maps (``capture_attention``) allocates a new block per layer instead of
reusing the freed one, and those page faults made it 1.11–1.20× a plain forward on vit-tiny at
batch 8; with a fixed 64 MiB mmap threshold and a 256 MiB trim threshold it is 1.02×
(``benchmarks/bench_attention.py``). Costs resident memory the process already used once.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_tensors_in_heap(mmap_threshold: int = 64 << 20,
                               trim_threshold: int = 256 << 20) -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse. True if applied (glibc only)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))
