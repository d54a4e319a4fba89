"""Centered clipping (Karimireddy et al., 2021)."""

from __future__ import annotations

from torch import Tensor

from flwr_byz.aggregation.base import Rule
from flwr_byz.aggregation.clipping import clip_rows
from flwr_byz.aggregation.median import check_start, start_point


class CenteredClipping(Rule):
    """``v <- v + (1/n) sum_i (x_i - v) * min(1, tau / ||x_i - v||)``, ``iterations`` times from ``start``.

    The original starts from the previous round's aggregate; this stateless form starts from
    ``zero``, the ``mean`` or the coordinate-wise ``median`` (default). Each clipped difference has
    norm at most ``tau``, also for rows whose norm overflows (:func:`clip_rows`). Requires ``n > 2f``.
    """

    name = "cc"
    requirement = "n > 2f"

    def __init__(self, f: int, tau: float = 1.0, iterations: int = 3, start: str = "median") -> None:
        super().__init__(f)
        if not tau > 0:
            raise ValueError(f"CC needs tau > 0, got tau={tau}")
        if iterations < 1:
            raise ValueError(f"CC needs iterations >= 1, got {iterations}")
        check_start("CC", start)
        self.tau, self.iterations, self.start = tau, iterations, start

    def min_n(self) -> int:
        return 2 * self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        v = start_point(x, self.start)
        for _ in range(self.iterations):
            v = v + clip_rows(x - v.unsqueeze(-2), self.tau).mean(dim=-2)
        return v

    def __repr__(self) -> str:
        return f"CenteredClipping(f={self.f}, tau={self.tau}, iterations={self.iterations}, start={self.start!r})"
