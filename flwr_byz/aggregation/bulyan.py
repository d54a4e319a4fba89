"""Bulyan (El Mhamdi et al., 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_byz.aggregation.base import Rule, pairwise_sq_distances
from flwr_byz.aggregation.krum import krum_order
from flwr_byz.aggregation.median import CoordinateMedian

SELECTIONS = ("krum", "multikrum")


class Bulyan(Rule):
    """Select ``theta = n - 2f`` vectors with Krum, then average, per coordinate, the
    ``beta = theta - 2f`` selected values closest to their coordinate-wise median.

    ``selection="krum"`` (the paper) applies Krum ``theta`` times, removing each winner;
    ``"multikrum"`` (Flower's ``Bulyan`` default) takes the ``theta`` best Krum scores at once.
    Krum scores over ``r`` candidates use ``max(1, r - f - 2)`` neighbours. Requires ``n >= 4f + 3``.
    Cost: one ``O(k n^2 d)`` exact distance matrix (quadratic in ``n``, shared by every Krum pass), the
    passes ``O(k n^3)`` on it (``theta`` re-scorings of ``n^2`` distances), then ``O(k theta d log theta)``.
    """

    name = "bulyan"
    requirement = "n >= 4f + 3"

    def __init__(self, f: int, selection: str = "krum") -> None:
        super().__init__(f)
        if selection not in SELECTIONS:
            raise ValueError(f"Bulyan selection must be one of {', '.join(SELECTIONS)}; got {selection!r}")
        self.selection = selection

    def min_n(self) -> int:
        return 4 * self.f + 3

    def _select(self, x: Tensor) -> Tensor:
        """Indices ``(k, theta)`` of the selected vectors (exact Krum scores, see :func:`krum_order`)."""
        k, n, _ = x.shape
        theta = n - 2 * self.f
        dist = pairwise_sq_distances(x)
        if self.selection == "multikrum":
            return krum_order(x, dist, max(1, n - self.f - 2))[..., :theta]
        alive = torch.ones(k, n, dtype=torch.bool, device=x.device)
        chosen = []
        for step in range(theta):
            best = krum_order(x, dist, max(1, n - step - self.f - 2), alive)[..., 0]
            chosen.append(best)
            alive[torch.arange(k, device=x.device), best] = False
        return torch.stack(chosen, dim=-1)

    def _apply(self, x: Tensor) -> Tensor:
        beta = x.shape[-2] - 4 * self.f
        idx = self._select(x)
        selected = x.gather(-2, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        median = CoordinateMedian(0)._apply(selected)
        closest = (selected - median.unsqueeze(-2)).abs().topk(beta, dim=-2, largest=False).indices
        return selected.gather(-2, closest).mean(dim=-2)

    def __repr__(self) -> str:
        return f"Bulyan(f={self.f}, selection={self.selection!r})"
