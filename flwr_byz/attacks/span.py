"""JUMP's candidate aggregates computed in the span of the honest vectors, without the ``(k, n, d)`` stacks.

Candidate ``lambda``'s stack is ``X = [g_1, ..., g_h, lambda gbar, ..., lambda gbar]``
(``f`` copies). Every row lies in the span of the honest rows: with an orthonormal basis
``B`` of that span (rows; once per step, ``O(h^2 d)``, :func:`orthonormal_span`),
``g_i = r_i B`` where ``r_i`` are coordinates in ``R^p``, ``p <= h``, and ``x -> x B`` is a
linear isometry of ``R^p`` into ``R^d``.

* Span stages commute with that isometry, since they only depend on distances
  and norms and output linear combinations of their inputs (GM started at zero
  or at the mean): pre-aggregators NNM and static clipping, rules Mean, GM, Krum
  and MultiKrum. So ``F(X) = F(C) B`` with ``C = [r_1..r_h, lambda rbar x f]``:
  the stage code runs unchanged on ``(k, n, p)`` coordinates and only the final
  ``(k, p) @ (p, d)`` product is d-dimensional.
* CM and TM are coordinate-wise. After the span pre-aggregators the stack is
  ``h`` rows ``Y`` (lifted to ``R^d``) plus ``f`` equal rows ``v`` (the stages map
  equal inputs to equal outputs). Per coordinate, the ``q``-th smallest of
  ``{y_1, ..., y_h} + {v x f}`` is ``o_q = clamp(v, s_(q-f), s_q)`` with ``s`` the sorted
  ``y`` (``s_i = -inf`` for ``i < 1``, ``+inf`` for ``i > h``): the copies take ranks
  ``q-f+1..q`` when ``s_(q-f) <= v <= s_q``; below ``s_(q-f)`` they push it to rank ``q``;
  above ``s_q`` they leave the ``q`` smallest alone. CM is ``o_((n+1)/2)`` (``n`` odd)
  or ``(o_(n/2) + o_(n/2+1)) / 2``; TM with trim ``t`` is the mean of ``o_q``, ``t < q <= n-t``.
  Only ``Y`` is sorted, once per distinct ``Y`` (without pre-aggregation, once per step),
  by the Batcher selection network of the ranks needed (``O(h log^2 h)`` elementwise
  min/max, several times faster than ``torch.sort`` along a short axis), block by block
  of coordinates so that the ``h`` lifted rows stay in cache.
* Weighted rules (Mean and MultiKrum with reply ``weights``, Flower's FedAvg and MultiKrum) are
  span rules too (a fixed or distance-chosen linear combination), but their weights follow the
  rows in the defence's order: their coordinate stack is permuted by the attack's ``order``
  first, exactly as the generic path permutes the ``(k, n, d)`` stack. Unweighted rules are
  permutation invariant and skip that step.
* Jumps: NNM's neighbour sets change at finitely many lambdas, roots of quadratics in
  the coordinates (``SpanAggregation.breakpoints``); between them Mean, GM, CM and TM
  after NNM are continuous in lambda, which JUMP's search uses to land on a jump. They
  come from one sort per row of the honest distances and of the crossings of the copies'
  distances (:func:`nnm_breakpoints`, ``O(h^2 log h)``: 3 ms at ``n = 200``), not from NNM
  run on both sides of every candidate root (``O(n^4)``: 33 s per JUMP call at ``n = 100``).
* FLTrust sees a reply only through its direction (its cosine with ``g_0``, then rescaled to
  ``||g_0||``), and so do the row-wise clippings before it: every ``lambda > 0`` gives one
  aggregate, every ``lambda < 0`` another, ``lambda = 0`` (a zero row, no direction) a third.
  :class:`SignAggregation` computes those three, once per step; ``phi`` is then piecewise
  constant with its only jump at 0, and JUMP against FLTrust is a choice of sign.
* DnC keeps rows by their scores on a few sampled coordinates and averages them:
  :class:`SampledAggregation` scores the candidates on those columns only and builds each
  output from the honest rows and the copies, without the ``(k, n, d)`` stacks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from flwr_byz.aggregation import (
    AdaptiveRobustClipping,
    Aggregation,
    CoordinateMedian,
    DnC,
    FLTrust,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    NearestNeighborMixing,
    StaticClipping,
    TrimmedMean,
    Weighted,
)
from flwr_byz.aggregation.base import pairwise_sq_distances
from flwr_byz.aggregation.sorting import FUSE_MIN_NUMEL, order_statistics
from flwr_byz.attacks.batching import aggregate_copies, copies_stack, stacks

SPAN_PRE = (NearestNeighborMixing, StaticClipping)
ROW_WISE = (StaticClipping, AdaptiveRobustClipping)
"""Pre-aggregators whose output row ``i`` is input row ``i`` rescaled by a positive factor (a zero row stays zero):
after them a selected row is still one node's vector, in its direction (NNM's rows mix several, bucketing regroups
them)."""
SPAN_RULES = (Mean, GeometricMedian, Krum, MultiKrum)
COORDINATE_RULES = (CoordinateMedian, TrimmedMean)
CANDIDATES = 35  # aggregates JUMP's default search scores per round (34-36 measured): what the span must repay
BLOCK = 2**14  # coordinates per block of the coordinate-wise rules: the h lifted rows stay in cache
MAX_COND = 1e3  # Cholesky QR above this condition number of the honest stack loses orthogonality (> 1e-10)
SIDE = 1e-9  # relative offset of the lambdas just left and right of a breakpoint


def sides(breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lambdas just left and just right of each breakpoint (``SIDE * max(1, |b|)`` away)."""
    step = SIDE * np.maximum(1.0, np.abs(breaks))
    return breaks - step, breaks + step


