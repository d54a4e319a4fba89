"""Krum and MultiKrum (Blanchard et al., 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Rule, pairwise_sq_distances

NEIGHBORS = ("n-f-2", "n-f-1")


def krum_order(dist: Tensor, m: int, alive: Tensor | None = None) -> Tensor:
    """Indices ``(k, n)`` of the vectors, lowest Krum score first.

    ``dist`` holds squared distances with ``inf`` on the diagonal and in the columns of
    vectors no longer ``alive`` (``(k, n)`` mask; those rows come last). A score sums the
    ``m`` smallest distances of a row. Mutual nearest neighbours share a score by
    construction, so scores within 1e-9 (relative) are ordered by the total squared
    distance to the other live vectors: the order, hence the rule, is permutation invariant.
    """
    scores = dist.topk(m, dim=-1, largest=False).values.sum(dim=-1)
    spread = dist.masked_fill(dist.isinf(), 0.0).sum(dim=-1)
    if alive is not None:
        scores = scores.masked_fill(~alive, torch.inf)
    finite = scores.isfinite()
    unit = scores.masked_fill(~finite, 0.0).abs().amax(dim=-1, keepdim=True).clamp_min(1e-300) * 1e-9
    coarse = torch.where(finite, torch.round(scores / unit), torch.inf)
    by_spread = spread.argsort(dim=-1, stable=True)
    return by_spread.gather(-1, coarse.gather(-1, by_spread).argsort(dim=-1, stable=True))


class Krum(Rule):
    """Output the vector with the lowest score ``s_i = sum_{j in N_i} ||x_i - x_j||^2``,

    ``N_i`` the ``m`` nearest other vectors. ``neighbors`` picks ``m``:
    ``"n-f-2"`` (original; requires ``n > 2f + 2``), ``"n-f-1"`` (the variant
    of the paper's 2D study, usable with n = 3, f = 1; requires ``n > 2f``) or
    a fixed integer (requires ``n > 2f`` and ``1 <= m <= n - 1``).
    Memory O(k*n*d + k*n^2).
    """

    name = "krum"

    def __init__(self, f: int, neighbors: str | int = "n-f-2") -> None:
        super().__init__(f)
        if isinstance(neighbors, bool) or not (
            neighbors in NEIGHBORS or (isinstance(neighbors, int) and neighbors >= 1)
        ):
            raise ValueError(
                f"Krum neighbors must be one of {', '.join(NEIGHBORS)} or a positive int; got {neighbors!r}"
            )
        self.neighbors = neighbors

    @property
    def requirement(self) -> str:  # type: ignore[override]
        if self.neighbors == "n-f-2":
            return "n > 2f + 2"
        if self.neighbors == "n-f-1":
            return "n > 2f"
        return f"n > 2f and n > {self.neighbors} neighbours"

    def min_n(self) -> int:
        if self.neighbors == "n-f-2":
            return 2 * self.f + 3
        if self.neighbors == "n-f-1":
            return 2 * self.f + 1
        return max(2 * self.f + 1, int(self.neighbors) + 1)

    def _num_neighbors(self, n: int) -> int:
        if self.neighbors == "n-f-2":
            return n - self.f - 2
        if self.neighbors == "n-f-1":
            return n - self.f - 1
        return int(self.neighbors)

    def scores(self, x: Tensor) -> Tensor:
        """Krum scores ``(k, n)`` of a ``(k, n, d)`` batch."""
        return self._distances(x).topk(self._num_neighbors(x.shape[-2]), dim=-1, largest=False).values.sum(dim=-1)

    def order(self, x: Tensor) -> Tensor:
        """Indices ``(k, n)`` of a ``(k, n, d)`` batch, best Krum score first (see :func:`krum_order`)."""
        return krum_order(self._distances(x), self._num_neighbors(x.shape[-2]))

    @staticmethod
    def _distances(x: Tensor) -> Tensor:
        dist = pairwise_sq_distances(x)
        return dist + torch.diag(dist.new_full((x.shape[-2],), torch.inf))

    def _apply(self, x: Tensor) -> Tensor:
        best = self.order(x)[..., 0]
        return x[torch.arange(x.shape[0], device=x.device), best]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f}, neighbors={self.neighbors!r})"


class MultiKrum(Krum):
    """Average of the ``select`` vectors with the lowest Krum scores (default ``n - f``)."""

    name = "multikrum"

    def __init__(self, f: int, neighbors: str | int = "n-f-2", select: int | None = None) -> None:
        super().__init__(f, neighbors)
        if select is not None and (isinstance(select, bool) or not isinstance(select, int) or select < 1):
            raise ValueError(f"MultiKrum select must be a positive int or None, got {select!r}")
        self.select = select

    def min_n(self) -> int:
        return max(super().min_n(), self.select or 1)

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        m = self.select or n - self.f
        best = self.order(x)[..., :m]
        return x.gather(-2, best.unsqueeze(-1).expand(-1, -1, x.shape[-1])).mean(dim=-2)
