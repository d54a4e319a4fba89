"""Bucketing (Karimireddy et al., 2022)."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from flwr_byz.seeds import seeded_generator
from flwr_byz.aggregation.base import PreAggregator


class Bucketing(PreAggregator):
    """Shuffle the ``n`` vectors and average them in ``ceil(n / s)`` buckets of size ``s``.

    The last bucket may hold fewer vectors. At most ``f`` buckets contain a Byzantine vector,
    so the following rule keeps its ``f``. The permutation of round ``t`` (:meth:`for_round`;
    round 0 if never given) is ``torch.randperm(n, generator=seeded_generator(seed, t, "bucketing"))``:
    a pure function of ``(seed, t)``, shared by the whole batch and by every copy of the rule
    (the server's and the adversary's see the same buckets). A bucket mean is a sum of
    ``x_i / s``, finite for finite inputs.
    """

    name = "bucketing"

    def __init__(self, f: int, s: int = 2, seed: int = 0) -> None:
        super().__init__(f)
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"bucketing needs a bucket size s >= 1, got {s!r}")
        self.s, self.seed, self.round = s, seed, 0

    def for_round(self, t: int) -> Bucketing:
        """A copy that draws the buckets of round ``t``."""
        stage = copy.copy(self)
        stage.round = t
        return stage

    def output_n(self, n: int) -> int:
        return math.ceil(n / self.s)

    def permutation(self, n: int) -> Tensor:
        """The order ``(n,)`` in which this round's buckets take the vectors."""
        return torch.randperm(n, generator=seeded_generator(self.seed, self.round, "bucketing"))

    def _apply(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        full = (n // self.s) * self.s
        sizes = torch.full((n, 1), self.s, dtype=x.dtype, device=x.device)
        sizes[full:] = n - full
        shuffled = x[:, self.permutation(n).to(x.device)].div_(sizes)
        buckets = [shuffled[:, :full].unflatten(-2, (n // self.s, self.s)).sum(dim=-2)]
        if full < n:
            buckets.append(shuffled[:, full:].sum(dim=-2, keepdim=True))
        return torch.cat(buckets, dim=-2)

    def __repr__(self) -> str:
        return f"Bucketing(f={self.f}, s={self.s}, seed={self.seed}, round={self.round})"