def nnm_breakpoints(r: Tensor, f: int, m: int) -> np.ndarray:
    """The sorted lambdas where NNM, keeping the ``m`` nearest of each row, changes a neighbour set of the
    stack ``[r_1, ..., r_h, lambda rbar x f]`` (``r``: ``(h, p)`` float64 coordinates); ``O(h^2 (p + log h))``.

    With ``a = |rbar|^2``, ``P_i = r_i . rbar / a`` and ``E_i = |r_i - P_i rbar|^2`` (the part of ``r_i`` off the
    copies' line, computed directly), the copies are at ``q_i(lambda) = a (lambda - P_i)^2 + E_i`` from honest row
    ``i``, which sees honest row ``j`` at the constant ``D_ij`` (exact direct differences, as NNM computes them).

    * Honest row ``i``, with ``c`` honest rows strictly nearer than the copies, keeps the ``min(c, m)`` nearest
      honest rows, ``min(f, max(m - c, 0))`` copies and then the next honest rows: the same set for every
      ``c <= m - f`` and every ``c >= m``, a different one for each ``c`` in between. ``c`` moves only where ``q_i``
      crosses a ``D_ij``, so the set changes exactly at the roots ``P_i +- sqrt((D - E_i) / a)`` of the values ``D``
      ranked ``t``-th in row ``i``'s sorted honest distances, ``m - f < t <= m`` (an equal value elsewhere in
      the row moves ``c`` across that range as well): ``O(h f)`` roots after one sort per row. A tangent
      ``q_i`` (``D = E_i``) leaves ``c`` as it was and is no root.
    * A copy's row keeps the ``f`` copies (distance 0) and the ``K = m - f`` honest rows of smallest ``q_j``
      (nothing moves if ``K <= 0``). The ``q_j`` differ by lines in lambda, ``q_l - q_j = a (P_j - P_l)
      (2 lambda - P_l - P_j) + E_l - E_j``, so the number ``below_j`` of honest rows nearer than ``j`` is known
      at ``lambda -> -inf`` (smaller ``P``, then smaller ``E``, then smaller index first) and moves by one at each
      crossing ``x_jl`` (:func:`_level_changes`): ``j`` is kept iff ``below_j < K``, and the set changes exactly
      where some ``j`` enters or leaves it. Each row's crossings are sorted once (``O(h^2 log h)`` in all).

    Ties are those of :func:`~flwr_byz.aggregation.nnm.nearest_neighbours` away from the breakpoints: copies
    are identical (their input order is fixed), and so is the order of honest rows at equal distances from
    every copy (equal ``P`` and ``E``: their ``tie_order`` totals differ by a constant). One case moves no
    breakpoint here: two distinct honest rows exactly as far from a third, at its cut, change order where
    their ``tie_order`` totals cross (the search before issue 21 missed them as well).
    """
    h = len(r)
    if f < 1 or m >= h + f:
        return np.empty(0)
    rbar = r.mean(0)
    a = float(rbar @ rbar)
    if a == 0:  # the copies stay at the origin
        return np.empty(0)
    proj = r @ rbar / a
    P, E = proj.numpy(), ((r - proj[:, None] * rbar) ** 2).sum(1).numpy()
    dist = np.sort(pairwise_sq_distances(r[None])[0].numpy(), axis=1)
    values = dist[:, max(1, m - f + 1) - 1 : min(h, m)]  # the t-th smallest of each row, m - f < t <= m
    with np.errstate(invalid="ignore"):
        half = np.sqrt((values - E[:, None]) / a)  # NaN: q_i never comes down to the value
    cross = half > 0
    roots = [(P[:, None] - half)[cross], (P[:, None] + half)[cross]]
    if 0 < m - f < h:
        roots.append(_level_changes(P, E, a, m - f))
    out = np.unique(np.concatenate(roots))
    return out[np.isfinite(out)]


