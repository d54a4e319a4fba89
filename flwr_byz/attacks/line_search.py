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
from scipy.optimize import minimize, minimize_scalar

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
    """Batched grid over both signs, open-ended tails, batched zooms, then a bounded Brent polish.

    1. Grid, scored in one call: ``0``, ``1``, ``+-lam`` for ``lam`` log-spaced
       over ``[lam_min, lam_max]`` with ``per_decade`` points per decade, and
       ``inlier_points`` evenly spaced over ``1 +- inlier_width * spread``.
    2. Tails: while the best point is the outermost one, score one more decade
       outward (one call each), up to ``|lambda| = lam_cap``.
    3. ``zoom_rounds`` times, one call each: score ``zoom_points`` evenly spaced
       points strictly inside the brackets (evaluated neighbours) of the
       ``zoom_brackets`` best local maxima of the points scored so far.
    4. Brent's bounded method (golden section + parabolas) in the best point's
       bracket, to ``xtol * max(1, |lambda|)``.
    The result is the best point ever scored (ties: smallest ``|lambda|``).
    """

    lam_min: float = 1e-2
    lam_max: float = 1e4
    lam_cap: float = 1e12
    per_decade: int = 3
    inlier_points: int = 16
    inlier_width: float = 2.0
    zoom_rounds: int = 2
    zoom_brackets: int = 3
    zoom_points: int = 6
    xtol: float = 1e-8

    def __post_init__(self) -> None:
        if not (0 < self.lam_min < self.lam_max <= self.lam_cap < math.inf):
            raise ValueError(
                f"need 0 < lam_min < lam_max <= lam_cap < inf, got {self.lam_min}, {self.lam_max}, {self.lam_cap}"
            )
        counts = (self.per_decade, self.zoom_brackets, self.zoom_points)
        if min(counts) < 1 or self.inlier_points < 0 or self.zoom_rounds < 0 or not (self.xtol > 0 and self.inlier_width > 0):
            raise ValueError(
                "need per_decade, zoom_brackets, zoom_points >= 1, inlier_points, zoom_rounds >= 0, "
                "inlier_width > 0 and xtol > 0"
            )

    def grid(self, spread: float) -> np.ndarray:
        """The sorted first-stage grid for honest vectors of relative radius ``spread``."""
        lo, hi = math.log10(self.lam_min), math.log10(self.lam_max)
        mags = np.logspace(lo, hi, max(2, round((hi - lo) * self.per_decade) + 1))
        width = min(self.inlier_width * spread, self.lam_max) if math.isfinite(spread) else 0.0
        inliers = np.linspace(1 - width, 1 + width, self.inlier_points) if width > 0 else []
        return np.unique(np.concatenate([-mags, [0.0, 1.0], mags, inliers]))

    def __call__(self, phi: BatchedFn, spread: float) -> tuple[float, float]:
        xs = self.grid(spread)
        xs, ys = self._tails(phi, xs, phi(xs))
        for _ in range(self.zoom_rounds):
            brackets = _local_maxima(xs, ys)[: self.zoom_brackets]
            new = np.concatenate([np.linspace(lo, hi, self.zoom_points + 2)[1:-1] for lo, hi in brackets])
            xs, ys = _merge(xs, ys, new, phi(new))
        xs, ys = self._polish(phi, xs, ys)
        i = best_index(xs, ys)
        return float(xs[i]), float(ys[i])

    def _tails(self, phi: BatchedFn, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Extend the grid outward, a decade per call, while its outermost point is the best."""
        ratio = 10.0 ** (1.0 / self.per_decade)
        while True:
            i = best_index(xs, ys)
            if 0 < i < len(xs) - 1 or abs(xs[i]) >= self.lam_cap:
                return xs, ys
            new = np.clip(xs[i] * ratio ** np.arange(1, self.per_decade + 1), -self.lam_cap, self.lam_cap)
            xs, ys = _merge(xs, ys, new, phi(new))

    def _polish(self, phi: BatchedFn, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brent's bounded search in the best point's bracket; returns all points scored."""
        lo, hi = _local_maxima(xs, ys)[0]
        if not hi > lo:
            return xs, ys
        seen: list[tuple[float, float]] = []

        def record(x: np.ndarray) -> np.ndarray:
            y = phi(x)
            seen.append((float(x[0]), float(y[0])))
            return y

        tol = self.xtol * max(1.0, abs(xs[best_index(xs, ys)]))
        minimize_scalar(_negated(record), bounds=(lo, hi), method="bounded", options={"xatol": tol})
        return _merge(xs, ys, *(np.array(v) for v in zip(*seen)))


def _local_maxima(xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
    """Brackets ``(x[i-1], x[i+1])`` (clipped at the ends) of the sampled local maxima, best first.

    A local maximum beats its left neighbour strictly and its right one weakly,
    so a plateau counts once, at its left end. The global best always comes first.
    """
    left = np.concatenate([[True], ys[1:] > ys[:-1]])
    right = np.concatenate([ys[:-1] >= ys[1:], [True]])
    peaks = np.flatnonzero(left & right)
    b = best_index(xs, ys)
    order = [b] + [int(i) for i in peaks[np.argsort(-ys[peaks], kind="stable")] if i != b]
    last = len(xs) - 1
    return [(float(xs[max(i - 1, 0)]), float(xs[min(i + 1, last)])) for i in order]


def _merge(xs: np.ndarray, ys: np.ndarray, new_x: np.ndarray, new_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sets of scored points, sorted by ``x``."""
    x, y = np.concatenate([xs, new_x]), np.concatenate([ys, new_y])
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


SOLVERS: dict[str, type[Powell] | type[GlobalSearch]] = {"global": GlobalSearch, "powell": Powell}
