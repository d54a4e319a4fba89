"""Bucketing (Karimireddy et al., 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import PreAggregator


class Bucketing(PreAggregator):
    """Shuffle the ``n`` vectors and average them in ``ceil(n / s)`` buckets of size ``s``.

    The last bucket may hold fewer vectors. One random permutation per call,
    shared by the whole batch, drawn from a generator seeded with ``seed``.
    At most ``f`` buckets contain a Byzantine vector, so the following rule
    keeps its ``f``.
    """

    name = "bucketing"

    def __init__(self, f: int, s: int = 2, seed: int = 0) -> None:
        super().__init__(f)
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"bucketing needs a bucket size s >= 1, got {s!r}")
        self.s = s
        self.generator = torch.Generator().manual_seed(seed)

    def output_n(self, n: int) -> int:
        return math.ceil(n / self.s)

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        order = torch.randperm(n, generator=self.generator).to(x.device)
        shuffled = x[:, order]
        full = (n // self.s) * self.s
        buckets = [shuffled[:, :full].unflatten(-2, (n // self.s, self.s)).mean(dim=-2)]
        if full < n:
            buckets.append(shuffled[:, full:].mean(dim=-2, keepdim=True))
        return torch.cat(buckets, dim=-2)

    def __repr__(self) -> str:
        return f"Bucketing(f={self.f}, s={self.s})"
