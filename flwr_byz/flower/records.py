"""Flower records and named torch tensors: conversions, a node's persistent state, a server instruction."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from torch import Tensor


def to_tensors(record: ArrayRecord) -> dict[str, Tensor]:
    """Named CPU tensors of ``record``, in its key order."""
    return {key: torch.from_numpy(np.array(arr.numpy(), copy=True)) for key, arr in record.items()}


def to_record(tensors: dict[str, Tensor]) -> ArrayRecord:
    """ArrayRecord holding ``tensors`` (moved to CPU), in their key order."""
    return ArrayRecord({key: Array(t.detach().cpu().numpy()) for key, t in tensors.items()})


def instruction(msg: Message) -> tuple[ArrayRecord, ConfigRecord]:
    """The global model and the config of a server instruction (first record of each kind)."""
    content = msg.content
    if not content.array_records:
        raise ValueError(f"{msg.metadata.message_type} message carries no ArrayRecord (the global model)")
    config = next(iter(content.config_records.values()), ConfigRecord())
    return next(iter(content.array_records.values())), config


def load_state(context_state: RecordDict, key: str) -> dict[str, Tensor] | None:
    """Tensors a node stored under ``key`` in its persistent state, or None."""
    if key not in context_state.array_records:
        return None
    return to_tensors(context_state.array_records[key])


def save_state(context_state: RecordDict, key: str, tensors: dict[str, Tensor]) -> None:
    """Store ``tensors`` under ``key`` in a node's persistent state."""
    context_state[key] = to_record(tensors)
