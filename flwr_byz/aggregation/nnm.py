"""Nearest Neighbour Mixing (Allouah et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_byz.aggregation.base import PreAggregator, pairwise_sq_distances, sort_by, tie_order


def nearest_neighbours(x: Tensor, m: int) -> Tensor:
    """Indices ``(k, n, m)`` of the ``m`` nearest vectors of each vector of a ``(k, n, d)`` batch, itself included.

    Distances are exact (float64 direct differences, :func:`pairwise_sq_distances`), so far
    outliers cannot blur which honest vectors are nearest; only exactly equal distances are ties,
    broken by :func:`tie_order` (permutation invariant).
    """
    dist = pairwise_sq_distances(x)
    k, n, _ = dist.shape
    if m >= n:
        return torch.arange(n, device=x.device).expand(k, n, n)
    values, nearest = dist.topk(m + 1, dim=-1, largest=False)
    tied = (values[..., m - 1] == values[..., m]).any(dim=-1)  # a tie across the cut: which vector is in?
    if tied.any():
        nearest[tied] = sort_by(dist[tied], tie_order(x[tied], dist[tied]))[..., : m + 1]
    return nearest[..., :m]


class NearestNeighborMixing(PreAggregator):
    """Replace each ``x_i`` by the mean of its ``n - f`` nearest neighbours (itself included).

    ``y_i = 1/(n-f) sum_{j in N_i} x_j``, computed as ``W @ x`` with a sparse
    averaging matrix ``W`` so memory stays O(k*n*d + k*n^2). Each term is ``x_j / (n-f)``, so
    a mean of finite vectors with fewer than ``n - f`` at the dtype's maximum stays finite. Requires ``n > f``.
    Cost: inherently quadratic in ``n``: ``O(k n^2 d)`` for the exact pairwise distances and ``O(k n^2 d)``
    for the mixing (each output row averages ``n - f`` inputs), ``O(k n^2 log n)`` to find the neighbours.
    """

    name = "nnm"
    requirement = "n > f"

    def min_n(self) -> int:
        return self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        m = n - self.f
        weights = x.new_zeros(x.shape[0], n, n).scatter_(-1, nearest_neighbours(x, m), 1.0 / m)
        return weights @ x
