"""JUMP beyond its line: the Byzantine copies searched in the plane of the honest mean and its top principal
direction (issue 24, item 3)."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext
from flwr_byz.attacks.jump import FLAT_PROBES, Jump, JumpObjective, Scored, fingerprint
from flwr_byz.attacks.line_search import GlobalSearch
from flwr_byz.attacks.span import SpanAggregation


def principal_direction(centred: Tensor) -> tuple[Tensor, float]:
    """``(u, sigma)``: the unit top right singular vector of the centred rows ``(h, m)`` (float64) and the rows'
    standard deviation along it, ``sigma = s_max / sqrt(h)``; ``u = 0`` when the rows are all zero. Through the
    ``(h, h)`` Gram matrix (``O(h^2 m)``); the sign makes the largest entry of the Gram eigenvector positive."""
    gram = centred @ centred.T
    values, vectors = torch.linalg.eigh(gram)
    top, w = float(values[-1]), vectors[:, -1]
    if top <= 0:
        return centred.new_zeros(centred.shape[1]), 0.0
    w = w * torch.sign(w[torch.argmax(w.abs())])
    u = w @ centred
    return u / torch.linalg.vector_norm(u), math.sqrt(top / len(centred))


FLAT_SIGMA = 1e-9  # a spread along u below this fraction of ||gbar|| is rounding: the honest vectors are equal


class Plane:
    """The copies ``c(l1, l2) = l1 gbar + l2 sigma u`` (``u``: the top principal direction of the centred honest
    vectors, ``sigma``: their standard deviation along it), in the coordinates the objective aggregates in: the
    span's (``coords``, ``(2, p)`` float64) where JUMP's objective uses a basis, else ``R^d`` (``vectors``).
    ``sigma`` below ``FLAT_SIGMA * ||gbar||`` is taken as 0 (no plane)."""

    def __init__(self, phi: JumpObjective) -> None:
        span, honest = phi.span, phi.honest
        if isinstance(span, SpanAggregation) and span.basis is not None:
            rbar = span.coords.mean(0)  # the copies JUMP's span builds: lambda * rbar
            u, self.sigma = principal_direction(span.coords - rbar)
            if float(u @ rbar) < 0:
                u = -u
            self.coords: Tensor | None = torch.stack([rbar, self.sigma * u])
            self.vectors = torch.stack([phi.gbar, (self.sigma * u).to(span.basis.dtype) @ span.basis])
        else:
            u, self.sigma = principal_direction((honest - phi.gbar).double())
            if float(u @ phi.gbar.double()) < 0:
                u = -u
            self.coords = None
            self.vectors = torch.stack([phi.gbar, (self.sigma * u).to(honest.dtype)])
        if self.sigma <= FLAT_SIGMA * float(torch.linalg.vector_norm(phi.gbar.double())):
            self.sigma = 0.0

    def vector(self, point: tuple[float, float]) -> Tensor:
        """``c(l1, l2)`` in ``R^d``, the honest dtype."""
        return point[0] * self.vectors[0] + point[1] * self.vectors[1]


class LineObjective(JumpObjective):
    """JUMP's objective along any line of the plane: ``t -> phi(origin + t * axis)`` with the copies at
    ``c(l1, l2)`` (:class:`Plane`); it shares everything of ``base`` (rule, span basis, oracle, sample sizes) but
    its scored aggregates and counters, and knows no breakpoints. ``seed(t, entry)`` registers a point already
    scored (JUMP's answer) so that it is neither aggregated nor evaluated again."""

    def __init__(self, base: JumpObjective, plane: Plane, origin: tuple[float, float],
                 axis: tuple[float, float]) -> None:
        self.__dict__.update(base.__dict__)  # not super().__init__: that would rebuild the span
        self.scored, self.by_lambda = {}, {}
        self.evals = self.calls = self.finalists = 0
        self.seconds = dict.fromkeys(base.seconds, 0.0)
        self.breakpoints = None
        self.plane = plane
        self.origin = torch.tensor(origin, dtype=torch.float64)
        self.axis = torch.tensor(axis, dtype=torch.float64)

    def point(self, t: float) -> tuple[float, float]:
        l1, l2 = (self.origin + t * self.axis).tolist()
        return l1, l2

    def seed(self, t: float, entry: Scored) -> None:
        copy = Scored(t, entry.aggregate, entry.value, entry.full, entry.deviation)
        self.scored.setdefault(fingerprint(copy.aggregate), []).append(copy)
        self.by_lambda[t] = copy

    def _aggregate(self, lam: Tensor) -> Tensor:
        ls = self.origin[None] + lam.double()[:, None] * self.axis[None]  # (k, 2) plane coordinates
        span, (h, d), k = self.span, self.honest.shape, len(ls)
        vectors = ls.to(self.honest) @ self.plane.vectors if self.plane.coords is None else None
        if isinstance(span, SpanAggregation) and (vectors is None or span.affine is None):  # span or direct path
            return span.aggregate_copies(ls @ self.plane.coords if vectors is None else vectors)
        stacks = torch.cat([self.honest.expand(k, h, d), vectors[:, None].expand(k, self.f, d)], dim=1)
        return self.aggregator(stacks if self.order is None else stacks[:, self.order.to(stacks.device)])


OFFSET_SEARCH = GlobalSearch(lam_min=0.1, lam_max=100.0, per_decade=2, inlier_points=0)
"""The search along the principal direction, in units of ``sigma``: ``0``, ``+-0.1 .. +-100`` (2 a decade), open
tails and JUMP's multisection (no inlier band: it is called with ``spread = inf``)."""


class JumpSubspace(Attack):
    r"""JUMP searched in a plane: ``a = l1 gbar + l2 sigma u`` (issue 24, item 3).

    ``u`` is the top principal direction of the centred honest vectors ``g_i - gbar`` (the unit top eigenvector
    of their covariance, sign towards ``gbar``) and ``sigma`` their standard deviation along it, so ``l2`` is in
    honest standard deviations, as ALIE's ``z``. ``u`` lies in the honest span, so every candidate is aggregated
    in the span coordinates JUMP already uses. The objective is JUMP's,
    ``psi(l1, l2) = L_H(theta - lr F(g_1..g_h, c, ..., c))``, ``c = l1 gbar + l2 sigma u``; the search is
    coordinate ascent by JUMP's own batched line search:

    1. JUMP (:class:`~flwr_byz.attacks.jump.Jump`, the same solver and oracle): ``l1* = argmax psi(l1, 0)``.
    2. ``sweeps`` times, alternately along ``u`` (``l2``, :data:`OFFSET_SEARCH` on a grid in ``sigma`` units) and
       along ``gbar`` (``l1``, JUMP's grid), each a :class:`LineObjective` through the best point so far, which
       is seeded (scored once).
    3. The best point's finalists are rescored with ``L_H`` like JUMP's; the plane's answer replaces JUMP's only
       if its ``L_H`` is strictly larger, so ``L_H(a) >= L_H(JUMP's a)`` on the same oracle (JUMP's line is
       ``l2 = 0``). With ``sigma = 0`` (equal honest vectors) or a flat loss it is JUMP.

    Cost: JUMP's ~35 candidates plus ~30 per sweep. Metrics: JUMP's (``jump-*``, the counts and seconds summed
    over every line), ``jump-lambda`` and ``jump-loss`` of the answer, ``subspace-mu`` (``l2``),
    ``subspace-sigma``, ``subspace-gain`` (``L_H`` above JUMP's answer), ``subspace-jump-loss``.
    """

    name = "jump-subspace"

    def __init__(self, sweeps: int = 1, **jump_params: object) -> None:
        super().__init__()
        if sweeps < 0:
            raise ValueError(f"jump-subspace: need sweeps >= 0, got {sweeps}")
        self.jump = Jump(**jump_params)  # type: ignore[arg-type]
        self.sweeps = sweeps

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        jump = self.jump
        phi = JumpObjective(honest, ctx, jump.max_batch_elems)
        jump.solver(phi, phi.spread)
        if phi.flat:
            phi(FLAT_PROBES)
        lam, loss, ties = phi.best(jump.finalists)
        point, best, entry = (lam, 0.0), loss, phi.by_lambda[lam]
        lines: list[JumpObjective] = [phi]
        start = time.perf_counter()
        plane = Plane(phi) if not phi.flat and self.sweeps else None
        phi.seconds["setup"] += time.perf_counter() - start
        if plane is not None and plane.sigma > 0:
            for sweep in range(self.sweeps):
                along = 1 if sweep % 2 == 0 else 0
                origin = (point[0], 0.0) if along else (0.0, point[1])
                line = LineObjective(phi, plane, origin, (0.0, 1.0) if along else (1.0, 0.0))
                line.seed(point[along], entry)
                if along:
                    OFFSET_SEARCH(line, math.inf)
                else:
                    jump.solver(line, phi.spread)
                t, value, ties = line.best(jump.finalists)
                lines.append(line)
                if value > best:
                    point, best, entry = line.point(t), value, line.by_lambda[t]
        self.metrics = {
            "jump-lambda": point[0],
            "jump-loss": best,
            "jump-ties": float(ties),
            "jump-flat": float(phi.flat),
            **{f"jump-{key}": float(sum(getattr(o, key) for o in lines))
               for key in ("evals", "losses", "calls", "finalists")},
            **{f"jump-{part}-seconds": sum(o.seconds[part] for o in lines) for part in phi.seconds},
            "subspace-mu": point[1],
            "subspace-sigma": plane.sigma if plane is not None else 0.0,
            "subspace-gain": best - loss,
            "subspace-jump-loss": loss,
        }
        if point[1] == 0.0 or plane is None:
            return point[0] * phi.gbar
        return plane.vector(point)

