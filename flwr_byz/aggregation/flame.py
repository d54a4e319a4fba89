"""FLAME (Nguyen et al., USENIX Security 2022).

The clustering is scikit-learn's ``HDBSCAN`` (scikit-learn >= 1.3): scikit-learn is already a runtime
dependency, maintained, and needs no extra compiled package (the paper used the ``hdbscan`` package).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from sklearn.cluster import HDBSCAN
from torch import Tensor

from flwr_byz.aggregation.base import CHUNK, Rule
from flwr_byz.aggregation.dnc import average
from flwr_byz.aggregation.signguard import clip_factors, largest_cluster, log_median, log_norms, row_scales
from flwr_byz.seeds import seeded_generator


def cosine_distances(x: Tensor) -> Tensor:
    """``1 - <x_i, x_j> / (||x_i|| ||x_j||)`` ``(k, n, n)`` in float64, clamped to ``[0, 2]``, symmetric bit for
    bit with a zero diagonal. The unit rows are ``(x_i / top_i) / r_i`` (:func:`row_scales`: no overflow for
    finite rows of any magnitude), summed over blocks of ``CHUNK`` coordinates; a zero row is at distance 1 from
    every other row."""
    top, r = row_scales(x)
    r = r.clamp_min(torch.finfo(torch.float64).tiny)
    gram = torch.zeros(*x.shape[:-1], x.shape[-2], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[-1], CHUNK):
        u = x[..., start : start + CHUNK].to(torch.float64) / top / r
        gram += u @ u.mT
    upper = (1.0 - gram).clamp(0.0, 2.0).triu(1)
    return upper + upper.mT


class Flame(Rule):
    """Cluster, clip, average, add noise:

    * ``HDBSCAN(min_cluster_size = floor(n/2) + 1, min_samples = 1, allow_single_cluster = True)`` on the
      cosine distances ``1 - cos(x_i, x_j)`` (:func:`cosine_distances`); ``S`` = the majority cluster (at most
      one cluster has more than ``n/2`` rows; ``S`` is empty if HDBSCAN finds none, all rows if ``n = 1``).
    * ``M`` = the median of the ``n`` norms ``||x_i||`` (numpy semantics), and
      ``F = (1/|S|) sum_{i in S} x_i min(1, M / ||x_i||) + M * noise * z``, ``z ~ N(0, I_d)`` (zero if ``S`` is
      empty, plus the noise).

    ``noise`` is the paper's ``lambda`` (default 0.001, its value for image classification); ``noise = 0``
    makes the rule deterministic. ``z`` of round ``t`` (:meth:`for_round`; round 0 if never given) is
    ``torch.randn(d, generator=seeded_generator(seed, t, "flame"), dtype=float64)``: a pure function of
    ``(seed, t, d)``, the same for every problem of a batch and every copy of the rule. ``f`` is only checked
    (``n > 2f``). Norms are float64 logs (:func:`~flwr_byz.aggregation.signguard.log_norms`); the output is
    clamped to the dtype's finite range. Symmetric (permutation invariant) up to summation order and the
    clustering's handling of exactly equal distances. Cost: ``O(n^2 d)`` distances, then HDBSCAN on
    ``n x n`` (``O(n^2)``) per problem on the CPU, one problem of a batch after another.
    """

    name = "flame"
    requirement = "n > 2f"

    def __init__(self, f: int, noise: float = 0.001, seed: int = 0) -> None:
        super().__init__(f)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise < math.inf:
            raise ValueError(f"FLAME needs a noise level (lambda) >= 0, got noise={noise!r}")
        self.noise, self.seed, self.round = float(noise), seed, 0
        self._z: dict[tuple[int, str], Tensor] = {}

    def min_n(self) -> int:
        return 2 * self.f + 1

    def for_round(self, t: int) -> Flame:
        """A copy that draws the noise of round ``t``."""
        stage = copy.copy(self)
        stage.round, stage._z = t, {}
        return stage

    def draw(self, d: int, device: torch.device | str = "cpu") -> Tensor:
        """This round's standard normal ``z`` ``(d,)`` in float64."""
        key = (d, str(device))
        if key not in self._z:
            gen = seeded_generator(self.seed, self.round, "flame")
            self._z[key] = torch.randn(d, generator=gen, dtype=torch.float64).to(device)
        return self._z[key]

    def kept(self, x: Tensor) -> Tensor:
        """The rows ``(k, n)`` of the majority cluster, as a boolean mask."""
        n = x.shape[-2]
        if n == 1:
            return torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        clustering = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed",
                             allow_single_cluster=True, copy=True)
        masks = []
        for dist in cosine_distances(x).cpu().numpy():
            labels = clustering.fit(dist).labels_
            masks.append(largest_cluster(labels, np.zeros((n, 1))))
        return torch.from_numpy(np.stack(masks)).to(x.device)

    def _apply(self, x: Tensor) -> Tensor:
        logs = log_norms(x)
        log_m = log_median(logs)
        out = average(x, self.kept(x), clip_factors(logs, log_m))
        if self.noise == 0:
            return out
        sigma = (self.noise * log_m.exp()).clamp(max=torch.finfo(torch.float64).max)
        top = torch.finfo(x.dtype).max
        return (out.to(torch.float64) + sigma * self.draw(x.shape[-1], x.device)).clamp(-top, top).to(x.dtype)

    def __repr__(self) -> str:
        return f"Flame(f={self.f}, noise={self.noise:g}, seed={self.seed}, round={self.round})"
