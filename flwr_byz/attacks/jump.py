"""JUMP (the paper's section 3), greedy segment length tau = 1, run online."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext, HonestLoss, relative_spread
from flwr_byz.attacks.batching import aggregate_copies, check_counts
from flwr_byz.attacks.line_search import SOLVERS
from flwr_byz.attacks.span import SpanAggregation, span_aggregation


SCORE_BATCH_ELEMS = 2**26
"""Entries of one scoring call's aggregates and updated models ``(k, 2, d)``: ``2^25 / d`` lambdas a call."""
FLAT_PROBES = -np.logspace(0, 6, 7)  # scored when the loss is flat; the farthest aggregate from gbar wins
FINGERPRINT_STRIDE = 64  # an aggregate's fingerprint hashes every 64th entry; equal fingerprints are compared whole


@dataclass
class Scored:
    """One distinct candidate aggregate: the smallest ``|lambda|`` giving it, its screened value
    (``phi``) and, once computed, its value under the full honest loss."""

    lam: float
    aggregate: Tensor
    value: float = math.nan
    full: float | None = None
    deviation: float | None = None  # ||aggregate - gbar||, once a tie needs it


def bits(t: Tensor) -> Tensor:
    """``t``'s bytes as integers of its element size: equal iff ``t`` is equal byte for byte."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def fingerprint(aggregate: Tensor) -> bytes:
    """SHA-256 of every ``FINGERPRINT_STRIDE``-th entry's bytes: equal aggregates share it; distinct ones
    sharing it are told apart by comparing all their bytes (``JumpObjective``)."""
    return hashlib.sha256(aggregate[::FINGERPRINT_STRIDE].cpu().numpy().tobytes()).digest()


class JumpObjective:
    """``phi(lambda) = L_H(theta - lr * F(g_1, ..., g_h, lambda gbar, ..., lambda gbar))``, batched over lambdas.

    ``k`` lambdas give ``k`` aggregates ``(k, d)``: in the span of the honest vectors
    when ``span_aggregation`` supports the aggregator (no ``(k, n, d)`` stack, see
    ``span``), else by one call of the batched rule on the candidate stacks
    ``(k, n, d)`` (honest rows, then ``f`` copies of ``lambda * gbar``, in ``ctx.order``), chunked so
    that one call materialises at most ``max_batch_elems`` entries (``None``: the device's default,
    :func:`~flwr_byz.attacks.batching.batch_elems`). One scoring call takes up to :data:`SCORE_BATCH_ELEMS` entries.
    Each distinct aggregate (byte for byte) is scored once per step, within and across
    calls (saturated rules give one aggregate for many lambdas; refinements revisit
    them): aggregates are kept, indexed by a :func:`fingerprint` of a strided sample, and a lambda scored
    before is not aggregated again (a batched aggregation need not give the same bits in batches of other
    sizes, so a recomputed aggregate could escape the byte comparison). Scoring uses
    ``ctx.screening_loss`` when given (a cheaper estimate of ``L_H``: a sub-sample,
    reduced precision), else ``ctx.honest_loss``; :meth:`best` rescores the best
    screened aggregates with ``L_H``. Where the aggregates lie in the honest span and the loss has an ``along``
    (logits linear in the parameters), the losses come from the logits of the span's basis (:meth:`_scores`).
    NaN losses count as ``-inf``.
    ``spread = max_i ||g_i - gbar|| / ||gbar||`` tells solvers where the copies sit
    among the honest vectors; ``breakpoints`` (sorted lambdas, or ``None`` if unknown) are
    the only places where ``phi`` can jump (``SpanAggregation.breakpoints``).
    ``evals`` counts scored lambdas, ``losses`` the
    distinct aggregates whose (screening) loss was evaluated, ``calls`` the batched
    calls, ``finalists`` the aggregates rescored with ``L_H``.
    """

    def __init__(self, honest: Tensor, ctx: AttackContext, max_batch_elems: int | None = None) -> None:
        aggregator, params, loss = ctx.aggregator, ctx.params, ctx.honest_loss
        if aggregator is None or params is None or loss is None:
            missing = [k for k in ("aggregator", "params", "honest_loss") if getattr(ctx, k) is None]
            raise ValueError(f"jump: ctx needs {', '.join(missing)} (it scores the honest loss after the update)")
        if params.shape != honest.shape[1:]:
            raise ValueError(f"jump: ctx.params has shape {tuple(params.shape)}, expected ({honest.shape[1]},)")
        self.aggregator, self.params, self.loss, self.screen = aggregator, params, loss, ctx.screening_loss
        self.honest, self.gbar, self.f, self.lr, self.order = honest, honest.mean(0), ctx.f, ctx.lr, ctx.order
        start = time.perf_counter()
        self.span = span_aggregation(aggregator, honest, ctx.f, ctx.order)
        self.breakpoints = self.span.breakpoints() if self.span is not None else None
        self.seconds = {"setup": time.perf_counter() - start, "aggregate": 0.0, "loss": 0.0}
        self.max_batch_elems = max_batch_elems
        self.chunk = max(1, SCORE_BATCH_ELEMS // (2 * honest.shape[1]))  # lambdas per scoring call
        self.spread = relative_spread(honest)
        self.scored: dict[bytes, list[Scored]] = {}  # by fingerprint
        self.by_lambda: dict[float, Scored] = {}
        self.evals = 0
        self.calls = 0
        self.finalists = 0
        self.along: Callable[[Tensor], Tensor] | None = None  # the scoring loss along the span, once built

    @property
    def losses(self) -> int:
        """Distinct aggregates scored so far."""
        return sum(map(len, self.scored.values()))

    def __call__(self, lams: np.ndarray) -> np.ndarray:
        lams = np.asarray(lams, dtype=np.float64)
        out = np.concatenate([self._score(lams[i : i + self.chunk]) for i in range(0, len(lams), self.chunk)])
        self.evals += len(lams)
        return out

    def best(self, finalists: int) -> tuple[float, float, int]:
        """``(lambda, L_H, ties)`` of the best aggregate scored so far; ``ties``: how many distinct aggregates
        share its loss (1: a strict maximum).

        Ties (a flat or saturated loss cannot tell the candidates apart) go to the largest damage the
        attack can still measure, the aggregate farthest from the honest mean ``||F - gbar||``, then to the
        smallest ``|lambda|``: a tie never falls back to the honest mean. With a screening loss, the
        ``finalists`` best screened aggregates are rescored with ``L_H`` and the best of those wins;
        otherwise the screened value is ``L_H``.
        """
        ranked = self._ranked([s for same in self.scored.values() for s in same], lambda s: s.value)
        if self.screen is not None:
            top = ranked[:finalists]
            todo = [s for s in top if s.full is None]
            if todo:
                start = time.perf_counter()
                values = self._losses(torch.stack([s.aggregate for s in todo]), self.loss)
                self.seconds["loss"] += time.perf_counter() - start
                for s, value in zip(todo, values, strict=True):
                    s.full = float(value)
                self.finalists += len(todo)
            ranked = self._ranked(top, lambda s: s.full)  # type: ignore[arg-type,return-value]
        best = ranked[0].full if self.screen is not None else ranked[0].value
        ties = sum((s.full if self.screen is not None else s.value) == best for s in ranked)
        return ranked[0].lam, best, ties  # type: ignore[return-value]

    def _ranked(self, entries: list[Scored], value: Callable[[Scored], float]) -> list[Scored]:
        """``entries`` best first: by ``value``, ties by ``||aggregate - gbar||`` (largest first), then by the
        smallest ``|lambda|``."""
        counts = Counter(map(value, entries))
        for s in entries:
            if counts[value(s)] > 1 and s.deviation is None:
                s.deviation = float(torch.linalg.vector_norm(s.aggregate - self.gbar.to(s.aggregate)))
        return sorted(entries, key=lambda s: (-value(s), -(s.deviation or 0.0), abs(s.lam)))

    @property
    def flat(self) -> bool:
        """Whether every aggregate scored so far has the same (screened) loss: the loss told them not apart."""
        values = {s.value for same in self.scored.values() for s in same}
        return len(values) == 1 and sum(map(len, self.scored.values())) > 1

    def _aggregate(self, lam: Tensor) -> tuple[Tensor, Tensor | None]:
        """The candidates' aggregates ``(k, d)`` and, where they lie in the honest span, their coordinates."""
        lam = lam.to(device=self.honest.device, dtype=torch.float64)
        if isinstance(self.span, SpanAggregation) and self.span.in_span:
            coords = self.span.coordinates(lam)
            return self.span.lift(coords), coords
        if self.span is not None:
            return self.span(lam), None
        copies = lam.to(self.honest)[:, None] * self.gbar
        return aggregate_copies(self.aggregator, self.honest, copies, self.f, self.order, self.max_batch_elems), None

    def _losses(self, aggregates: Tensor, loss: HonestLoss) -> np.ndarray:
        """``loss(theta - lr * a)`` of each aggregate row, NaN as ``-inf``, as float64."""
        with torch.no_grad():
            return self._values(loss(torch.add(self.params, aggregates, alpha=-self.lr)), len(aggregates))

    def _scores(self, aggregates: Tensor, coords: Tensor | None) -> np.ndarray:
        """The scoring loss of new aggregates. Where they lie in the span (coordinates ``c``) and the loss has an
        ``along`` (``flwr_byz.tasks.SampleLoss``: logits linear in the parameters), ``L(theta - lr c B)`` comes from
        the logits of ``theta`` and the ``p`` basis rows, computed once per step when a call first needs more than
        ``p + 1`` losses (on MNIST logistic regression against NNM + GM: 34 forward passes become 13)."""
        loss = self.screen or self.loss
        along = getattr(loss, "along", None)
        if coords is not None and self.along is None and along is not None and len(coords) > coords.shape[1] + 1:
            assert isinstance(self.span, SpanAggregation) and self.span.basis is not None  # coords come from it
            self.along = along(self.params, self.span.basis)
        if coords is None or self.along is None:
            return self._losses(aggregates, loss)
        with torch.no_grad():
            return self._values(self.along(-self.lr * coords), len(coords))

    @staticmethod
    def _values(values: Tensor, k: int) -> np.ndarray:
        """Losses ``(k,)`` as float64, NaN as ``-inf``."""
        if values.shape != (k,):
            raise ValueError(f"jump: honest_loss must map (k, d) -> (k,), got {tuple(values.shape)} for k={k}")
        out: np.ndarray = values.double().cpu().numpy()
        return np.nan_to_num(out, nan=-np.inf, posinf=np.inf, neginf=-np.inf)

    def _score(self, lams: np.ndarray) -> np.ndarray:
        todo = [lam for lam in dict.fromkeys(lams.tolist()) if lam not in self.by_lambda]
        new: list[Scored] = []
        rows: list[int] = []  # where the new aggregates are in this call's
        if todo:
            start = time.perf_counter()
            with torch.no_grad():
                aggregates, coords = self._aggregate(torch.tensor(todo, dtype=torch.float64))
            self.seconds["aggregate"] += time.perf_counter() - start
            for row, (lam, aggregate) in enumerate(zip(todo, aggregates, strict=True)):
                same = self.scored.setdefault(fingerprint(aggregate), [])
                entry = next((s for s in same if torch.equal(bits(s.aggregate), bits(aggregate))), None)
                if entry is None:
                    entry = Scored(lam, aggregate)
                    same.append(entry)
                    new.append(entry)
                    rows.append(row)
                elif abs(lam) < abs(entry.lam):
                    entry.lam = lam
                self.by_lambda[lam] = entry
        entries = [self.by_lambda[lam] for lam in lams.tolist()]
        if new:
            pick = slice(None) if len(new) == len(aggregates) else rows  # a view when every aggregate is new
            start = time.perf_counter()
            values = self._scores(aggregates[pick], None if coords is None else coords[pick])
            self.seconds["loss"] += time.perf_counter() - start
            self.calls += 1
            for s, value in zip(new, values, strict=True):
                s.value = float(value)
        return np.array([s.value for s in entries])


