"""Krum and MultiKrum (Blanchard et al., 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flwr_byz.aggregation.base import Rule, distinct_ties, pairwise_sq_distances, sort_by, tie_order
from flwr_byz.aggregation.mean import Weighted, reply_weights, weighted_mean

NEIGHBORS = ("n-f-2", "n-f-1")


def krum_scores(dist: Tensor, m: int, alive: Tensor | None = None) -> Tensor:
    """Krum scores ``(k, n)``: each vector's sum of its ``m`` smallest squared distances to the other
    ``alive`` vectors (``(k, n)`` mask, default all); vectors no longer alive score ``inf``.

    ``dist`` comes from :func:`pairwise_sq_distances` (float64, exact). The ``m`` values are summed
    smallest first, so equal multisets of distances give bit-for-bit equal scores.
    """
    n = dist.shape[-1]
    others = dist.masked_fill(torch.eye(n, dtype=torch.bool, device=dist.device), torch.inf)
    if alive is not None:
        others = others.masked_fill(~alive.unsqueeze(-2), torch.inf)
    scores = others.topk(m, dim=-1, largest=False).values.sum(dim=-1)
    return scores if alive is None else scores.masked_fill(~alive, torch.inf)


def krum_order(x: Tensor, dist: Tensor, m: int, alive: Tensor | None = None) -> Tensor:
    """Indices ``(k, n)`` of the vectors of ``x``, lowest exact Krum score (:func:`krum_scores`) first.

    Only exactly equal scores are ties (e.g. mutual nearest neighbours with ``m = 1``, duplicated
    vectors); they are broken by :func:`tie_order` (smaller total distance first), so the order,
    hence the rule, is permutation invariant. Vectors no longer ``alive`` come last.
    """
    scores = krum_scores(dist, m, alive)
    order = scores.argsort(dim=-1, stable=True)
    pairs = None if alive is None else alive.unsqueeze(-1) & alive.unsqueeze(-2)
    tied = distinct_ties(scores, order, dist if pairs is None else dist.masked_fill(~pairs, 0.0))
    if tied.any():
        live = None if alive is None else alive[tied]
        order[tied] = sort_by(scores[tied], tie_order(x[tied], dist[tied], live))
    return order if alive is None else sort_by((~alive).to(torch.uint8), order)


class Krum(Rule):
    """Output the vector with the lowest score ``s_i = sum_{j in N_i} ||x_i - x_j||^2``,

    ``N_i`` the ``m`` nearest other vectors. ``neighbors`` picks ``m``:
    ``"n-f-2"`` (original; requires ``n > 2f + 2``), ``"n-f-1"`` (the variant
    of the paper's 2D study, usable with n = 3, f = 1; requires ``n > 2f``) or
    a fixed integer (requires ``n > 2f`` and ``1 <= m <= n - 1``).
    Scores are float64 sums of direct differences (no Gram cancellation, no tie buckets), so far
    outliers cannot change which honest vector wins. Memory O(k*n*d + k*n^2).
    Cost: inherently quadratic in ``n``, ``O(k n^2 d)`` for the exact pairwise distances (``n(n-1)/2``
    float64 differences of ``d`` coordinates; growth measured by ``benchmarks/bench_jump_scaling.py``), then
    ``O(k n^2 log n)`` for the scores.
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
        """Exact Krum scores ``(k, n)`` of a ``(k, n, d)`` batch, in float64."""
        return krum_scores(pairwise_sq_distances(x), self._num_neighbors(x.shape[-2]))

    def order(self, x: Tensor) -> Tensor:
        """Indices ``(k, n)`` of a ``(k, n, d)`` batch, best Krum score first (see :func:`krum_order`)."""
        return krum_order(x, pairwise_sq_distances(x), self._num_neighbors(x.shape[-2]))

    def _apply(self, x: Tensor) -> Tensor:
        best = self.order(x)[..., 0]
        return x[torch.arange(x.shape[0], device=x.device), best]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f}, neighbors={self.neighbors!r})"


class MultiKrum(Weighted, Krum):
    """Average of the ``select`` vectors with the lowest Krum scores (default ``n - f``).

    With ``weights`` ``w`` (Flower's ``MultiKrum``, ``w_i`` the ``num-examples`` of reply ``i``) the
    selection is unchanged (Krum scores ignore the weights) and the selected set ``S`` is averaged
    with its weights: ``F(x_1..x_n) = sum_{i in S} w_i x_i / sum_{i in S} w_i``, computed as
    ``sum_{i in S} p_i x_i`` with ``p_i = w_i / sum_{j in S} w_j``, as Flower's ``aggregate_arrayrecords``
    does on the selected replies. The weights of the selected rows must have a positive sum
    (``ValueError`` otherwise; Flower divides by zero). ``weights=None`` is the plain average, bit for bit.
    Flower's ``Krum`` selects one reply, whose weight cancels: it is :class:`Krum`, unweighted.
    Cost: Krum's, ``O(k n^2 d)``, plus the ``O(k n d)`` average.
    """

    name = "multikrum"

    def __init__(self, f: int, neighbors: str | int = "n-f-2", select: int | None = None,
                 weights: Sequence[float] | Tensor | None = None) -> None:
        super().__init__(f, neighbors)
        if select is not None and (isinstance(select, bool) or not isinstance(select, int) or select < 1):
            raise ValueError(f"MultiKrum select must be a positive int or None, got {select!r}")
        self.select = select
        self.weights = reply_weights(weights, self.name)

    def min_n(self) -> int:
        return max(super().min_n(), self.select or 1)

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        m = self.select or n - self.f
        best = self.order(x)[..., :m]
        selected = x.gather(-2, best.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if self.weights is None:
            return selected.mean(dim=-2)
        w = self._weights(n, x.device)[best]  # (k, m): the weights of the selected rows
        empty = (w.sum(dim=-1) <= 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"MULTIKRUM selected rows whose weights sum to 0 (rows {best[empty[0]].tolist()} of problem "
                f"{empty[0]}, weights {self.weights.tolist()}): their weighted average is undefined"
            )
        return weighted_mean(selected, w)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}{self._weights_repr()})"
