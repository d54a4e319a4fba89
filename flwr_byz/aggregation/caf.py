"""Covariance-bound agnostic filter (Allouah, Guerraoui and Stephan, ICML 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_byz.aggregation.arc import binary_scale
from flwr_byz.aggregation.base import CHUNK, Rule
from flwr_byz.aggregation.meamed import weighted_average


def centred_gram(x: Tensor, scale: Tensor, p: Tensor) -> Tensor:
    """``G_ij = (y_i - mu) . (y_j - mu)`` ``(k, n, n)`` in float64, ``y = x / scale``, ``mu = sum_i p_i y_i``.

    Direct differences from the weighted mean, block by block of ``CHUNK`` coordinates (no ``(k, n, d)``
    float64 copy, no Gram-matrix cancellation between a far mean and a small spread).
    """
    k, n, d = x.shape
    gram = torch.zeros(k, n, n, dtype=torch.float64, device=x.device)
    for start in range(0, d, CHUNK):
        y = x[..., start : start + CHUNK].double() / scale
        centred = y - (p.unsqueeze(-2) @ y)
        gram += centred @ centred.mT
    return gram


def top_eigenpairs(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """The largest eigenvalue ``(k,)`` and a unit eigenvector ``(k, n)`` of each symmetric ``(n, n)`` matrix.

    One ``eigh`` per matrix: batched ``eigh`` rounds differently from single ones, and a batch must give
    what its problems give one by one.
    """
    pairs = [torch.linalg.eigh(matrix) for matrix in matrices]
    return torch.stack([values[-1] for values, _ in pairs]), torch.stack([vectors[:, -1] for _, vectors in pairs])


class CovarianceBoundAgnosticFilter(Rule):
    """Filter by the top eigenvector of the weighted covariance; output the mean of least top eigenvalue.

    Weights ``c = 1``; while ``sum_i c_i > n - 2f``: ``mu = sum_i c_i x_i / sum_i c_i``,
    ``Sigma = sum_i c_i (x_i - mu)(x_i - mu)^T / sum_i c_i`` with top eigenpair ``(lambda, v)``,
    ``tau_i = ((x_i - mu) . v)^2``, ``c_i <- c_i (1 - tau_i / max_{j: c_j > 0} tau_j)``. Output the ``mu``
    of the smallest ``lambda`` met (the first on exact ties); ``f = 0``: the mean.

    The eigenpair is exact: ``lambda`` and ``u`` from ``eigh`` of the ``n x n`` matrix
    ``A_ij = sqrt(c_i c_j) G_ij / sum c`` (``G`` the Gram matrix of the centred vectors, :func:`centred_gram`;
    ``A`` has the nonzero spectrum of ``Sigma``), and ``(x_i - mu) . v = (G w)_i / sqrt(lambda)`` with
    ``w = u sqrt(c / sum c)``; ByzFL takes one power-iteration step from a random Gaussian vector instead.
    ``tau_max`` is over the vectors still weighted, so each step removes one and at most ``2f`` steps run;
    ByzFL's maximum over all vectors lets an already removed outlier dwarf every other ``tau``, and its loop
    then runs for ~(outlier distance / spread)^2 steps. A zero covariance (equal weighted vectors) stops the
    loop at that mean. Everything runs in float64 on ``x / s``, ``s`` a power of two that brings ``|x|``
    below ``2^480`` (:func:`~flwr_byz.aggregation.arc.binary_scale`; 1 for float32 inputs), so no Gram entry
    overflows and the output is finite for finite inputs (next to rows near float64's maximum, rows below
    ~2^-60 of it have no covariance of their own). Cost O(f k n^2 d + f k n^3); permutation invariant up to
    rounding where the top eigenvalue is simple. Requires ``n > 2f``.
    """

    name = "caf"
    requirement = "n > 2f"

    def min_n(self) -> int:
        return 2 * self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        k, n, _ = x.shape
        scale = binary_scale(x, bits=480)
        c = torch.ones(k, n, dtype=torch.float64, device=x.device)
        best_c, best = c.clone(), torch.full((k,), torch.inf, dtype=torch.float64, device=x.device)
        active = c.sum(dim=-1) > n - 2 * self.f
        while active.any():
            p = c / c.sum(dim=-1, keepdim=True)
            gram = centred_gram(x, scale, p)
            root = p.sqrt()
            top, u = top_eigenpairs(root.unsqueeze(-1) * gram * root.unsqueeze(-2))
            better = active & (top < best)
            best = torch.where(better, top, best)
            best_c = torch.where(better.unsqueeze(-1), c, best_c)
            spread = top > 0
            projection = (gram @ (u * root).unsqueeze(-1)).squeeze(-1)  # sqrt(lambda) (x_i - mu) . v
            tau = (projection / torch.where(spread, top, 1.0).sqrt().unsqueeze(-1)).square()
            tau_max = tau.masked_fill(c <= 0, 0.0).amax(dim=-1, keepdim=True)
            step = active & spread & (tau_max.squeeze(-1) > 0)
            shrink = (1 - tau / torch.where(tau_max > 0, tau_max, 1.0)).clamp_min(0)
            c = torch.where(step.unsqueeze(-1), c * shrink, c)
            active = step & (c.sum(dim=-1) > n - 2 * self.f)
        return weighted_average(x, (best_c / best_c.sum(dim=-1, keepdim=True)).to(x.dtype).unsqueeze(-1), 1.0)