class Jump(Attack):
    """JUMP, tau = 1: ``a = lambda* gbar``, ``lambda* = argmax_lambda phi(lambda)`` (see ``JumpObjective``).

    The f Byzantine vectors are colinear with the honest mean: positive lambdas
    resist or overshoot descent (a "jump" over a minimum), negative ones push
    uphill. Solvers (``line_search``): ``"global"`` (default: batched grid and
    refinement, ``GlobalSearch``) or ``"powell"`` (the paper's: Powell from
    ``start = 1``, unbounded); ``solver_params`` are the chosen solver's fields.
    ``max_batch_elems`` bounds the entries one batched aggregation materialises (``None``: the device's default).
    With a screening loss in the context, the solver climbs the screened objective
    and the ``finalists`` best distinct aggregates are rescored with ``L_H``.
    Metrics: ``jump-lambda``, ``jump-loss`` (predicted honest loss after the
    update), ``jump-ties`` (distinct aggregates sharing the best loss; more than 1: the tie
    went to the aggregate farthest from ``gbar``), ``jump-flat`` (1: every candidate had the
    same loss, a flat or saturated loss; the search then also scores ``lambda = -1, -10, ..., -1e6``
    and sends the aggregate farthest from ``gbar``), ``jump-evals`` (lambdas scored), ``jump-losses`` (distinct aggregates whose
    loss was evaluated), ``jump-calls`` (batched calls), ``jump-finalists``; where the time goes:
    ``jump-setup-seconds`` (the span and breakpoints), ``jump-aggregate-seconds`` (the candidate aggregates),
    ``jump-loss-seconds`` (their honest losses; on CUDA it also waits for the aggregates' kernels), the rest of
    ``attack-seconds`` being the search itself.
    """

    name = "jump"

    def __init__(self, solver: str = "global", max_batch_elems: int | None = None, finalists: int = 2,
                 **solver_params: object) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"jump: unknown solver {solver!r}; valid: {sorted(SOLVERS)}")
        cls = SOLVERS[solver]
        valid = {fld.name for fld in dataclasses.fields(cls)}
        unknown = set(solver_params) - valid
        if unknown:
            raise ValueError(
                f"jump: unknown parameters {sorted(unknown)} for solver {solver!r}; "
                f"valid: solver, max_batch_elems, finalists, {', '.join(sorted(valid))}"
            )
        check_counts("jump", max_batch_elems, finalists=finalists)
        self.solver = cls(**solver_params)  # type: ignore[arg-type]
        self.max_batch_elems, self.finalists = max_batch_elems, finalists

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        phi = JumpObjective(honest, ctx, self.max_batch_elems)
        self.solver(phi, phi.spread)
        if phi.flat:  # the loss tells no candidate apart (a local solver then stays near its start)
            phi(FLAT_PROBES)
        lam, loss, ties = phi.best(self.finalists)
        self.metrics = {
            "jump-lambda": lam,
            "jump-loss": loss,
            "jump-ties": float(ties),
            "jump-flat": float(phi.flat),
            "jump-evals": float(phi.evals),
            "jump-losses": float(phi.losses),
            "jump-calls": float(phi.calls),
            "jump-finalists": float(phi.finalists),
            **{f"jump-{part}-seconds": seconds for part, seconds in phi.seconds.items()},
        }
        return lam * phi.gbar
