"""Divide-and-Conquer, DnC (Shejwalkar & Houmansadr, NDSS 2021)."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from flwr_byz.aggregation.base import Rule, pairwise_sq_distances, sort_by, tie_order
from flwr_byz.seeds import seeded_generator


def average(x: Tensor, keep: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """``sum_i p_i x_i`` ``(k, d)`` over the rows of ``x`` ``(k, n, d)`` that ``keep`` ``(k, n)`` selects (default all),
    ``p_i = scale_i / m`` (``scale`` ``(k, n)``, default 1; ``m`` the number of kept rows): one matmul in the dtype
    of ``x``; the zero vector where no row is kept. With ``scale <= 1`` each term is at most ``max|x| / m``, so
    the sum passes the dtype's range only by rounding, when it is within ``m`` ulps of it: the result is
    clamped to the finite range (finite for finite rows of any magnitude)."""
    w = torch.ones(x.shape[:-1], dtype=torch.float64, device=x.device) if keep is None else keep.to(torch.float64)
    p = (w / w.sum(dim=-1, keepdim=True).clamp_min(1.0)) * (1.0 if scale is None else scale)
    top = torch.finfo(x.dtype).max
    return (p.to(x.dtype).unsqueeze(-2) @ x).squeeze(-2).clamp(-top, top)


def lowest(x: Tensor, scores: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The mask ``(k, n)`` of the ``m`` rows of ``x`` with the lowest ``scores`` ``(k, n)``, and whether each
    problem's cut was tied ``(k,)`` (its ``m``-th and ``(m+1)``-th lowest scores equal).

    An exact tie at the cut between distinct rows goes by :func:`~flwr_byz.aggregation.base.tie_order`
    (permutation invariant; its ``O(n^2 d)`` distances are computed only for problems with such a tie).
    """
    order = scores.argsort(dim=-1, stable=True)
    tied = torch.zeros(scores.shape[:-1], dtype=torch.bool, device=scores.device)
    if m < scores.shape[-1]:
        ranked = scores.gather(-1, order)
        tied = ranked[..., m - 1] == ranked[..., m]
        rows = tied.nonzero().flatten()
        if len(rows):
            sub = x[rows]
            order[rows] = sort_by(scores[rows], tie_order(sub, pairwise_sq_distances(sub)))
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order[..., :m], True), tied


