"""Static norm clipping."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import PreAggregator


class StaticClipping(PreAggregator):
    """``x_i <- x_i * min(1, c / ||x_i||)``: every vector's norm is at most ``c``."""

    name = "clipping"

    def __init__(self, f: int, c: float = 1.0) -> None:
        super().__init__(f)
        if not c > 0:
            raise ValueError(f"clipping needs a threshold c > 0, got c={c}")
        self.c = c

    def _apply(self, x: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return x * (self.c / norms.clamp_min(self.c))

    def __repr__(self) -> str:
        return f"StaticClipping(f={self.f}, c={self.c})"
