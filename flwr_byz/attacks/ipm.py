"""Inner product manipulation (Xie, Koyejo & Gupta, UAI 2019)."""

from __future__ import annotations

import math

from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext


class InnerProductManipulation(Attack):
    """Inner product manipulation (Xie et al. 2019): ``a = -eps * gbar``.

    With ``f`` copies among the honest vectors the mean becomes ``(h - f * eps) / n * gbar``: its inner product with
    the true gradient turns negative once ``eps > h / f``. Against the median and Krum, Xie et al. show a small
    ``eps`` suffices when the honest vectors spread widely around ``gbar``. ``eps > 0``; the default, 2.0, is ByzFL's ``tau`` (the paper fixes none).
    ``foe`` with its ``eps = 1.1`` is IPM with ``eps = 0.1``. Metric ``ipm-eps``.
    Cost: one mean of the honest vectors.
    """

    name = "ipm"

    def __init__(self, eps: float = 2.0) -> None:
        super().__init__()
        if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"ipm: eps must be a finite number > 0 (a = -eps * gbar), got {eps!r}")
        self.eps = float(eps)

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        self.metrics = {"ipm-eps": self.eps}
        return honest.mean(0) * -self.eps
