"""Arithmetic mean (not robust; the f = 0 baseline), optionally weighted per reply as Flower's FedAvg."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from flwr_byz.aggregation.base import Rule


def reply_weights(weights: Sequence[float] | Tensor | None, rule: str) -> Tensor | None:
    """``weights`` as a float64 CPU tensor ``(n,)`` (``None`` stays ``None``).

    Raises ``ValueError`` (naming ``rule``) unless they are a one-dimensional sequence of real
    numbers, all finite and non-negative, with a positive finite sum. Their length is checked against the
    rows the rule receives at call time (:meth:`Weighted.check_weights`).
    """
    if weights is None:
        return None
    where = f"{rule.upper()} weights"
    if isinstance(weights, Tensor):
        w = weights.detach()
        if w.dtype == torch.bool or w.is_complex():
            raise ValueError(f"{where} must be real numbers, got dtype {w.dtype}")
    else:
        try:
            array = np.asarray(weights)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where} must be a sequence of non-negative numbers, got {weights!r}") from exc
        if array.dtype.kind == "b" or array.dtype.kind == "c":
            raise ValueError(f"{where} must be real numbers, got dtype {array.dtype}")
        if array.dtype.kind not in "iuf":
            raise ValueError(f"{where} must be a sequence of non-negative numbers, got {weights!r}")
        w = torch.from_numpy(array.astype(np.float64))  # Python floats stay float64 (as_tensor would round to float32)
    if w.dim() != 1:
        raise ValueError(f"{where} must be one-dimensional (one weight per reply), got shape {tuple(w.shape)}")
    w = w.to(device="cpu", dtype=torch.float64)
    if not bool(w.isfinite().all()):
        raise ValueError(f"{where} must be finite, got {w.tolist()}")
    if bool((w < 0).any()):
        raise ValueError(f"{where} must be non-negative, got {w.tolist()}")
    if not 0 < float(w.sum()) < math.inf:
        raise ValueError(f"{where} must have a positive (finite) sum, got {w.tolist()}")
    return w


def weighted_mean(x: Tensor, w: Tensor) -> Tensor:
    """``sum_i p_i x_i`` with ``p = w / sum(w)`` (float64, then the dtype of ``x``): rows ``(..., m, d)``
    and weights ``(..., m)`` (or ``(m,)`` shared by every problem) -> ``(..., d)``. Flower's
    ``aggregate_arrayrecords`` computes the same ``p`` (Python floats) before its sum."""
    p = (w / w.sum(dim=-1, keepdim=True)).to(device=x.device, dtype=x.dtype)
    return (p.unsqueeze(-2) @ x).squeeze(-2)


class Weighted:
    """Mixin of the rules that weigh their rows by reply weights (Flower's ``weighted_by_key``).

    ``weights`` (``None``: equal weights, the plain rule) holds one non-negative finite weight per
    row the rule receives, in the order of those rows: for a stack in the defence's reply order,
    the ``num-examples`` of each reply in that order. The same weights apply to every problem of a
    ``(k, n, d)`` batch.
    """

    name: ClassVar[str]
    weights: Tensor | None

    def check_weights(self, n: int) -> None:
        """Raise ``ValueError`` if the weights are not one per row of an ``n``-row input."""
        if self.weights is not None and len(self.weights) != n:
            raise ValueError(
                f"{self.name.upper()} has {len(self.weights)} weights but receives n={n} rows: "
                f"pass one weight per row, in the order of the rows"
            )

    def check(self, n: int) -> None:
        super().check(n)  # type: ignore[misc]
        self.check_weights(n)

    def _weights(self, n: int, device: torch.device) -> Tensor:
        """The validated weights ``(n,)`` in float64 on ``device``."""
        assert self.weights is not None
        self.check_weights(n)
        return self.weights.to(device)

    def _weights_repr(self) -> str:
        return "" if self.weights is None else f", weights={self.weights.tolist()}"


class Mean(Weighted, Rule):
    """``F(x_1..x_n) = (1/n) sum_i x_i``; ignores ``f``.

    With ``weights`` ``w`` (Flower's FedAvg, ``w_i`` the ``num-examples`` of reply ``i``):
    ``F(x_1..x_n) = sum_i w_i x_i / sum_i w_i``, computed as ``sum_i p_i x_i`` with
    ``p = w / sum(w)`` as Flower does. ``weights=None`` is the plain mean, bit for bit.
    Because ``sum_i p_i = 1``, Flower's weighted average of the models ``theta_i = theta - gamma g_i``
    is ``theta - gamma F(g_1..g_n)``: the same weighted mean in the pseudo-gradient view.
    """

    name = "mean"

    def __init__(self, f: int, weights: Sequence[float] | Tensor | None = None) -> None:
        super().__init__(f)
        self.weights = reply_weights(weights, self.name)

    def _apply(self, x: Tensor) -> Tensor:
        if self.weights is None:
            return x.mean(dim=-2)
        return weighted_mean(x, self._weights(x.shape[-2], x.device))

    def __repr__(self) -> str:
        return f"Mean(f={self.f}{self._weights_repr()})"
