"""Derivative-free maximisers of JUMP's batched objective ``phi: (k,) lambdas -> (k,) values``.

``phi`` may be non-smooth and multi-modal (robust rules are piecewise); NaN
values must already be mapped to ``-inf``. A solver is called as
``solver(phi, spread)`` and returns ``(lambda, phi(lambda))``; ``spread`` is the
honest vectors' relative radius ``max_i ||g_i - gbar|| / ||gbar||``: the copies
``lambda gbar`` sit among the honest vectors for ``|lambda - 1| <= spread``,
where robust rules react to them most irregularly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from flwr_byz.attacks.span import sides

BatchedFn = Callable[[np.ndarray], np.ndarray]

_BIG = 1e300  # finite stand-in for infinite values inside scipy's solvers


def _negated(phi: BatchedFn) -> Callable[[float], float]:
    """Scalar ``-phi`` clipped to finite values, for scipy's minimisers."""

    def fun(x: float | np.ndarray) -> float:
        return float(np.clip(-phi(np.atleast_1d(np.asarray(x, dtype=np.float64)))[0], -_BIG, _BIG))

    return fun


def best_index(xs: np.ndarray, ys: np.ndarray) -> int:
    """Index of the largest value; ties go to the smallest ``|x|`` (the mildest attack)."""
    top = np.flatnonzero(ys == ys.max())
    return int(top[np.argmin(np.abs(xs[top]))])


@dataclass(frozen=True)
class Powell:
    """The paper's solver: ``scipy.optimize.minimize(method="Powell")`` on ``-phi`` from ``start``, unbounded.

    It finds a local maximum near ``start``, one sequential ``phi`` call per step,
    and ignores ``spread``.
    """

    start: float = 1.0

    def __call__(self, phi: BatchedFn, spread: float) -> tuple[float, float]:
        res = minimize(_negated(phi), x0=np.array([self.start]), method="Powell")
        value = -float(res.fun)
        return float(np.atleast_1d(res.x)[0]), value if abs(value) < _BIG else math.copysign(math.inf, value)


