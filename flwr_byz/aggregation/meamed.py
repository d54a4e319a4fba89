"""Mean around the median (Xie et al., 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_byz.aggregation.arc import binary_scale
from flwr_byz.aggregation.base import Rule
from flwr_byz.aggregation.sorting import order_statistics


def weighted_average(x: Tensor, w: Tensor, total: float) -> Tensor:
    """``sum_i w_i x_i / total`` per problem of a ``(k, n, d)`` batch (``w >= 0`` broadcastable to ``x``), ``(k, d)``.

    Meant for averages (``sum_i w_i = total``): a problem whose sum overflows the dtype is recomputed in
    float64 on ``x / s`` (:func:`~flwr_byz.aggregation.arc.binary_scale`) and clamped to the finite range, so
    finite inputs of any magnitude give a finite output.
    """
    out = (x * w).sum(dim=-2) / total
    lost = ~out.isfinite().all(dim=-1)
    if lost.any():
        y = x[lost].double()
        scale = binary_scale(y)
        weights = w.expand_as(x)[lost].double()
        top = torch.finfo(x.dtype).max
        out[lost] = ((y / scale * weights).sum(dim=-2) / total * scale.squeeze(-1)).clamp(-top, top).to(x.dtype)
    return out


class MeanAroundMedian(Rule):
    """Per coordinate, the mean of the ``n - f`` values closest to the median:

    ``F(x)_j = 1/(n-f) sum_{i in S_j} x_ij``, ``S_j`` the ``n - f`` indices of smallest ``|x_ij - med_j|``,
    ``med_j`` the coordinate-wise median (even ``n``: the mean of the two middle values).

    Exact ties at the cut (values at the same distance ``delta`` from the median, e.g. ``med - delta``
    and ``med + delta``, with fewer places left than tied values) share the remaining places equally:
    with ``b`` values strictly closer and ``t`` at ``delta``, each tied value gets weight ``(n-f-b)/t``.
    So the output is a function of each column's multiset (permutation invariant) and odd in ``x``;
    without such ties it is the plain mean of ``S_j`` (ByzFL's ``argpartition`` picks an arbitrary subset).
    Distances are ``|x/2 - med/2|`` (half the rounded ``|x - med|``, never overflowing), the median of
    two middle values ``a/2 + b/2``. Requires ``n > 2f``; O(k n d) memory; the median and the cut come from
    selection networks (``sorting``).
    """

    name = "meamed"
    requirement = "n > 2f"

    def min_n(self) -> int:
        return 2 * self.f + 1

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        h = n - self.f
        middle = (n // 2,) if n % 2 else (n // 2 - 1, n // 2)
        rows = order_statistics(x.unbind(-2), middle)
        half_median = rows[n // 2] / 2 if n % 2 else (rows[n // 2 - 1] / 2 + rows[n // 2] / 2) / 2
        dist = (x / 2 - half_median.unsqueeze(-2)).abs()
        delta = order_statistics(dist.unbind(-2), (h - 1,))[h - 1].unsqueeze(-2)  # the (n-f)-th smallest distance
        below, tied = (dist < delta).to(x.dtype), (dist == delta).to(x.dtype)  # float counts: 15x faster than bool
        share = (h - below.sum(dim=-2, keepdim=True)) / tied.sum(dim=-2, keepdim=True)
        return weighted_average(x, below + tied * share, h)