def _level_changes(P: np.ndarray, E: np.ndarray, a: float, k: int) -> np.ndarray:
    """The lambdas where the ``k`` smallest of ``q_j(lambda) = a (lambda - P_j)^2 + E_j`` change (see
    :func:`nnm_breakpoints`): for each row ``j``, its crossings ``x_jl`` sorted, the count of rows below it
    after each, and the crossings (bit-equal ones of a row together) across which ``below_j < k`` flips."""
    h = len(P)
    index = np.arange(h)
    # below[j, l]: l nearer than j for lambda -> -inf
    below = (P[None, :] < P[:, None]) | (P[None, :] == P[:, None]) & (
        (E[None, :] < E[:, None]) | (E[None, :] == E[:, None]) & (index[None, :] < index[:, None]))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # x_jl is x_lj bit for bit
        x = 0.5 * (P[None, :] + P[:, None]) + (E[:, None] - E[None, :]) / (2 * a * (P[:, None] - P[None, :]))
    move = np.sign(P[None, :] - P[:, None]).astype(np.int64)  # +1: l passes below j as lambda increases
    valid = np.isfinite(x) & (move != 0)
    x, move = np.where(valid, x, np.inf), np.where(valid, move, 0)
    order = np.argsort(x, axis=1)
    x, move = np.take_along_axis(x, order, 1), np.take_along_axis(move, order, 1)
    after = below.sum(1)[:, None] + np.cumsum(move, axis=1)  # rows below j after each crossing
    before = np.concatenate([after[:, :1] - move[:, :1], after[:, :-1]], axis=1)
    new = np.ones_like(x, dtype=bool)  # the first crossing of each group of bit-equal ones of a row
    new[:, 1:] = x[:, 1:] != x[:, :-1]
    first = np.flatnonzero(new)
    last = np.concatenate([first[1:], [x.size]]) - 1
    flips = (before.ravel()[first] < k) != (after.ravel()[last] < k)
    return x.ravel()[first[flips]]


