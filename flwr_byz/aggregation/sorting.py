"""Order statistics of a few equally shaped tensors, elementwise, by a comparator network.

Sorting ``n`` vectors coordinate-wise with ``torch.sort`` along a short axis is slow on
CPU and allocates int64 indices; Batcher's odd-even merge network does it with
``O(n log^2 n)`` elementwise ``min``/``max`` over whole rows, and pruning the
comparators that cannot reach the wanted output ranks turns it into a selection network.
On large CPU tensors the network is compiled (``torch.compile``) into one fused loop that
reads each input once and keeps every comparator in registers: 6-12x faster than one
``min``/``max`` pass over memory per comparator (``n = 12``, two ranks, 1 thread), and
bit-identical, since ``min`` and ``max`` round nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from functools import cache

import torch
from torch import Tensor

FUSE_MIN_NUMEL = 2**16  # rows at least this large (on CPU) go through the compiled network by default
FUSE_MAX_ROWS = 64  # larger networks (O(n log^2 n) comparators) take minutes to compile: always eager
log = logging.getLogger(__name__)
_fusion_works = True  # False once compiling failed in this process


def order_statistics(rows: Sequence[Tensor], ranks: Iterable[int], fuse: bool | None = None) -> dict[int, Tensor]:
    """``{r: out[r]}`` for the elementwise sort ``out[0] <= ... <= out[n-1]`` of equally shaped ``rows``
    (0-based ranks; ``rows`` is not modified). Only the comparators that reach ``ranks`` run. ``fuse``: use the
    compiled network on CPU (default: for rows of at least ``FUSE_MIN_NUMEL`` entries, where it repays the
    seconds a process spends compiling it once; never for more than ``FUSE_MAX_ROWS`` rows, whose networks take
    minutes to compile)."""
    ranks = tuple(sorted(set(ranks)))
    if not ranks:
        return {}
    if not 0 <= ranks[0] <= ranks[-1] < len(rows):
        raise ValueError(f"ranks must lie in [0, {len(rows)}), got {ranks}")
    global _fusion_works
    if fuse is None:
        fuse = rows[0].numel() >= FUSE_MIN_NUMEL
    if fuse and _fusion_works and rows[0].device.type == "cpu" and len(rows) <= FUSE_MAX_ROWS:
        try:
            return dict(zip(ranks, _compiled(len(rows), ranks)(*rows), strict=True))
        except Exception as error:  # no C++ compiler, an unsupported platform: the eager network is exact too
            _fusion_works = False
            log.warning("compiled selection network unavailable (%s: %s); using the eager one for this process",
                        type(error).__name__, error)
    return dict(zip(ranks, _selection(len(rows), ranks)(*rows), strict=True))


@cache
def _selection(n: int, ranks: tuple[int, ...]) -> Callable[..., tuple[Tensor, ...]]:
    """The selection network of ``ranks`` as straight-line elementwise ``min``/``max``."""
    network = selection_network(n, ranks)

    def select(*rows: Tensor) -> tuple[Tensor, ...]:
        wires = list(rows)
        for a, b in network:
            wires[a], wires[b] = torch.minimum(wires[a], wires[b]), torch.maximum(wires[a], wires[b])
        return tuple(wires[r] for r in ranks)

    return select


@cache
def _compiled(n: int, ranks: tuple[int, ...]) -> Callable[..., tuple[Tensor, ...]]:
    """:func:`_selection` compiled with dynamic shapes (compiled on first call, once per dtype)."""
    return torch.compile(_selection(n, ranks), dynamic=True, fullgraph=True)


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