class DnC(Rule):
    """Divide-and-Conquer: ``niters`` times, draw ``b`` coordinates ``r``, centre the sub-vectors on their mean,
    ``y_i = x_i[r] - mean_j x_j[r]``, take the top right singular vector ``v`` of ``Y = (y_1..y_n)`` and score
    ``s_i = <y_i, v>^2``; keep the ``n - ceil(c f)`` lowest scores. Output the mean of the rows kept in every
    iteration (the intersection; the zero vector if it is empty).

    ``b``: a number of coordinates (``int >= 1``; all of them when ``b >= d``, one iteration then suffices)
    or a fraction of ``d`` (``float`` in ``(0, 1]``). The samples of round ``t`` (:meth:`for_round`; round 0
    if never given) are ``niters`` successive ``torch.randperm(d)[:b]`` of
    ``seeded_generator(seed, t, "dnc")``: a pure function of ``(seed, t, d)``, shared by the whole batch and
    by every copy of the rule (the server's and the adversary's). Requires ``n > 2f`` and ``n > c f``.

    Scores are computed in float64 on the sample scaled by a power of two to ``[-1, 1]`` (exact; no overflow
    for finite inputs of any magnitude); an exact tie at the cut goes by ``tie_order``, so the rule is
    symmetric (permutation invariant). Cost per iteration: the ``(n, b)`` SVD, ``O(n^2 b)``, plus the mean.
    """

    name = "dnc"

    def __init__(self, f: int, niters: int = 5, b: int | float = 10_000, c: float = 1.0, seed: int = 0) -> None:
        super().__init__(f)
        if isinstance(niters, bool) or not isinstance(niters, int) or niters < 1:
            raise ValueError(f"DnC needs niters >= 1 (an int), got niters={niters!r}")
        if isinstance(b, bool) or not (
            (isinstance(b, int) and b >= 1) or (isinstance(b, float) and 0.0 < b <= 1.0)
        ):
            raise ValueError(f"DnC b is a number of coordinates (int >= 1) or a fraction of them (float in (0, 1]), "
                             f"got b={b!r}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c < math.inf:
            raise ValueError(f"DnC needs a filtering fraction c >= 0, got c={c!r}")
        self.niters, self.b, self.c, self.seed, self.round = niters, b, float(c), seed, 0
        self._drawn: dict[tuple[int, str], list[Tensor]] = {}

    @property
    def removed(self) -> int:
        """Rows each iteration removes: ``ceil(c f)`` (``c f`` rounded to 9 decimals first)."""
        return math.ceil(round(self.c * self.f, 9))

    @property
    def requirement(self) -> str:  # type: ignore[override]
        return f"n > 2f and n > c*f (c={self.c:g})"

    def min_n(self) -> int:
        return max(2 * self.f + 1, self.removed + 1)

    def for_round(self, t: int) -> DnC:
        """A copy that draws the coordinates of round ``t``."""
        stage = copy.copy(self)
        stage.round, stage._drawn = t, {}
        return stage

    def sample_size(self, d: int) -> int:
        """Coordinates per iteration for ``d``-dimensional inputs."""
        return min(d, self.b if isinstance(self.b, int) else max(1, int(self.b * d)))

    def samples(self, d: int, device: torch.device | str = "cpu") -> list[Tensor | None]:
        """This round's coordinate samples (sorted indices; ``[None]``: all coordinates, one iteration)."""
        size = self.sample_size(d)
        if size >= d:
            return [None]
        key = (d, str(device))
        if key not in self._drawn:
            gen = seeded_generator(self.seed, self.round, "dnc")
            self._drawn[key] = [torch.randperm(d, generator=gen)[:size].sort().values.to(device)
                                for _ in range(self.niters)]
        return list(self._drawn[key])

    def scores(self, x: Tensor, coords: Tensor | None) -> Tensor:
        """Outlier scores ``(k, n)`` (float64, up to a common factor per problem) on the coordinates ``coords``."""
        block = (x if coords is None else x[..., coords]).to(torch.float64)
        exponent = torch.frexp(block.abs().amax(dim=(-2, -1), keepdim=True)).exponent
        block = torch.ldexp(block, -exponent)  # entries in [-1, 1)
        centred = block - block.mean(dim=-2, keepdim=True)
        v = torch.linalg.svd(centred, full_matrices=False).Vh[..., 0, :]
        return (centred @ v.unsqueeze(-1)).squeeze(-1).square()

    def kept(self, x: Tensor) -> Tensor:
        """The rows ``(k, n)`` kept in every iteration, as a boolean mask."""
        return self.kept_on(x, self.samples(x.shape[-1], x.device))[0]

    def kept_on(self, x: Tensor, samples: list[Tensor | None]) -> tuple[Tensor, Tensor]:
        """The rows ``(k, n)`` kept in every iteration scored on the columns ``samples`` of ``x`` (index tensors
        into its last dimension; ``None``: all), and whether a cut was tied ``(k,)`` (a tie goes by the rows of
        ``x`` as given: JUMP's copies path passes only the sampled columns and redoes those problems whole)."""
        k, n, _ = x.shape
        keep = torch.ones(k, n, dtype=torch.bool, device=x.device)
        tied = torch.zeros(k, dtype=torch.bool, device=x.device)
        if self.removed == 0:
            return keep, tied
        for coords in samples:
            kept, cut_tied = lowest(x, self.scores(x, coords), n - self.removed)
            keep &= kept
            tied |= cut_tied
        return keep, tied

    def _apply(self, x: Tensor) -> Tensor:
        return average(x, self.kept(x))

    def __repr__(self) -> str:
        return (f"DnC(f={self.f}, niters={self.niters}, b={self.b}, c={self.c:g}, seed={self.seed}, "
                f"round={self.round})")
