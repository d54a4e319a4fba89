"""MinMax and MinSum (Shejwalkar & Houmansadr 2021): the largest step away from the mean that stays unremarkable."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext

PERTURBATIONS = ("unit", "std", "sign")


def perturbation(kind: str, honest: Tensor, gbar: Tensor) -> Tensor:
    """``p``: ``unit`` = -gbar/||gbar|| (0 if gbar = 0), ``std`` = -std (coordinate-wise), ``sign`` = -sign(gbar)."""
    if kind == "unit":
        norm = gbar.norm()
        return -gbar / norm if norm > 0 else torch.zeros_like(gbar)
    if kind == "std":
        return -honest.std(0)
    return -torch.sign(gbar)


class DistanceBounded(Attack):
    """``a = gbar + eta * p`` with ``eta`` the largest value in ``[0, eta_max]`` meeting a distance budget.

    ``eta`` is found by bisection to within ``tol``. With ``y_i = g_i - gbar``,
    ``||a - g_i||^2 = eta^2 ||p||^2 - 2 eta <p, y_i> + ||y_i||^2``, a convex
    quadratic in ``eta``, so the feasible set is an interval containing 0 and
    bisection on these ``h`` scalars (float64) is exact up to ``tol``.
    Metric ``<name>-eta``.
    """

    def __init__(self, perturbation: str = "unit", eta_max: float = 50.0, tol: float = 1e-5) -> None:
        super().__init__()
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"{self.name}: perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        if not (tol > 0 and 0 <= eta_max < float("inf")):
            raise ValueError(f"{self.name}: need tol > 0 and finite eta_max >= 0, got tol={tol}, eta_max={eta_max}")
        self.perturbation = perturbation
        self.eta_max = eta_max
        self.tol = tol

    @staticmethod
    @abstractmethod
    def budget_ok(dist2: Tensor, pair2: Tensor) -> bool:
        """Whether squared distances ``||a - g_i||^2`` ``(h,)`` fit the budget set by ``||g_i - g_j||^2`` ``(h, h)``."""

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        if self.perturbation == "std" and ctx.h < 2:
            raise ValueError(f"{self.name}: the std perturbation needs at least 2 honest vectors")
        gbar = honest.mean(0)
        p = perturbation(self.perturbation, honest, gbar)
        y, p64 = (honest - gbar).double(), p.double()
        gram = y @ y.T
        sq = gram.diagonal()
        pair2 = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)
        yp, pp = y @ p64, p64 @ p64

        def ok(eta: float) -> bool:
            return self.budget_ok(eta * eta * pp - 2 * eta * yp + sq, pair2)

        lo, hi = 0.0, self.eta_max
        if ok(hi):
            lo = hi
        while hi - lo > self.tol:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        self.metrics = {f"{self.name}-eta": lo}
        return gbar + lo * p


class MinMax(DistanceBounded):
    """MinMax: ``max_i ||a - g_i|| <= max_{i,j} ||g_i - g_j||``."""

    name = "minmax"

    @staticmethod
    def budget_ok(dist2: Tensor, pair2: Tensor) -> bool:
        return bool(dist2.max() <= pair2.max())


class MinSum(DistanceBounded):
    """MinSum: ``sum_i ||a - g_i||^2 <= max_i sum_j ||g_i - g_j||^2``."""

    name = "minsum"

    @staticmethod
    def budget_ok(dist2: Tensor, pair2: Tensor) -> bool:
        return bool(dist2.sum() <= pair2.sum(1).max())
