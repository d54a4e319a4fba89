"""Conversions between Flower ArrayRecords and named torch tensors (server and client side)."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor


def to_tensors(record: ArrayRecord) -> dict[str, Tensor]:
    """Named CPU tensors of ``record``, in its key order."""
    return {key: torch.from_numpy(np.array(arr.numpy(), copy=True)) for key, arr in record.items()}


def to_record(tensors: dict[str, Tensor]) -> ArrayRecord:
    """ArrayRecord holding ``tensors`` (moved to CPU), in their key order."""
    return ArrayRecord({key: Array(t.detach().cpu().numpy()) for key, t in tensors.items()})
