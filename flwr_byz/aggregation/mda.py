"""Minimum-diameter averaging (El Mhamdi et al., 2020), exact by enumeration."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from flwr_byz.aggregation.arc import binary_scale
from flwr_byz.aggregation.base import Rule, pairwise_sq_distances, tie_order
from flwr_byz.aggregation.meamed import weighted_average

MAX_SUBSETS = 100_000  # default cap on the C(n, f) subsets one problem enumerates
BLOCK = 1 << 22  # (problem, subset, pair) entries scored at once: O(BLOCK) float64 scratch


def exact_sq_distances(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`~flwr_byz.aggregation.base.pairwise_sq_distances` ``(k, n, n)`` and a second key ``(k, n, n)``.

    A squared distance beyond float64's range is ``inf``; in the problems that have one, the key holds the
    squared distances of ``x / s`` (:func:`~flwr_byz.aggregation.arc.binary_scale`), which rank the overflowing
    distances among themselves (elsewhere it is 0): ordering by ``(distance, key)`` is ordering by exact distance.
    """
    dist = pairwise_sq_distances(x)
    key = torch.zeros_like(dist)
    over = dist.isinf().flatten(1).any(dim=-1)
    if over.any():
        y = x[over].double()
        key[over] = pairwise_sq_distances(y / binary_scale(y))
    return dist, key


def ranked_pairs(dist: Tensor, order: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``dist[p, order[p, i], order[p, j]]`` for the pairs ``i = rows``, ``j = cols`` of ranks: ``(k, P)``."""
    return dist.gather(-1, order.unsqueeze(-2).expand_as(dist)).gather(-2, order.unsqueeze(-1).expand_as(dist))[
        :, rows, cols
    ]


class MinimumDiameterAveraging(Rule):
    """The mean of the ``n - f`` vectors of smallest diameter:

    ``F(x) = 1/(n-f) sum_{i in S*} x_i``, ``S* in argmin_{|S| = n-f} max_{i,j in S} ||x_i - x_j||``.

    Exact: every one of the ``C(n, f)`` subsets is scored (its diameter is the largest float64 squared
    distance among its pairs; :func:`exact_sq_distances` ranks those that overflow), ``O(C(n, f) n^2)`` time
    and ``O(n^2 + BLOCK)`` memory per problem. More than
    ``max_subsets`` subsets raise ``ValueError`` (pass a larger ``max_subsets``, or use fewer nodes, a
    smaller f or another rule). Subsets of exactly equal diameter are broken permutation-invariantly:
    rank the vectors by :func:`~flwr_byz.aggregation.base.tie_order` (smaller total distance first) and
    keep the lexicographically first subset of ranks, i.e. prefer the more central vectors (ByzFL keeps
    the first subset in input order). Requires ``n > 2f``.
    """

    name = "mda"
    requirement = "n > 2f"

    def __init__(self, f: int, max_subsets: int = MAX_SUBSETS) -> None:
        super().__init__(f)
        if isinstance(max_subsets, bool) or not isinstance(max_subsets, int) or max_subsets < 1:
            raise ValueError(f"MDA max_subsets must be a positive int, got {max_subsets!r}")
        self.max_subsets = max_subsets

    def min_n(self) -> int:
        return 2 * self.f + 1

    def check_subsets(self, n: int) -> None:
        """Raise ``ValueError`` if ``n`` vectors have more than ``max_subsets`` subsets of size ``n - f``."""
        count = math.comb(n, self.f)
        if count > self.max_subsets:
            raise ValueError(
                f"MDA enumerates C(n, f) = C({n}, {self.f}) = {count} subsets of n - f = {n - self.f} vectors, "
                f"more than max_subsets={self.max_subsets}: pass max_subsets={count} or more (time grows as "
                f"C(n, f) n^2), or use fewer nodes, a smaller f, or a rule without enumeration (e.g. krum, nnm+cm)"
            )

    def _apply(self, x: Tensor) -> Tensor:
        k, n, _ = x.shape
        self.check_subsets(n)
        if self.f == 0:
            return weighted_average(x, x.new_ones(1, 1, 1), n)
        dist, key = exact_sq_distances(x)
        order = tie_order(x, dist)  # rank r of problem p is vector order[p, r]
        rows, cols = torch.triu_indices(n, n, 1, device=x.device)
        pairs, pair_keys = ranked_pairs(dist, order, rows, cols), ranked_pairs(key, order, rows, cols)  # (k, P)
        best = torch.full((2, k), torch.inf, dtype=torch.float64, device=x.device)  # (diameter, key) so far
        removed = torch.zeros(k, self.f, dtype=torch.long, device=x.device)
        # Removed sets come in lexicographic order, so their kept complements come in reverse lexicographic
        # order: keeping the last subset of least diameter keeps the lexicographically first one.
        combos = itertools.combinations(range(n), self.f)
        size = max(1, BLOCK // (k * max(1, len(rows))))
        while chunk := list(itertools.islice(combos, size)):
            out = torch.tensor(chunk, dtype=torch.long, device=x.device).view(len(chunk), self.f)
            alive = torch.ones(len(chunk), n, dtype=torch.bool, device=x.device).scatter_(1, out, False)
            both = alive[:, rows] & alive[:, cols]  # (m, P): the pairs inside each kept subset
            diameter = torch.where(both, pairs.unsqueeze(1), 0.0).amax(dim=-1)  # (k, m)
            tie_key = torch.where(both, pair_keys.unsqueeze(1), 0.0).amax(dim=-1)
            low = diameter.amin(dim=-1, keepdim=True)
            tie_key = tie_key.masked_fill(diameter != low, torch.inf)
            low_key = tie_key.amin(dim=-1, keepdim=True)
            last = len(chunk) - 1 - (tie_key == low_key).flip(-1).to(torch.uint8).argmax(dim=-1)
            low, low_key = low.squeeze(-1), low_key.squeeze(-1)
            take = (low < best[0]) | ((low == best[0]) & (low_key <= best[1]))
            best = torch.where(take, torch.stack([low, low_key]), best)
            removed = torch.where(take.unsqueeze(-1), out[last], removed)
        kept_ranks = torch.ones(k, n, dtype=x.dtype, device=x.device).scatter_(1, removed, 0.0)
        kept = torch.empty_like(kept_ranks).scatter_(1, order, kept_ranks)
        return weighted_average(x, kept.unsqueeze(-1), n - self.f)

    def __repr__(self) -> str:
        return f"MinimumDiameterAveraging(f={self.f}, max_subsets={self.max_subsets})"
