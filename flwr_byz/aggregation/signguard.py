"""SignGuard (Xu et al., ICDCS 2022), with the norm helpers it shares with FLAME.

The sign features are clustered by scikit-learn's ``MeanShift`` (or ``DBSCAN``): scikit-learn is
already a runtime dependency, maintained, and needs no extra compiled package.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
from sklearn.cluster import DBSCAN, MeanShift, estimate_bandwidth
from torch import Tensor

from flwr_byz.aggregation.base import CHUNK, Rule
from flwr_byz.aggregation.dnc import average
from flwr_byz.seeds import seeded_generator

CLUSTERINGS = ("meanshift", "dbscan")
DBSCAN_EPS, DBSCAN_MIN_SAMPLES = 0.05, 2  # the official code's DBSCAN settings


def row_scales(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(top, r)``, float64 ``(k, n, 1)`` each, with ``||x_i|| = top_i r_i``: ``top_i = max_j |x_ij|`` (at least the
    smallest normal float64) and ``r_i = ||x_i / top_i||`` in ``[1, sqrt(d)]`` (0 for a zero row). Neither
    overflows nor underflows for finite rows of any magnitude; summed over blocks of ``CHUNK`` coordinates
    (``O(k n CHUNK)`` extra memory)."""
    top = torch.maximum(x.amax(dim=-1, keepdim=True), -x.amin(dim=-1, keepdim=True)).to(torch.float64)
    top = top.clamp_min(torch.finfo(torch.float64).tiny)
    squares = torch.zeros_like(top)
    for start in range(0, x.shape[-1], CHUNK):
        squares += (x[..., start : start + CHUNK].to(torch.float64) / top).square().sum(dim=-1, keepdim=True)
    return top, squares.sqrt()


def log_norms(x: Tensor) -> Tensor:
    """``log ||x_i||`` ``(k, n)`` in float64 (``-inf`` for zero rows), from :func:`row_scales`."""
    top, r = row_scales(x)
    return (top.log() + r.log()).squeeze(-1)


