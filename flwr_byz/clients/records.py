"""Reading and writing the records a node exchanges with the server."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from torch import Tensor


def instruction(msg: Message) -> tuple[ArrayRecord, ConfigRecord]:
    """The global model and the config of a server instruction (first record of each kind)."""
    content = msg.content
    if not content.array_records:
        raise ValueError(f"{msg.metadata.message_type} message carries no ArrayRecord (the global model)")
    config = next(iter(content.config_records.values()), ConfigRecord())
    return next(iter(content.array_records.values())), config


def tensor(record: ArrayRecord, key: str) -> Tensor:
    """A writable CPU tensor of ``record[key]``."""
    return torch.from_numpy(np.array(record[key].numpy(), copy=True))


def load_state(context_state: RecordDict, key: str) -> dict[str, Tensor] | None:
    """Tensors a node stored under ``key`` in its persistent state, or None."""
    if key not in context_state.array_records:
        return None
    record = context_state.array_records[key]
    return {name: tensor(record, name) for name in record.keys()}


def save_state(context_state: RecordDict, key: str, tensors: dict[str, Tensor]) -> None:
    """Store ``tensors`` under ``key`` in a node's persistent state."""
    context_state[key] = ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in tensors.items()})
