"""Nearest Neighbour Mixing (Allouah et al., 2023)."""

from __future__ import annotations

from torch import Tensor

from .base import PreAggregator, pairwise_sq_distances


class NearestNeighborMixing(PreAggregator):
    """Replace each ``x_i`` by the mean of its ``n - f`` nearest neighbours (itself included).

    ``y_i = 1/(n-f) sum_{j in N_i} x_j``, computed as ``W @ x`` with a sparse
    averaging matrix ``W`` so memory stays O(k*n*d + k*n^2). Requires ``n > f``.
    """

    name = "nnm"
    requirement = "n > f"

    def min_n(self) -> int:
        return self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        m = n - self.f
        nearest = pairwise_sq_distances(x).topk(m, dim=-1, largest=False).indices
        weights = x.new_zeros(x.shape[0], n, n).scatter_(-1, nearest, 1.0 / m)
        return weights @ x
