"""Static norm clipping."""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_byz.aggregation.base import PreAggregator


def clip_rows(x: Tensor, c: float) -> Tensor:
    """``x_i * min(1, c / ||x_i||)`` for each row of ``x``, also where ``||x_i||`` overflows the dtype.

    A finite row whose norm overflows is clipped as ``c * y / ||y||`` with ``y = x_i / max_j |x_ij|``
    (same direction, entries in [-1, 1]), instead of ``x_i * (c / inf) = 0``, which would silently drop it;
    infinite entries count as the dtype's maximum.
    """
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    clipped = x * (c / norms.clamp_min(c))
    overflow = norms.isinf()
    if not overflow.any():
        return clipped
    top = torch.finfo(x.dtype).max
    y = x.clamp(-top, top)  # entries that overflowed (e.g. in x_i - v) keep their sign
    y = y / y.abs().amax(dim=-1, keepdim=True)
    return torch.where(overflow, y * (c / torch.linalg.vector_norm(y, dim=-1, keepdim=True)), clipped)


class StaticClipping(PreAggregator):
    """``x_i <- x_i * min(1, c / ||x_i||)``: every vector's norm is at most ``c`` (see :func:`clip_rows`)."""

    name = "clipping"

    def __init__(self, f: int, c: float = 1.0) -> None:
        super().__init__(f)
        if not c > 0:
            raise ValueError(f"clipping needs a threshold c > 0, got c={c}")
        self.c = c

    def _apply(self, x: Tensor) -> Tensor:
        return clip_rows(x, self.c)

    def __repr__(self) -> str:
        return f"StaticClipping(f={self.f}, c={self.c})"
