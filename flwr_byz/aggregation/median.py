"""Coordinate-wise median (Yin et al., 2018)."""

from torch import Tensor

from .base import Rule


class CoordinateMedian(Rule):
    """``F(x)_j = median_i x_ij``; for even ``n`` the mean of the two middle values.

    Breakdown point 1/2: requires ``n > 2f``.
    """

    name = "cm"
    requirement = "n > 2f"

    def min_n(self) -> int:
        return 2 * self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        if n % 2:
            return x.median(dim=-2).values
        low = x.kthvalue(n // 2, dim=-2).values
        high = x.kthvalue(n // 2 + 1, dim=-2).values
        return (low + high) / 2