@dataclass(frozen=True)
class GlobalSearch:
    """Batched grid over both signs, open-ended tails, then batched multisection around the best peaks.

    1. Grid, scored in one call: ``0``, ``1``, ``inlier_points`` evenly spaced over
       the inlier range ``1 +- inlier_width * spread`` (the copies among the honest
       vectors, where robust rules react to them most irregularly) and, outside it,
       ``+-lam`` for ``lam`` log-spaced over ``[lam_min, lam_max]`` with ``per_decade``
       points per decade (the copies are outliers there: rules saturate or damp them).
    2. Tails: while the best point is the outermost one, score one more decade
       outward (one call each), up to ``|lambda| = lam_cap``.
    3. Up to ``rounds`` times, one call each: for each of the ``peaks`` best sampled
       local maxima, split the intervals to its two scored neighbours into
       ``splits + 1`` equal parts and score the ``2 * splits`` new points (the bracket
       of the best point shrinks ``splits + 1`` times per round), skipping intervals
       shorter than ``(splits + 1) * xtol * max(1, |lambda|)``. Robust rules make ``phi``
       a sawtooth (each change of a neighbour set or of the selected vector is a
       jump), which this batched multisection climbs where parabolic or
       golden-section steps stall on the jumps, in few calls.
       Where ``phi`` knows its jumps (``phi.breakpoints``: sorted lambdas, see
       ``span.SpanAggregation.breakpoints``) and a bracket holds at most ``piece_ends``
       of them, both sides of each are scored instead: ``phi`` is continuous between
       jumps, so a tooth's top is at one of its ends (or inside, found by later rounds).

    The result is the best point ever scored (ties: smallest ``|lambda|``).
    """

    lam_min: float = 0.1
    lam_max: float = 1e3
    lam_cap: float = 1e12
    per_decade: int = 1
    inlier_points: int = 10
    inlier_width: float = 2.0
    peaks: int = 1
    rounds: int = 4
    splits: int = 2
    piece_ends: int = 4
    xtol: float = 1e-8

    def __post_init__(self) -> None:
        if not (0 < self.lam_min < self.lam_max <= self.lam_cap < math.inf):
            raise ValueError(
                f"need 0 < lam_min < lam_max <= lam_cap < inf, got {self.lam_min}, {self.lam_max}, {self.lam_cap}"
            )
        counts = (self.inlier_points, self.rounds, self.piece_ends)
        if min(self.per_decade, self.peaks, self.splits) < 1 or min(counts) < 0:
            raise ValueError("need per_decade, peaks, splits >= 1 and inlier_points, rounds, piece_ends >= 0")
        if not (self.xtol > 0 and self.inlier_width > 0):
            raise ValueError("need inlier_width > 0 and xtol > 0")

    def grid(self, spread: float) -> np.ndarray:
        """The sorted first-stage grid for honest vectors of relative radius ``spread``."""
        lo, hi = math.log10(self.lam_min), math.log10(self.lam_max)
        mags = np.logspace(lo, hi, max(2, round((hi - lo) * self.per_decade) + 1))
        width = min(self.inlier_width * spread, self.lam_max) if math.isfinite(spread) else 0.0
        inliers = np.linspace(1 - width, 1 + width, self.inlier_points) if width > 0 else np.empty(0)
        logs = np.concatenate([-mags, mags])
        return np.unique(np.concatenate([logs[np.abs(logs - 1) > width], [0.0, 1.0], inliers]))

    def __call__(self, phi: BatchedFn, spread: float) -> tuple[float, float]:
        xs = self.grid(spread)
        xs, ys = self._tails(phi, xs, phi(xs))
        breaks = getattr(phi, "breakpoints", None)
        for _ in range(self.rounds):
            new = self._refinements(xs, ys, breaks)
            if not len(new):
                break
            xs, ys = _merge(xs, ys, new, phi(new))
        i = best_index(xs, ys)
        return float(xs[i]), float(ys[i])

    def _tails(self, phi: BatchedFn, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Extend the grid outward, a decade per call, while its outermost point is the best."""
        ratio = 10.0 ** (1.0 / self.per_decade)
        while True:
            i = best_index(xs, ys)
            if 0 < i < len(xs) - 1 or abs(xs[i]) >= self.lam_cap:
                return xs, ys
            new = np.unique(np.clip(xs[i] * ratio ** np.arange(1, self.per_decade + 1), -self.lam_cap, self.lam_cap))
            xs, ys = _merge(xs, ys, new, phi(new))

    def _refinements(self, xs: np.ndarray, ys: np.ndarray, breaks: np.ndarray | None) -> np.ndarray:
        """New points between the ``peaks`` best local maxima and their neighbours (step 3)."""
        out: list[float] = []
        for i in _local_maxima(xs, ys)[: self.peaks]:
            lo, hi = xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)]
            inside = breaks[(breaks > lo) & (breaks < hi)] if breaks is not None else np.empty(0)
            ends = np.setdiff1d(np.concatenate(sides(inside)), xs)
            if 0 < len(inside) <= self.piece_ends and len(ends):
                out += list(ends)
                continue
            tol = self.xtol * max(1.0, abs(xs[i]))
            for j in (i - 1, i + 1):
                if 0 <= j < len(xs) and abs(xs[j] - xs[i]) > (self.splits + 1) * tol:
                    out += list(xs[i] + (xs[j] - xs[i]) * np.arange(1, self.splits + 1) / (self.splits + 1))
        return np.unique(out)


def _local_maxima(xs: np.ndarray, ys: np.ndarray) -> list[int]:
    """Indices of the sampled local maxima, best first (the global best always first).

    A local maximum beats its left neighbour strictly and its right one weakly,
    so a plateau counts once, at its left end.
    """
    left = np.concatenate([[True], ys[1:] > ys[:-1]])
    right = np.concatenate([ys[:-1] >= ys[1:], [True]])
    peaks = np.flatnonzero(left & right)
    b = best_index(xs, ys)
    return [b] + [int(i) for i in peaks[np.argsort(-ys[peaks], kind="stable")] if i != b]


def _merge(xs: np.ndarray, ys: np.ndarray, new_x: np.ndarray, new_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sets of scored points, sorted by ``x``."""
    x, y = np.concatenate([xs, new_x]), np.concatenate([ys, new_y])
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


SOLVERS: dict[str, type[Powell] | type[GlobalSearch]] = {"global": GlobalSearch, "powell": Powell}
