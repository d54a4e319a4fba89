"""Shared machinery of aggregation rules and pre-aggregators.

Every stage works on a batch ``x`` of shape ``(k, n, d)``: ``k`` independent
problems of ``n`` vectors in ``R^d``. The public ``__call__`` also accepts a
single problem ``(n, d)``. Stages never modify their input.
"""

from __future__ import annotations

from typing import ClassVar

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


def pairwise_sq_distances(x: Tensor) -> Tensor:
    """Squared Euclidean distances ``D[k, i, j] = ||x_ki - x_kj||^2`` of a ``(k, n, d)`` batch.

    Computed from the Gram matrix of the centred vectors (distances are
    translation invariant; centring limits cancellation), so memory stays
    O(k*n*d + k*n^2). The diagonal is exactly zero.
    """
    centred = x - x.mean(dim=-2, keepdim=True)
    gram = centred @ centred.transpose(-1, -2)
    sq = gram.diagonal(dim1=-2, dim2=-1)
    dist = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * gram).clamp_min(0.0)
    return dist * (1.0 - torch.eye(x.shape[-2], dtype=x.dtype, device=x.device))


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
