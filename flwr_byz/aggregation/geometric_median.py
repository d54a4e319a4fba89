"""Geometric median by smoothed Weiszfeld iterations (Pillutla et al., 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_byz.aggregation.base import Rule
from flwr_byz.aggregation.median import check_start, start_point


def distances_to(x: Tensor, z: Tensor) -> Tensor:
    """``||x_i - z||`` for a ``(k, n, d)`` batch and centres ``z`` ``(k, d)``, without a (k, n, d) temporary."""
    return torch.cdist(x, z.unsqueeze(-2), compute_mode="donot_use_mm_for_euclid_dist").squeeze(-1)


def weiszfeld_step(x: Tensor, z: Tensor, nu: float) -> Tensor:
    """``sum_i (x_i / b_i) / sum_i (1 / b_i)``, ``b_i = max(nu, ||x_i - z||)``, for each problem ``(k, d)``.

    Where that is not finite for finite inputs (every ``1 / b_i`` is 0 because every distance
    overflows, or the weighted sum overflows), the step is recomputed by :func:`rescaled_step`.
    """
    weights = 1.0 / distances_to(x, z).clamp_min(nu)
    new = (weights.unsqueeze(-2) @ x).squeeze(-2) / weights.sum(dim=-1, keepdim=True)
    lost = ~new.sum(dim=-1).isfinite()  # one cheap pass; a false alarm (the sum overflows) costs only time
    if lost.any():
        new[lost] = rescaled_step(x[lost], z[lost], nu)
    return new


def rescaled_step(x: Tensor, z: Tensor, nu: float) -> Tensor:
    """The Weiszfeld step without overflow: distances of ``x / S`` and ``z / S`` (``S`` the problem's
    largest magnitude), weights ``b_min / b_i`` normalised to sum 1, the mean clamped to the finite range."""
    scale = torch.maximum(x.abs().amax(dim=(-2, -1)), z.abs().amax(dim=-1)).unsqueeze(-1)
    b = distances_to(x / scale.unsqueeze(-1), z / scale).maximum(nu / scale)
    weights = b.amin(dim=-1, keepdim=True) / b
    top = torch.finfo(x.dtype).max
    return ((weights / weights.sum(dim=-1, keepdim=True)).unsqueeze(-2) @ x).squeeze(-2).clamp(-top, top)


class GeometricMedian(Rule):
    """Approximate ``argmin_z sum_i ||x_i - z||`` by smoothed Weiszfeld:

    ``z <- sum_i (x_i / b_i) / sum_i (1 / b_i)``, ``b_i = max(nu, ||x_i - z||)``,

    for ``iterations`` steps (paper: T = 8, nu = 0.1) from ``start`` (``zero``,
    ``mean`` or coordinate-wise ``median``); with ``tol``, each problem of a batch stops
    once it moves less than ``tol`` (so a batch equals a loop). Requires ``n > 2f``. Memory O(k*d + k*n):
    distances come from ``torch.cdist`` in its exact (non-Gram) mode. Finite inputs of any
    magnitude give a finite output (:func:`weiszfeld_step`).
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
            new = weiszfeld_step(x, z, self.nu)
            if self.tol is None:
                z = new
                continue
            moved = torch.linalg.vector_norm(new - z, dim=-1)
            z = torch.where(active.unsqueeze(-1), new, z)
            active &= moved > self.tol
            if not active.any():
                break
        return z
