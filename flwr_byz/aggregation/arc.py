"""Adaptive robust clipping (Allouah et al., 2024): clip the largest vectors to the largest remaining norm."""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_byz.aggregation.base import PreAggregator, sort_by


def binary_scale(x: Tensor, bits: int = 1) -> Tensor:
    """Per-problem powers of two ``s >= 1`` (``(k, 1, 1)``, float64) with ``|x / s| < 2^bits``, ``x`` ``(k, n, d)``.

    ``s = 1`` where ``x`` is already below ``2^bits``. Dividing by ``s`` is exact (barring results below
    float64's normal range), so sums of ``x / s`` (``bits = 1``) or, with ``bits = 480``, squared distances
    and Gram matrices of ``x / s`` (up to ``2^962 d``) cannot overflow float64 and rank as those of ``x``.
    """
    top = x.detach().abs().amax(dim=(-2, -1)).double()
    exponent = (torch.frexp(top).exponent - bits).clamp_min(0)
    return torch.ldexp(torch.ones_like(top), exponent).view(-1, 1, 1)


def row_norms(x: Tensor) -> tuple[Tensor, Tensor]:
    """Euclidean norms ``(k, n)`` of the rows of a ``(k, n, d)`` batch in float64, and a second key ``(k, n)``.

    A norm beyond float64's range is ``inf``; in the problems that have one, the second key holds the
    norms of ``x / s`` (:func:`binary_scale`), which rank the overflowing norms among themselves (elsewhere it
    is 0). Ordering rows by ``(norm, key)`` is ordering them by their exact norms.
    """
    norms = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64)
    key = torch.zeros_like(norms)
    over = norms.isinf().any(dim=-1)
    if over.any():
        y = x[over].double()
        key[over] = torch.linalg.vector_norm(y / binary_scale(y), dim=-1)
    return norms, key


def clipped_count(n: int, f: int) -> int:
    """ARC clips ``floor(2 (f / n) (n - f))`` vectors, computed exactly as ``2 f (n - f) // n``."""
    return 2 * f * (n - f) // n


class AdaptiveRobustClipping(PreAggregator):
    """Clip the ``m = floor(2 (f/n) (n - f))`` largest vectors to the largest norm among the others:

    ``y_i = x_i * min(1, tau / ||x_i||)``, ``tau = ||x||_(n-m)`` the ``(n - m)``-th smallest norm.

    Equal norms need no tie break: a vector whose norm equals ``tau`` is unchanged whether it is
    counted among the clipped or not, so the output is a function of the multiset of inputs row by
    row (permutation equivariant, row ``i`` from row ``i``). ``m = 0`` (e.g. ``f = 0``) returns a copy.
    Norms are float64 and exact (:func:`row_norms` ranks norms that overflow float64 among themselves); a
    clipped row is ``tau`` times the unit vector ``x_i / ||x_i||`` in float64 (a factor ``tau / ||x_i||`` could
    fall into the subnormals); rows at or below ``tau`` come back bit for bit. Requires ``n > 2f`` (the
    paper's ``f < n/2``; ByzFL accepts ``f <= n``).
    """

    name = "arc"
    requirement = "n > 2f"

    def min_n(self) -> int:
        return 2 * self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        m = clipped_count(n, self.f)
        if m == 0:
            return x.clone()
        norms, key = row_norms(x)
        cut = sort_by(norms, key.argsort(dim=-1, stable=True))[..., n - m - 1 : n - m]  # the (n-m)-th smallest
        tau, tau_key = norms.gather(-1, cut), key.gather(-1, cut)
        clip = (norms > tau) | ((norms == tau) & (key > tau_key))
        rows = x[clip].double()
        unit = rows / rows.abs().amax(dim=-1, keepdim=True)
        unit = unit / torch.linalg.vector_norm(unit, dim=-1, keepdim=True)  # x_i / ||x_i||, also where that overflows
        tau, tau_key = tau.expand_as(norms)[clip].unsqueeze(-1), tau_key.expand_as(norms)[clip].unsqueeze(-1)
        top = torch.finfo(x.dtype).max
        clipped = torch.where(tau.isfinite(), unit * tau, rows * (tau_key / key[clip].unsqueeze(-1)))
        out = x.clone()
        out[clip] = clipped.clamp(-top, top).to(x.dtype)
        return out
