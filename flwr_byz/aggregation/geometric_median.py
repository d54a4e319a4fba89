"""Geometric median by smoothed Weiszfeld iterations (Pillutla et al., 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Rule
from .median import check_start, start_point


def distances_to(x: Tensor, z: Tensor) -> Tensor:
    """``||x_i - z||`` for a ``(k, n, d)`` batch and centres ``z`` ``(k, d)``, without a (k, n, d) temporary."""
    return torch.cdist(x, z.unsqueeze(-2), compute_mode="donot_use_mm_for_euclid_dist").squeeze(-1)


class GeometricMedian(Rule):
    """Approximate ``argmin_z sum_i ||x_i - z||`` by smoothed Weiszfeld:

    ``z <- sum_i (x_i / b_i) / sum_i (1 / b_i)``, ``b_i = max(nu, ||x_i - z||)``,

    for ``iterations`` steps (paper: T = 8, nu = 0.1) from ``start`` (``zero``,
    ``mean`` or coordinate-wise ``median``); with ``tol``, each problem of a batch stops
    once it moves less than ``tol`` (so a batch equals a loop). Requires ``n > 2f``. Memory O(k*d + k*n):
    distances come from ``torch.cdist`` in its exact (non-Gram) mode.
    """

    name = "gm"
    requirement = "n > 2f"

    def __init__(
        self,
        f: int,
        nu: float = 0.1,
        iterations: int = 8,
        start: str = "zero",
        tol: float | None = None,
    ) -> None:
        super().__init__(f)
        if not nu > 0:
            raise ValueError(f"GM needs nu > 0, got nu={nu}")
        if iterations < 1:
            raise ValueError(f"GM needs iterations >= 1, got {iterations}")
        check_start("GM", start)
        if tol is not None and not tol > 0:
            raise ValueError(f"GM tol must be positive or None, got {tol}")
        self.nu, self.iterations, self.start, self.tol = nu, iterations, start, tol

    def min_n(self) -> int:
        return 2 * self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        z = start_point(x, self.start)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)  # problems still moving
        for _ in range(self.iterations):
            weights = 1.0 / distances_to(x, z).clamp_min(self.nu)
            new = (weights.unsqueeze(-2) @ x).squeeze(-2) / weights.sum(dim=-1, keepdim=True)
            if self.tol is None:
                z = new
                continue
            moved = torch.linalg.vector_norm(new - z, dim=-1)
            z = torch.where(active.unsqueeze(-1), new, z)
            active &= moved > self.tol
            if not active.any():
                break
        return z
