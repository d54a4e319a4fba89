"""Candidate stacks: many attack vectors scored by one batched call of the defended rule.

Candidate ``j``'s stack is ``[g_1, ..., g_h, a_j, ..., a_j]`` (``f`` copies), in the defence's row order; ``k``
candidates make a ``(k, n, d)`` tensor that the rule aggregates in one call. The rules' passes over such a stack
(distances, sorts, clustering) are bound by memory traffic, so the stack is cut into chunks of at most
``max_batch_elems`` entries. On a CPU a chunk that stays in cache wins: at ``n = 100``, ``d = 7,850`` (one thread)
JUMP against FLTrust costs 8.5x its budget of scored candidates x (one aggregation + one loss) with ``2^26``-entry
chunks and 2.0x with ``2^20``; FLAME 2.9x -> 1.2x, CAF 8.1x -> 1.8x (``benchmarks/bench_jump_scaling.py
--max-batch-elems``). A GPU wants few, large calls.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from flwr_byz.attacks.base import Aggregator

CPU_BATCH_ELEMS = 2**20
"""Default cap on one chunk's stacked entries on a CPU (4 MiB in float32)."""
GPU_BATCH_ELEMS = 2**26
"""Default cap elsewhere (CUDA: 256 MiB in float32)."""


def batch_elems(device: torch.device, max_batch_elems: int | None = None) -> int:
    """The cap on one chunk's entries: ``max_batch_elems``, or the device's default when ``None``."""
    if max_batch_elems is not None:
        return max_batch_elems
    return CPU_BATCH_ELEMS if device.type == "cpu" else GPU_BATCH_ELEMS


def check_counts(owner: str, max_batch_elems: int | None, **counts: int) -> None:
    """Reject ``counts`` (``lookahead=...``, ``evals=...``) that are not positive integers, and a
    ``max_batch_elems`` that is neither that nor ``None`` (the device's default), naming ``owner``."""
    if max_batch_elems is not None:
        counts = {**counts, "max_batch_elems": max_batch_elems}
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {key} must be a positive integer, got {value!r}")


def copies_stack(honest: Tensor, vectors: Tensor, f: int, order: Tensor | None) -> Tensor:
    """The ``(k, n, d)`` stacks the defence sees: the ``h`` honest rows, then ``f`` copies of ``vectors[j]``,
    rows permuted by ``order`` (``ctx.order``; ``None``: that order)."""
    (h, d), k = honest.shape, len(vectors)
    stack = torch.cat([honest.expand(k, h, d), vectors.unsqueeze(1).expand(k, f, d)], dim=1)
    return stack if order is None else stack[:, order.to(stack.device)]


def stacks(honest: Tensor, vectors: Tensor, f: int, order: Tensor | None,
           max_batch_elems: int | None = None) -> Iterator[Tensor]:
    """:func:`copies_stack` of ``vectors`` ``(k, d)``, chunk by chunk of at most :func:`batch_elems` entries."""
    n, d = len(honest) + f, honest.shape[1]
    chunk = max(1, batch_elems(honest.device, max_batch_elems) // (n * d))
    for i in range(0, len(vectors), chunk):
        yield copies_stack(honest, vectors[i : i + chunk], f, order)


def aggregate_copies(aggregator: Aggregator, honest: Tensor, vectors: Tensor, f: int, order: Tensor | None,
                     max_batch_elems: int | None = None) -> Tensor:
    """``F(honest, f copies of vectors[j])`` for each row ``j`` of ``vectors`` ``(k, d)``: ``(k, d)``."""
    with torch.no_grad():
        return torch.cat([aggregator(stack) for stack in stacks(honest, vectors, f, order, max_batch_elems)])
