"""Coordinate-wise trimmed mean (Yin et al., 2018)."""

import torch
from torch import Tensor

from flwr_byz.aggregation.base import Rule
from flwr_byz.aggregation.sorting import order_statistics


class TrimmedMean(Rule):
    """Per coordinate, drop the ``f`` largest and ``f`` smallest values and average the rest:

    ``F(x)_j = 1/(n - 2f) sum_{i=f+1}^{n-f} x_(i)j`` with ``x_(1)j <= ... <= x_(n)j``.
    Requires ``n > 2f``. The order statistics come from a selection network (``sorting``).
    """

    name = "tm"
    requirement = "n > 2f"

    def min_n(self) -> int:
        return 2 * self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        if self.f == 0:
            return x.mean(dim=-2)
        n = x.shape[-2]
        kept = order_statistics(x.unbind(-2), range(self.f, n - self.f))
        return torch.stack(list(kept.values()), dim=-2).mean(dim=-2)