def orthonormal_span(honest: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, C)`` in float64 with ``honest = C B`` and orthonormal rows ``B`` (``(p, d)``, ``C``: ``(h, p)``).

    Cholesky QR: ``G = H H^T = L L^T``, ``C = L``, ``B = L^{-1} H`` (one Gram product and one triangular
    solve: 0.12 s against Householder's 0.26 s for ``h = 12``, ``d = 1.2M``, 1 thread), orthonormal to about
    ``eps * cond(H)^2``; Householder QR (``H^T = Q R``, ``B = Q^T``, ``C = R^T``) when ``cond(H) > MAX_COND``
    or ``H`` is rank-deficient.
    """
    x = honest.double()
    gram = x @ x.T
    eigenvalues = torch.linalg.eigvalsh(gram)
    if eigenvalues[0] > eigenvalues[-1] / MAX_COND**2:
        lower = torch.linalg.cholesky(gram)
        return torch.linalg.solve_triangular(lower, x, upper=False), lower
    q, r = torch.linalg.qr(x.T)
    return q.T, r.T


def span_aggregation(aggregator: object, honest: Tensor, f: int,
                     order: Tensor | None = None) -> Callable[[Tensor], Tensor] | None:
    """``lams (k,) -> F(X(lambda)) (k, d)`` computed in the honest span, or ``None`` if ``aggregator``
    is not an ``Aggregation`` of span pre-aggregators and a span or coordinate-wise rule (or ``f = 0``).

    ``order`` (``AttackContext.order``: the defence sees row ``order[j]`` of ``[honest, copies]`` as its
    row ``j``; ``None``: that order) matters only to a weighted rule, whose weights are in the defence's order."""
    if not isinstance(aggregator, Aggregation) or f < 1:
        return None
    rule = aggregator.rule
    if type(rule) is FLTrust and all(type(stage) in ROW_WISE for stage in aggregator.pre):
        aggregator.check(len(honest) + f)
        return SignAggregation(aggregator, honest, f, order)
    if type(rule) is DnC and not aggregator.pre and rule.sample_size(honest.shape[1]) < honest.shape[1]:
        aggregator.check(len(honest) + f)
        sampled = SampledAggregation(aggregator, honest, f, order)
        return sampled if 2 * len(sampled.columns) <= honest.shape[1] else None
    if any(type(stage) not in SPAN_PRE for stage in aggregator.pre):
        return None
    if type(rule) not in SPAN_RULES + COORDINATE_RULES or (type(rule) is GeometricMedian and rule.start == "median"):
        return None
    aggregator.check(len(honest) + f)
    if not aggregator.pre and type(rule) in COORDINATE_RULES + (Mean,):
        return SpanAggregation(aggregator, honest, f, order, direct=True)
    if not span_pays(aggregator, len(honest), len(honest) + f):
        return None
    return SpanAggregation(aggregator, honest, f, order)


def span_pays(aggregation: Aggregation, h: int, n: int) -> bool:
    """Whether the span's one-off ``O(h^2 d)`` (the Gram matrix and the basis) costs less than scoring
    :data:`CANDIDATES` aggregates directly: always with a quadratic stage (NNM, Krum, MultiKrum: ``O(n^2 d)`` per
    candidate), else while ``h^2 <= CANDIDATES * n * passes`` (``passes``: GM's iterations, 1 for the mean):
    ``h <= ~44`` for the mean and ``~350`` for GM, as ``benchmarks/bench_jump_scaling.py`` measures."""
    if type(aggregation.rule) in (Krum, MultiKrum) or any(type(s) is NearestNeighborMixing for s in aggregation.pre):
        return True
    passes = aggregation.rule.iterations if type(aggregation.rule) is GeometricMedian else 1
    return h * h <= CANDIDATES * n * passes


class SignAggregation:
    """FLTrust's candidate aggregates (module docstring): ``F(X(lambda)) = F(X(sign(lambda)))``, three
    aggregations for every candidate. Equal to the rule on each whole stack up to the rounding of
    ``lambda * gbar``'s direction."""

    def __init__(self, aggregation: Aggregation, honest: Tensor, f: int, order: Tensor | None = None) -> None:
        signs = torch.tensor([-1.0, 0.0, 1.0]).to(honest)[:, None] * honest.mean(0)
        self.aggregates = aggregate_copies(aggregation, honest, signs, f, order)  # lambda = -1, 0, 1

    def __call__(self, lams: Tensor) -> Tensor:
        return self.aggregates[torch.sign(lams).long().to(self.aggregates.device) + 1]

    def breakpoints(self) -> np.ndarray:
        """``phi`` is constant on each side of 0."""
        return np.zeros(1)


class SampledAggregation:
    """DnC's candidate aggregates (module docstring). The rows DnC keeps depend on a stack only through the round's
    sampled coordinates (a tie at a cut aside, which it breaks on whole rows), and its output is their mean. So
    each candidate is scored on the union ``U`` of the samples, ``(k, n, |U|)`` instead of ``(k, n, d)`` (in chunks
    under :func:`~flwr_byz.attacks.batching.batch_elems`), and its output is ``sum_i p_i g_i + (sum_copies p_j) a``
    with ``p`` the kept rows' weights; candidates with a tied cut go through the rule on their whole stacks. Equal
    to the rule up to the summation order of the mean."""

    def __init__(self, aggregation: Aggregation, honest: Tensor, f: int, order: Tensor | None = None) -> None:
        self.aggregation, self.rule, self.honest, self.f = aggregation, aggregation.rule, honest, f
        samples: list[Tensor] = self.rule.samples(honest.shape[1], honest.device)  # type: ignore[assignment]
        self.columns = torch.unique(torch.cat(samples))
        self.samples: list[Tensor | None] = [torch.searchsorted(self.columns, s) for s in samples]
        self.order = None if order is None else order.to(honest.device)
        self.gbar, self.sampled = honest.mean(0), honest[:, self.columns]  # the same for every candidate

    def __call__(self, lams: Tensor) -> Tensor:
        honest, f, order = self.honest, self.f, self.order
        vectors = lams.to(honest)[:, None] * self.gbar
        chunks = stacks(self.sampled, vectors[:, self.columns], f, order)  # under the device's cap
        kept, tied = (torch.cat(parts) for parts in zip(*(self.rule.kept_on(x, self.samples) for x in chunks)))
        if order is not None:  # row j of the stack is row order[j] of [honest, copies]
            kept = torch.empty_like(kept).index_copy_(1, order, kept)
        w = kept.double()
        p = (w / w.sum(dim=-1, keepdim=True).clamp_min(1.0)).to(honest.dtype)  # DnC's mean, as ``average``
        top = torch.finfo(honest.dtype).max
        out = (p[:, : len(honest)] @ honest + p[:, len(honest) :].sum(-1, keepdim=True) * vectors).clamp(-top, top)
        for i in tied.nonzero().flatten().tolist():  # a tie at a cut goes by whole rows
            out[i] = self.aggregation(copies_stack(honest, vectors[i : i + 1], f, order))[0]
        return out

    def breakpoints(self) -> None:
        """Unknown: every change of the kept rows is a jump."""
        return None


class SpanAggregation:
    """The exact candidate aggregates of ``span_aggregation`` (module docstring), in float64 coordinates;
    ``direct`` (no pre-aggregation, no basis: ``basis`` is ``None``): CM and TM, whose honest rows are every
    candidate's, sort them once in ``R^d`` and each candidate is a clamp of its copies; the mean (weighted or not)
    is affine in ``lambda``, ``F(lambda) = F(0) + lambda (F(1) - F(0))``, two aggregations for every candidate."""

    def __init__(self, aggregation: Aggregation, honest: Tensor, f: int, order: Tensor | None = None,
                 direct: bool = False) -> None:
        self.aggregation, self.f = aggregation, f
        self.affine: tuple[Tensor, Tensor] | None = None
        if direct:
            self.coords, self.basis, self.order = honest, None, None
            if type(aggregation.rule) is Mean:  # its weights (if any) follow the defence's row order
                weighted = aggregation.rule.weights is not None
                ends = torch.tensor([0.0, 1.0]).to(honest)[:, None] * honest.mean(0)  # lambda = 0 and 1
                ends = copies_stack(honest, ends, f, order if weighted else None)
                start, end = aggregation(ends).double()
                self.affine = (start, end - start)
            return
        basis, self.coords = orthonormal_span(honest)
        weighted = isinstance(aggregation.rule, Weighted) and aggregation.rule.weights is not None
        self.order = order.to(self.coords.device) if weighted and order is not None else None
        self.basis = basis.to(honest.dtype)  # (p, d) in the honest dtype; coords (h, p) in float64

    def __call__(self, lams: Tensor) -> Tensor:
        if self.affine is not None:
            start, slope = self.affine
            return (start + lams.to(start)[:, None] * slope).to(self.coords.dtype)
        if self.in_span:
            return self.lift(self.coordinates(lams))
        copies = self._copies(lams)
        if self.basis is None:  # direct: one set of honest rows for every candidate
            return self._coordinate_rule(self.coords.unsqueeze(0), copies)
        h = len(self.coords)
        x = copies_stack(self.coords, copies, self.f, self.order)
        for stage in self.aggregation.pre:
            x = stage(x)
        return self._coordinate_rule(x[:, :h], x[:, h])

    @property
    def in_span(self) -> bool:
        """Whether the aggregates are ``c B``, ``c`` from :meth:`coordinates` (a span rule on the basis; CM and TM
        leave the span)."""
        return self.basis is not None and type(self.aggregation.rule) in SPAN_RULES

    def coordinates(self, lams: Tensor) -> Tensor:
        """The aggregates' coordinates ``c`` ``(k, p)`` (float64) in the basis ``B`` where :attr:`in_span`."""
        return self.aggregation(copies_stack(self.coords, self._copies(lams), self.f, self.order))  # weighted: order

    def _copies(self, lams: Tensor) -> Tensor:
        """The copies ``lambda gbar`` ``(k, p)``, in the coordinates (vectors on the direct path)."""
        return lams.to(self.coords)[:, None] * self.coords.mean(0)

    def breakpoints(self) -> np.ndarray | None:
        """The sorted lambdas where ``F(X(lambda))`` may jump, or ``None`` if unknown.

        Mean, GM, CM and TM are continuous in their inputs, and so is NNM for a fixed
        neighbour configuration: the aggregate can only jump where a neighbour set of NNM
        changes (:func:`nnm_breakpoints`). ``[]`` without NNM, ``None`` with other
        pre-aggregators or rules (Krum's choice jumps as well).
        """
        pre = [type(stage) for stage in self.aggregation.pre]
        if type(self.aggregation.rule) not in (Mean, GeometricMedian, CoordinateMedian, TrimmedMean):
            return None
        if not pre:
            return np.empty(0)
        if pre != [NearestNeighborMixing]:
            return None
        return nnm_breakpoints(self.coords.cpu(), self.f, len(self.coords) + self.f - self.aggregation.pre[0].f)

    def lift(self, coords: Tensor) -> Tensor:
        """Coordinates ``(..., p)`` to vectors ``(..., d)`` of the honest dtype."""
        return coords.to(self.basis.dtype) @ self.basis

    def _coordinate_rule(self, ys: Tensor, v: Tensor) -> Tensor:
        """CM or TM of ``h`` rows (coordinates ``ys (k, h, p)``) and ``f`` copies of ``v`` (coordinates ``(k, p)``).

        Work goes block by block of ``BLOCK`` coordinates (lift, selection network, clamps), so
        the ``h`` lifted rows stay in cache: about 2.4x faster than whole ``(k, h, d)`` rows on CPU.
        """
        (_, h, p), k, n, f = ys.shape, len(v), ys.shape[1] + self.f, self.f
        if len(ys) == 1:  # direct: the honest rows of every candidate, once
            blocks, which = ys.flatten(1), torch.zeros(k, dtype=torch.long, device=v.device)
        else:
            blocks, which = torch.unique(ys.flatten(1), dim=0, return_inverse=True)
        gather = len(blocks) < k  # some candidates share their honest rows: lift and sort those once
        if not gather:
            blocks = ys.flatten(1)  # in candidate order
        dtype = self.coords.dtype if self.basis is None else self.basis.dtype
        rows = blocks.reshape(-1, p).to(dtype)  # (k' h, p): one product lifts every block
        v = v.to(dtype)
        if type(self.aggregation.rule) is CoordinateMedian:
            ranks = [(n + 1) // 2] if n % 2 else [n // 2, n // 2 + 1]
        else:
            ranks = list(range(self.aggregation.rule.f + 1, n - self.aggregation.rule.f + 1))
        wires = sorted({r - 1 for q in ranks for r in (q - f, q) if 1 <= r <= h})
        d = p if self.basis is None else self.basis.shape[1]
        out = v.new_empty(k, d)
        # Candidates' own rows (after a pre-aggregator) and large models go compiled however few the candidates: once
        # compiled (the search's first call does it), the network beats the eager one at every size (logistic
        # regression, NNM + CM: 0.42 ms against 0.62 for 4 candidates, 2.0 against 5.5 for 24). Direct rows of a
        # small model, sorted once per call, are left to order_statistics' default (no compile for 0.05 ms a call).
        fuse = True if self.basis is not None or d >= FUSE_MIN_NUMEL else None
        for lo in range(0, d, BLOCK):
            if self.basis is None:
                lifted, copies = rows[:, lo : lo + BLOCK], v[:, lo : lo + BLOCK]
            else:
                basis = self.basis[:, lo : lo + BLOCK]
                lifted, copies = rows @ basis, v @ basis
            s = order_statistics(lifted.reshape(len(blocks), h, -1).unbind(1), wires, fuse=fuse)

            def order_stat(q: int) -> Tensor:
                """The ``q``-th smallest of the ``n`` values: ``clamp(v, s_(q-f), s_q)``."""
                low = None if q <= f else s[q - f - 1][which] if gather else s[q - f - 1]
                high = None if q > h else s[q - 1][which] if gather else s[q - 1]
                return copies.clamp(low, high)

            if len(ranks) == 1:
                out[:, lo : lo + BLOCK] = order_stat(ranks[0])
            else:
                out[:, lo : lo + BLOCK] = sum(order_stat(q) for q in ranks) / len(ranks)
        return out
