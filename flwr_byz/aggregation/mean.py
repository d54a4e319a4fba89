"""Arithmetic mean (not robust; the f = 0 baseline)."""

from torch import Tensor

from flwr_byz.aggregation.base import Rule


class Mean(Rule):
    """``F(x_1..x_n) = (1/n) sum_i x_i``; ignores ``f``."""

    name = "mean"

    def _apply(self, x: Tensor) -> Tensor:
        return x.mean(dim=-2)
