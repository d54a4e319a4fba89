"""Screening of training replies: a hostile or broken reply is excluded, never aggregated."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message


@dataclass
class Screened:
    """Replies split into the usable ones and the excluded ``(node_id, reason)`` pairs."""

    valid: list[Message]
    excluded: list[tuple[int, str]]


def _problem(reply: Message, reference: ArrayRecord, weight_key: str) -> str | None:
    """Why ``reply`` cannot be aggregated against the global model ``reference`` (None if it can)."""
    if reply.has_error():
        return f"error reply: {reply.error.reason}"
    content = reply.content
    if len(content.array_records) != 1:
        return f"expected one ArrayRecord, got {len(content.array_records)}"
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    arrays = next(iter(content.array_records.values()))
    if set(arrays.keys()) != set(reference.keys()):
        missing = sorted(set(reference.keys()) - set(arrays.keys()))
        extra = sorted(set(arrays.keys()) - set(reference.keys()))
        return f"array keys differ from the global model (missing {missing}, extra {extra})"
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != ref.dtype:
            return f"array {key!r} is {arr.dtype}{list(arr.shape)}, expected {ref.dtype}{list(ref.shape)}"
        try:
            values = arr.numpy()
        except Exception as err:  # malformed bytes: whatever numpy raises
            return f"array {key!r} cannot be decoded ({err})"
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return f"array {key!r} has non-finite values"
    metrics = next(iter(content.metric_records.values()))
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values):
            return f"metric {key!r} is not finite"
    if weight_key not in metrics or isinstance(metrics[weight_key], list) or metrics[weight_key] < 0:
        return f"metric {weight_key!r} missing or not a non-negative number"
    return None


def screen_replies(replies: Iterable[Message], reference: ArrayRecord, weight_key: str) -> Screened:
    """Keep replies whose single ArrayRecord matches ``reference`` (keys, shapes, dtypes) with
    finite values and whose single MetricRecord is finite and holds ``weight_key``.

    Replies that pass but carry a different set of metric keys than the most common one
    are excluded as well, so metric aggregation sees consistent records.
    """
    valid: list[Message] = []
    excluded: list[tuple[int, str]] = []
    for reply in replies:
        reason = _problem(reply, reference, weight_key)
        if reason is None:
            valid.append(reply)
        else:
            excluded.append((reply.metadata.src_node_id, reason))
    if valid:
        keysets = [frozenset(next(iter(r.content.metric_records.values())).keys()) for r in valid]
        common = Counter(keysets).most_common(1)[0][0]
        for reply, keys in zip(list(valid), keysets):
            if keys != common:
                valid.remove(reply)
                excluded.append((reply.metadata.src_node_id, f"metric keys {sorted(keys)} != {sorted(common)}"))
    return Screened(valid, excluded)
