"""Flower records and named arrays: conversions to and from torch tensors, a flat vector put back into a model
without torch, a node's persistent state, a server instruction. Torch is imported only by the functions that
return tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

if TYPE_CHECKING:
    from torch import Tensor


def to_tensors(record: ArrayRecord) -> dict[str, Tensor]:
    """Named CPU tensors of ``record``, in its key order."""
    import torch

    return {key: torch.from_numpy(np.array(arr.numpy(), copy=True)) for key, arr in record.items()}


def to_record(tensors: dict[str, Tensor]) -> ArrayRecord:
    """ArrayRecord holding ``tensors`` (moved to CPU), in their key order."""
    return ArrayRecord({key: Array(t.detach().cpu().numpy()) for key, t in tensors.items()})


def with_flat(model: Mapping[str, np.ndarray], vector: np.ndarray) -> ArrayRecord:
    """``model`` (named numpy arrays) with its floating entries replaced by the flat ``vector (d,)``, as an
    ArrayRecord in ``model``'s key order: :class:`flwr_byz.flat.FlatLayout`'s layout (the floating entries in key
    order, each cast back to its dtype; integer entries kept) on numpy arrays, for a node without torch."""
    sizes = {key: arr.size for key, arr in model.items() if np.issubdtype(arr.dtype, np.floating)}
    if vector.shape != (sum(sizes.values()),):
        raise ValueError(f"flat vector has shape {vector.shape}, the model's floating entries need "
                         f"({sum(sizes.values())},)")
    out, start = {}, 0
    for key, arr in model.items():
        if key in sizes:
            arr = vector[start:start + arr.size].reshape(arr.shape).astype(arr.dtype)
            start += arr.size
        out[key] = Array(arr)
    return ArrayRecord(out)


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
