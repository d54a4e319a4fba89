"""Shared machinery of aggregation rules and pre-aggregators.

Every stage works on a batch ``x`` of shape ``(k, n, d)``: ``k`` independent
problems of ``n`` vectors in ``R^d``. The public ``__call__`` also accepts a
single problem ``(n, d)``. Stages never modify their input.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

import torch
from torch import Tensor


def as_batch(x: Tensor) -> tuple[Tensor, bool]:
    """Return ``x`` as ``(k, n, d)`` and whether it came without a batch dimension."""
    if not isinstance(x, Tensor):
        raise TypeError(f"aggregators take a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"aggregators need a floating tensor, got {x.dtype}; convert it explicitly")
    if x.dim() not in (2, 3):
        raise ValueError(f"aggregators take (n, d) or (k, n, d) tensors, got shape {tuple(x.shape)}")
    if x.shape[-2] == 0:
        raise ValueError("aggregators need at least one vector (n >= 1)")
    return (x.unsqueeze(0), True) if x.dim() == 2 else (x, False)


CHUNK = 1 << 15  # coordinates per float64 block of pairwise_sq_distances: O(n * CHUNK) extra memory
SMALL_D = 32  # up to this d one batched torch.cdist beats a torch.pdist per problem (chosen by d: batch == loop)


def pairwise_sq_distances(x: Tensor) -> Tensor:
    """Squared Euclidean distances ``D[k, i, j] = sum_c (x_kic - x_kjc)^2`` of a ``(k, n, d)`` batch, in float64.

    Selection rules (Krum, Bulyan, NNM) compare these sums exactly, so they are computed as
    direct differences in float64: a Gram matrix ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` loses every
    honest distance to cancellation once an outlier is ~1e4 x the spread (float32; 1e8 in
    float64), and overflows for huge finite inputs. Summed over blocks of ``CHUNK`` coordinates
    (memory O(k*n*CHUNK + k*n^2), no ``(n, n, d)`` temporary). ``D`` is symmetric bit for bit,
    its diagonal is exactly 0, and a distance that overflows (or ``inf - inf``) is ``+inf``.
    """
    k, n, d = x.shape
    dist = torch.zeros(k, n, n, dtype=torch.float64, device=x.device)
    rows, cols = torch.triu_indices(n, n, 1, device=x.device)
    for start in range(0, d, CHUNK):
        block = x[..., start : start + CHUNK].to(torch.float64)
        if d <= SMALL_D:
            dist += torch.cdist(block, block, compute_mode="donot_use_mm_for_euclid_dist").square()
        else:
            for problem, vectors in zip(dist, block):
                problem[rows, cols] += torch.pdist(vectors).square()
    upper = dist.triu(1)
    dist = upper + upper.mT
    return dist.masked_fill(dist.isnan(), torch.inf)


def tie_order(x: Tensor, dist: Tensor, alive: Tensor | None = None) -> Tensor:
    """A permutation-invariant order ``(k, n)`` of the vectors, used only to break exact ties.

    Vectors come by increasing total finite distance to the other ``alive`` vectors (``(k, n)``
    mask; default all; dead ones last); distinct vectors with exactly equal totals come
    lexicographically. Only identical vectors keep their input order, and swapping them changes
    nothing. So a rule that sorts by its own key and then by this order gives the same output for
    any order of its inputs.
    """
    live = torch.ones_like(dist[..., 0], dtype=torch.bool) if alive is None else alive
    pairs = live.unsqueeze(-1) & live.unsqueeze(-2)
    total = dist.masked_fill(~pairs | dist.isinf(), 0.0).sum(dim=-1).masked_fill(~live, torch.inf)
    order = total.argsort(dim=-1, stable=True)
    for problem in distinct_ties(total, order, dist.masked_fill(~pairs, 0.0)).nonzero().flatten().tolist():
        order[problem] = lexical_order(x[problem], dist[problem], total[problem], pairs[problem])
    return order


def lexical_order(x: Tensor, dist: Tensor, total: Tensor, pairs: Tensor) -> Tensor:
    """One problem's ``(n,)`` order by ``total``, exact ties between distinct live vectors lexicographic."""
    clash = (total.unsqueeze(-1) == total.unsqueeze(-2)) & (dist > 0) & pairs
    tied = clash.any(dim=-1).nonzero().flatten()
    lexical = torch.zeros_like(total, dtype=torch.long)
    lexical[tied] = torch.unique(x[tied], dim=0, return_inverse=True)[1]
    return sort_by(total, lexical.argsort(dim=-1, stable=True))


def distinct_ties(key: Tensor, order: Tensor, dist: Tensor) -> Tensor:
    """Problems ``(k,)`` where ``order`` (ascending ``key``, ``(k, n)``) puts two distinct vectors
    (``dist > 0``; pass 0 for pairs to ignore) with exactly equal keys side by side. A run of equal
    keys whose neighbours are all identical holds one vector, so these are exactly the problems
    whose order needs a tie break."""
    before, after = order[..., :-1], order[..., 1:]
    same = key.gather(-1, before) == key.gather(-1, after)
    apart = dist.flatten(-2).gather(-1, before * dist.shape[-1] + after) > 0
    return (same & apart).any(dim=-1)


def sort_by(key: Tensor, ties: Tensor) -> Tensor:
    """Indices sorting ``key`` along its last dimension, equal keys in the order ``ties`` (``(k, n)``)."""
    ties = ties.unsqueeze(-2).expand_as(key) if key.dim() > ties.dim() else ties
    return ties.gather(-1, key.gather(-1, ties).argsort(dim=-1, stable=True))


S = TypeVar("S", bound="Stage")


class Stage:
    """A step of an aggregation pipeline with ``f`` presumed Byzantine inputs.

    Subclasses set ``name`` and ``requirement`` (the precondition on ``n`` in
    words) and override ``min_n`` and ``_apply``.
    """

    name: ClassVar[str]
    requirement: ClassVar[str] = "n >= 1"

    def __init__(self, f: int) -> None:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"f must be a non-negative integer, got {f!r}")
        self.f = f

    def min_n(self) -> int:
        """Smallest number of input vectors the stage accepts for this ``f``."""
        return 1

    def check(self, n: int) -> None:
        """Raise ``ValueError`` naming the precondition if ``n`` inputs are too few."""
        if n < self.min_n():
            raise ValueError(
                f"{self.name.upper()} needs {self.requirement}, got n={n}, f={self.f}: "
                f"use at least n={self.min_n()} nodes or a smaller f"
            )

    def output_n(self, n: int) -> int:
        """Number of vectors the stage outputs for ``n`` inputs (rules: 1)."""
        return n

    def for_round(self: S, t: int) -> S:
        """The stage as used in round ``t``; only randomised stages (bucketing) depend on it."""
        return self

    def _apply(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f})"


class Rule(Stage):
    """Aggregation rule ``F: (n, d) -> (d)``, batched ``(k, n, d) -> (k, d)``."""

    def output_n(self, n: int) -> int:
        return 1

    def __call__(self, x: Tensor) -> Tensor:
        batch, single = as_batch(x)
        self.check(batch.shape[-2])
        out = self._apply(batch)
        return out[0] if single else out


class PreAggregator(Stage):
    """Pre-aggregation ``(n, d) -> (n', d)``, batched ``(k, n, d) -> (k, n', d)``."""

    def __call__(self, x: Tensor) -> Tensor:
        batch, single = as_batch(x)
        self.check(batch.shape[-2])
        out = self._apply(batch)
        return out[0] if single else out
