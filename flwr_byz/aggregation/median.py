"""Coordinate-wise median (Yin et al., 2018)."""

from torch import Tensor

from flwr_byz.aggregation.base import Rule
from flwr_byz.aggregation.sorting import order_statistics


class CoordinateMedian(Rule):
    """``F(x)_j = median_i x_ij``; for even ``n`` the mean of the two middle values.

    Breakdown point 1/2: requires ``n > 2f``. Computed by a selection network (``sorting``).
    """

    name = "cm"
    requirement = "n > 2f"

    def min_n(self) -> int:
        return 2 * self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        middle = (n // 2,) if n % 2 else (n // 2 - 1, n // 2)
        rows = order_statistics(x.unbind(-2), middle)
        return rows[n // 2] if n % 2 else (rows[n // 2 - 1] + rows[n // 2]) / 2


STARTS = ("zero", "mean", "median")


def check_start(rule: str, start: str) -> None:
    """Raise ``ValueError`` unless ``start`` names a start point of an iterative rule."""
    if start not in STARTS:
        raise ValueError(f"{rule} start must be one of {', '.join(STARTS)}; got {start!r}")


def start_point(x: Tensor, start: str) -> Tensor:
    """Initial centre ``(k, d)`` of an iterative rule on ``(k, n, d)``: zero, the mean or the CM.

    The mean is summed as ``x_i / n``, so it is finite for finite inputs of any magnitude.
    """
    if start == "zero":
        return x.new_zeros(x.shape[0], x.shape[-1])
    if start == "mean":
        return (x / x.shape[-2]).sum(dim=-2)
    return CoordinateMedian(0)._apply(x)
