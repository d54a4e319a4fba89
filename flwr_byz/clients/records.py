"""Reading and writing the records a node exchanges with the server."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from torch import Tensor

from ..records import to_record, to_tensors


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