def log_median(logs: Tensor) -> Tensor:
    """``log`` of the median ``(k, 1)`` of the values whose logs are ``logs`` ``(k, n)``; for even ``n`` the mean of
    the two middle values (numpy semantics)."""
    ranked = logs.sort(dim=-1).values
    n = logs.shape[-1]
    if n % 2:
        return ranked[..., n // 2 : n // 2 + 1]
    pair = torch.logaddexp(ranked[..., n // 2 - 1], ranked[..., n // 2]) - math.log(2.0)
    return pair.unsqueeze(-1)


def clip_factors(logs: Tensor, log_bound: Tensor) -> Tensor:
    """``min(1, M / ||x_i||)`` ``(k, n)`` in float64, ``M = exp(log_bound)`` ``(k, 1)``, ``logs`` from :func:`log_norms`
    (1 for zero rows): the factors that clip every row to norm ``M``."""
    return torch.where(logs == -math.inf, 1.0, (log_bound - logs).exp().clamp(max=1.0))


def largest_cluster(labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The mask ``(n,)`` of the largest cluster (labels ``>= 0``; ``-1`` is noise); none if there is no cluster.

    Equal sizes go to the cluster holding the lexicographically smallest feature row, which depends on the
    features only (not on the order of the rows, nor on the clustering's label numbering).
    """
    best, best_key = None, None
    for label in np.unique(labels[labels >= 0]):
        members = features[labels == label]
        key = (-len(members), min(map(tuple, members.tolist())))
        if best_key is None or key < best_key:
            best, best_key = label, key
    return labels == best if best is not None else np.zeros(len(labels), dtype=bool)


class SignGuard(Rule):
    """Keep the rows that pass both filters, clip them to the median norm and average them.

    * Norm filter: ``lower * M <= ||x_i|| <= upper * M``, ``M`` the median of the ``n`` norms (``[0.1, 3]``).
    * Sign filter: on a window of ``w = max(1, floor(window * d))`` consecutive coordinates starting at ``s``,
      each row's fractions of positive, zero and negative entries, each divided by its maximum over the rows
      (0 where that is 0), are clustered by ``MeanShift`` (bandwidth ``estimate_bandwidth(quantile=0.5)`` over
      all rows, bin seeding, orphans unclustered) or ``DBSCAN(eps=0.05, min_samples=2)``; the largest cluster
      passes (:func:`largest_cluster`). A zero bandwidth (fewer than 4 rows, or over half the features equal)
      makes each set of equal features a cluster.
    * Output: ``(1/|S|) sum_{i in S} x_i min(1, M / ||x_i||)`` over the rows ``S`` passing both (zero if none).

    The window of round ``t`` (:meth:`for_round`; round 0 if never given) starts at
    ``s = torch.randint(d - w + 1, generator=seeded_generator(seed, t, "signguard"))``: a pure function of
    ``(seed, t, d)``, shared by the batch and every copy of the rule. ``f`` is only checked (``n > 2f``).
    Norms are float64 logs of row-scaled norms (:func:`log_norms`), so finite inputs of any magnitude neither
    overflow nor lose the honest norms. Symmetric (permutation invariant) up to summation order, as far as
    the clustering is (DBSCAN's border points go to the first cluster reaching them). Cost: ``O(n d)`` plus
    the clustering of ``n`` points in ``R^3`` (``O(n^2)``), one problem of a batch after another, on the CPU.
    """

    name = "signguard"
    requirement = "n > 2f"

    def __init__(self, f: int, lower: float = 0.1, upper: float = 3.0, window: float = 0.1,
                 clustering: str = "meanshift", seed: int = 0) -> None:
        super().__init__(f)
        numbers = (lower, upper, window)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise ValueError(f"SignGuard lower, upper and window are numbers, got {numbers!r}")
        if not 0.0 <= lower <= 1.0 <= upper < math.inf:
            raise ValueError(f"SignGuard needs 0 <= lower <= 1 <= upper < inf (a band around the median norm), "
                             f"got lower={lower!r}, upper={upper!r}")
        if not 0.0 < window <= 1.0:
            raise ValueError(f"SignGuard window is a fraction of the coordinates in (0, 1], got window={window!r}")
        if clustering not in CLUSTERINGS:
            raise ValueError(f"SignGuard clustering must be one of {', '.join(CLUSTERINGS)}; got {clustering!r}")
        self.lower, self.upper, self.window, self.clustering = float(lower), float(upper), float(window), clustering
        self.seed, self.round = seed, 0

    def min_n(self) -> int:
        return 2 * self.f + 1

    def for_round(self, t: int) -> SignGuard:
        """A copy that draws the window of round ``t``."""
        stage = copy.copy(self)
        stage.round = t
        return stage

    def coordinates(self, d: int) -> slice:
        """This round's window of coordinates."""
        w = max(1, int(self.window * d))
        start = int(torch.randint(d - w + 1, (1,), generator=seeded_generator(self.seed, self.round, "signguard")))
        return slice(start, start + w)

    def sign_features(self, x: Tensor) -> np.ndarray:
        """The normalised sign fractions ``(k, n, 3)`` (positive, zero, negative) on this round's window."""
        block = x[..., self.coordinates(x.shape[-1])]
        counts = torch.stack([(block > 0).sum(-1), (block == 0).sum(-1), (block < 0).sum(-1)], dim=-1)
        fractions = counts.cpu().numpy().astype(np.float64) / block.shape[-1]
        top = fractions.max(axis=-2, keepdims=True)
        return np.divide(fractions, top, out=np.zeros_like(fractions), where=top > 0)

    def cluster(self, features: np.ndarray) -> np.ndarray:
        """Cluster labels ``(n,)`` of one problem's features (``-1``: no cluster)."""
        if self.clustering == "dbscan":
            return DBSCAN(eps=DBSCAN_EPS, min_samples=DBSCAN_MIN_SAMPLES).fit(features).labels_
        bandwidth = estimate_bandwidth(features, quantile=0.5) if len(features) > 1 else 0.0
        if not bandwidth > 0:
            return np.unique(features, axis=0, return_inverse=True)[1].reshape(-1)
        with warnings.catch_warnings():  # bin seeding falls back to the points as seeds, and says so each round
            warnings.filterwarnings("ignore", message="Binning data failed", category=UserWarning)
            return MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(features).labels_

    def norm_filter(self, logs: Tensor, log_m: Tensor) -> Tensor:
        """Rows ``(k, n)`` whose norm is within ``[lower, upper]`` times the median ``M``."""
        low = log_m + (math.log(self.lower) if self.lower > 0 else -math.inf)
        return (logs >= low) & (logs <= log_m + math.log(self.upper))

    def kept(self, x: Tensor) -> Tensor:
        """The rows ``(k, n)`` that pass both filters, as a boolean mask."""
        logs = log_norms(x)
        return self.norm_filter(logs, log_median(logs)) & self._sign_filter(x)

    def _sign_filter(self, x: Tensor) -> Tensor:
        masks = [largest_cluster(self.cluster(features), features) for features in self.sign_features(x)]
        return torch.from_numpy(np.stack(masks)).to(x.device)

    def _apply(self, x: Tensor) -> Tensor:
        logs = log_norms(x)
        log_m = log_median(logs)
        keep = self.norm_filter(logs, log_m) & self._sign_filter(x)
        return average(x, keep, clip_factors(logs, log_m))

    def __repr__(self) -> str:
        return (f"SignGuard(f={self.f}, lower={self.lower:g}, upper={self.upper:g}, window={self.window:g}, "
                f"clustering={self.clustering!r}, seed={self.seed}, round={self.round})")
