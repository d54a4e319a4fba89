"""FLTrust (Cao et al., NDSS 2021): trust scores from a server-side reference update."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from flwr_byz.aggregation.base import Rule


def unit_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x / ||x||, ||x|| > 0)`` row by row (last dimension), without overflow: each row is divided by its
    largest magnitude before its norm is taken, so rows up to the dtype's maximum give unit vectors. Zero
    rows stay zero (mask ``False``)."""
    scale = x.abs().amax(dim=-1, keepdim=True)
    nonzero = scale > 0
    scaled = x / torch.where(nonzero, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    return scaled / torch.where(nonzero, norm, torch.ones_like(norm)), nonzero.squeeze(-1)


class FLTrust(Rule):
    """The server's own update ``g_0`` (one honest step on its small root dataset, from the current model)
    scores every reply:

    ``TS_i = ReLU(cos(g_i, g_0))``, ``g_i' = g_i ||g_0|| / ||g_i||``,
    ``F(g_1, ..., g_n) = sum_i TS_i g_i' / sum_i TS_i``.

    Each reply is rescaled to ``g_0``'s norm, so the output's norm is at most ``||g_0||`` whatever the replies
    (finite for any finite input: the cosines and rescalings use unit vectors). A zero reply has no direction
    and scores 0. When every score is 0 (all replies at 90 degrees or more from ``g_0``), the output is ``g_0``
    itself: the server trusts its root data alone (the paper leaves this case undefined; its reference code
    divides by zero). ``f`` is not used (no precondition beyond one reply); the rule tolerates any number
    of Byzantine replies as far as ``g_0`` is a good direction.

    A reply enters only through its direction: ``f`` copies of ``lambda * gbar`` (JUMP's) give one output for
    every ``lambda > 0``, one for every ``lambda < 0`` and one for ``lambda = 0``, so JUMP's search against
    FLTrust is a choice of sign (three aggregations, :class:`~flwr_byz.attacks.span.SignAggregation`).

    ``reference`` is ``g_0`` ``(d,)`` (or ``(k, d)``, one per problem), given per round with
    :meth:`with_reference`; calling the rule without one raises ``ValueError``.
    """

    name = "fltrust"
    needs_reference = True

    def __init__(self, f: int, reference: Tensor | None = None) -> None:
        super().__init__(f)
        self.reference = reference

    def with_reference(self, reference: Tensor) -> FLTrust:
        """A copy that scores against ``reference`` (``g_0``)."""
        if not reference.isfinite().all():
            raise ValueError("FLTrust's reference update g0 is not finite")
        rule = copy.copy(self)
        rule.reference = reference
        return rule

    def _apply(self, x: Tensor) -> Tensor:
        if self.reference is None:
            raise ValueError("FLTrust needs the server's reference update g0 of the round: RobustStrategy(root_train=...)"
                             " on the Flower path, a root set (root-size > 0) in the paper app and the engine")
        g0 = self.reference.to(device=x.device, dtype=x.dtype).expand(x.shape[0], x.shape[-1])
        u0, _ = unit_rows(g0)
        u, nonzero = unit_rows(x)
        scores = (u.double() @ u0.double().unsqueeze(-1)).squeeze(-1).clamp(min=0) * nonzero  # (k, n)
        total = scores.sum(dim=-1, keepdim=True)
        weights = scores / torch.where(total > 0, total, torch.ones_like(total))
        direction = (weights.to(x.dtype).unsqueeze(-2) @ u).squeeze(-2)  # (k, d), norm <= 1
        out = direction * _norms(g0)
        return torch.where(total > 0, out, g0)


def _norms(x: Tensor) -> Tensor:
    """``||x||`` row by row ``(k, 1)``, computed on scaled rows (``inf`` only if the norm itself overflows)."""
    scale = x.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.linalg.vector_norm(x / safe, dim=-1, keepdim=True) * scale
