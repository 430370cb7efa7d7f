"""Bytes held by a result, for caches bounded by memory."""
from __future__ import annotations

from dataclasses import fields
from typing import Mapping

import numpy as np
import pandas as pd
from torch import Tensor, nn


def nbytes(obj: object) -> int:
    """Bytes of the tensors and arrays in ``obj`` (modules: parameters and buffers; nested
    dicts, lists, tuples and dataclasses followed), for caches bounded by memory."""
    if obj is None:
        return 0
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, nn.Module):
        return sum(nbytes(t) for t in (*obj.parameters(), *obj.buffers()))
    if isinstance(obj, pd.DataFrame):
        return int(obj.memory_usage(deep=False).sum())
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(nbytes(getattr(obj, f.name)) for f in fields(obj))
    return 0
