"""Elementwise sorting of a few equally shaped tensors by a comparator network.

Sorting ``n`` vectors coordinate-wise with ``torch.sort`` along a short axis is slow on
CPU and allocates int64 indices; Batcher's odd-even merge network does it with
``O(n log^2 n)`` elementwise ``min``/``max`` over whole rows, and pruning the
comparators that cannot reach the wanted output ranks turns it into a selection network.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import torch
from torch import Tensor


def sort_rows(rows: list[Tensor], ranks: Iterable[int] | None = None) -> list[Tensor]:
    """Sort equally shaped tensors elementwise: ``out[0] <= ... <= out[-1]`` everywhere.

    With ``ranks`` only ``out[r]`` for ``r`` in ``ranks`` are guaranteed (fewer comparators).
    """
    network = merge_network(len(rows)) if ranks is None else selection_network(len(rows), tuple(sorted(ranks)))
    for a, b in network:
        rows[a], rows[b] = torch.minimum(rows[a], rows[b]), torch.maximum(rows[a], rows[b])
    return rows


@cache
def merge_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(a, b)``, ``a < b``, of Batcher's odd-even merge sort of ``n`` wires (any ``n``)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


@cache
def selection_network(n: int, ranks: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The comparators of :func:`merge_network` that can affect the output wires ``ranks``."""
    needed, kept = set(ranks), []
    for a, b in reversed(merge_network(n)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return tuple(reversed(kept))
