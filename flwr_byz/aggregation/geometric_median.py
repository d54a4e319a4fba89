"""Geometric median by smoothed Weiszfeld iterations (Pillutla et al., 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Rule
from .median import check_start, start_point


def distances_to(x: Tensor, z: Tensor) -> Tensor:
    """``||x_i - z||`` for a ``(k, n, d)`` batch and centres ``z`` ``(k, d)``, without a (k, n, d) temporary."""
    return torch.cdist(x, z.unsqueeze(-2), compute_mode="donot_use_mm_for_euclid_dist").squeeze(-1)


def weiszfeld_weights(x: Tensor, z: Tensor, nu: float) -> Tensor:
    """Weights ``(k, n)`` summing to 1, proportional to ``1 / b_i``, ``b_i = max(nu, ||x_i - z||)``.

    Computed as ``b_min / b_i`` (the largest is 1) and normalised, so huge distances lose no
    precision to subnormal ``1 / b_i`` and the weighted mean of finite rows cannot overflow; where
    every distance of a problem overflows (all weights would be 0/0), they are recomputed on
    ``x / S`` and ``z / S``, ``S`` the problem's largest magnitude (a rare path).
    """
    b = distances_to(x, z).clamp_min(nu)
    lost = b.isinf().all(dim=-1)
    if lost.any():
        scale = torch.maximum(x[lost].abs().amax(dim=(-2, -1)), z[lost].abs().amax(dim=-1)).unsqueeze(-1)
        b[lost] = distances_to(x[lost] / scale.unsqueeze(-1), z[lost] / scale).maximum(nu / scale)
    w = b.amin(dim=-1, keepdim=True) / b
    return w / w.sum(dim=-1, keepdim=True)


class GeometricMedian(Rule):
    """Approximate ``argmin_z sum_i ||x_i - z||`` by smoothed Weiszfeld:

    ``z <- sum_i (x_i / b_i) / sum_i (1 / b_i)``, ``b_i = max(nu, ||x_i - z||)``,

    for ``iterations`` steps (paper: T = 8, nu = 0.1) from ``start`` (``zero``,
    ``mean`` or coordinate-wise ``median``); with ``tol``, each problem of a batch stops
    once it moves less than ``tol`` (so a batch equals a loop). Requires ``n > 2f``. Memory O(k*d + k*n):
    distances come from ``torch.cdist`` in its exact (non-Gram) mode. Finite inputs of any
    magnitude give a finite output (:func:`weiszfeld_weights`).
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
        top = torch.finfo(x.dtype).max  # a weighted mean of finite rows, up to rounding
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)  # problems still moving
        for _ in range(self.iterations):
            new = (weiszfeld_weights(x, z, self.nu).unsqueeze(-2) @ x).squeeze(-2).clamp(-top, top)
            if self.tol is None:
                z = new
                continue
            moved = torch.linalg.vector_norm(new - z, dim=-1)
            z = torch.where(active.unsqueeze(-1), new, z)
            active &= moved > self.tol
            if not active.any():
                break
        return z
