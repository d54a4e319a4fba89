"""Scale searches scored in batches, and ByzFL's optimal ALIE and optimal IPM built on them.

An attack of the form ``a(tau) = base + tau * direction`` is scored by sending ``f`` copies of ``a(tau)`` with the
``h`` honest vectors through the defended rule; :func:`~flwr_byz.attacks.batching.aggregate_copies` does that for
many scales in one batched call of the rule on ``(k, n, d)`` stacks. The searches of ByzFL and of Shejwalkar & Houmansadr are sequential: each
probe's scale depends on whether the previous ones succeeded. :func:`speculative_search` runs such a search
unchanged, but evaluates the probes of the next ``depth`` steps on both branches of every outcome in one call
(``2^depth - 1`` probes, ``depth`` steps), then walks the path the outcomes choose: the same probes, in the same
order, with the same result as the sequential search, in about ``steps / depth`` calls of the rule.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import torch
from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext
from flwr_byz.attacks.batching import aggregate_copies, check_counts

Node = TypeVar("Node", bound=Hashable)
Value = TypeVar("Value")


def deviation(aggregates: Tensor, gbar: Tensor) -> list[float]:
    """``||F_j - gbar||`` of each aggregate row, in float64 (NaN stays NaN: it never compares larger)."""
    return torch.linalg.vector_norm((aggregates - gbar).double(), dim=-1).tolist()


class SequentialSearch(Generic[Node, Value]):
    """A search over a scalar scale that proposes one probe per step and branches on one yes/no outcome.

    ``propose(node)``: the next probe, or ``None`` when the search is over; ``branch(node, ok)``: the node after
    the step; ``succeeded(node, values)``: the outcome of the node's probe given the values of every probe made so
    far (``values[x]``; a search may compare with earlier probes, which are on the path to ``node``). Nodes are
    immutable, so the outcomes' tree can be unrolled ahead of the values.
    """

    @abstractmethod
    def propose(self, node: Node) -> float | None: ...

    @abstractmethod
    def branch(self, node: Node, ok: bool) -> Node: ...

    @abstractmethod
    def succeeded(self, node: Node, values: dict[float, Value]) -> bool: ...


@dataclass
class SearchStats:
    """What a search cost: ``steps`` probes on its path, ``evals`` probes scored (speculation included),
    ``calls`` batched calls of the rule."""

    steps: int = 0
    evals: int = 0
    calls: int = 0


def speculative_search(search: SequentialSearch[Node, Value], start: Node,
                       score: Callable[[list[float]], list[Value]],
                       depth: int) -> tuple[Node, SearchStats, dict[float, Value]]:
    """Run ``search`` from ``start`` to its end; ``score`` maps probes to their values in one batched call.

    Each call scores the not yet scored probes of the next ``depth`` steps on every branch (at most
    ``2^depth - 1``); the walk then follows the outcomes. The final node and the probes on its path are those of
    the sequential search (``depth = 1`` is the sequential search itself). Returns the final node, the costs and
    the value of every probe scored.
    """
    values: dict[float, Value] = {}
    stats = SearchStats()
    node = start
    while search.propose(node) is not None:
        frontier, todo = [node], []
        for _ in range(depth):
            following = []
            for spec in frontier:
                probe = search.propose(spec)
                if probe is None:
                    continue
                if probe not in values and probe not in todo:
                    todo.append(probe)
                following += [search.branch(spec, True), search.branch(spec, False)]
            frontier = following
        if todo:
            values.update(zip(todo, score(todo), strict=True))
            stats.evals += len(todo)
            stats.calls += 1
        for _ in range(depth):
            if search.propose(node) is None:
                break
            node = search.branch(node, search.succeeded(node, values))
            stats.steps += 1
    return node, stats, values


@dataclass(frozen=True)
class ByzflNode:
    """ByzFL's line search: ``phase`` (``start``, ``expand``, ``contract``), the best scale so far, the step, and
    the evaluations left."""

    phase: str
    best: float
    delta: float
    remaining: int


@dataclass(frozen=True)
class ByzflSearch(SequentialSearch[ByzflNode, float]):
    """ByzFL 0.0.11's ``_expansion_phase`` then ``_contraction_phase``, probe for probe.

    Evaluate ``start``; expansion: propose ``best + delta``, on improvement (strictly larger value) take it and
    double ``delta``, else multiply ``delta`` by ``ratio`` and contract; contraction: propose ``best + delta``, take
    it on improvement, multiply ``delta`` by ``ratio``; ``evals`` evaluations in all (the start included).
    """

    start: float
    delta: float
    ratio: float
    evals: int

    def first(self) -> ByzflNode:
        return ByzflNode("start", self.start, self.delta, self.evals)

    def propose(self, node: ByzflNode) -> float | None:
        if node.phase == "start":
            return node.best
        return node.best + node.delta if node.remaining > 0 else None

    def branch(self, node: ByzflNode, ok: bool) -> ByzflNode:
        if node.phase == "start":
            return ByzflNode("expand", node.best, node.delta, node.remaining - 1)
        probe = node.best + node.delta
        if node.phase == "expand":
            if ok:
                return ByzflNode("expand", probe, node.delta * 2, node.remaining - 1)
            return ByzflNode("contract", node.best, node.delta * self.ratio, node.remaining - 1)
        return replace(node, best=probe if ok else node.best, delta=node.delta * self.ratio,
                       remaining=node.remaining - 1)

    def succeeded(self, node: ByzflNode, values: dict[float, float]) -> bool:
        if node.phase == "start":
            return True
        return values[node.best + node.delta] > values[node.best]


class OptimalScale(Attack):
    """``a = base + tau * direction``, ``tau`` ByzFL's line search maximising ``||F(g_1..g_h, a x f) - gbar||``.

    The search (:class:`ByzflSearch`): ``evals`` evaluations from ``start`` with first step ``delta``, doubling
    while the distance grows, then steps shrinking by ``ratio``. ``lookahead`` steps of the search are scored per
    batched call of the defended rule (:func:`speculative_search`; the result does not depend on it): 1, the
    default, is ByzFL's ``evals`` evaluations in as many calls; more trades extra evaluations for fewer calls
    (slower on a CPU, where the evaluations dominate). ``max_batch_elems`` bounds one call's stacked entries
    (``None``: the device's default, :func:`~flwr_byz.attacks.batching.batch_elems`).
    Metrics ``<name>-tau``, ``<name>-distance`` (the distance at ``tau``), ``<name>-evals`` (scales scored,
    speculative ones included), ``<name>-calls``.
    """

    def __init__(self, evals: int = 20, start: float = 0.0, delta: float = 10.0, ratio: float = 0.8,
                 lookahead: int = 1, max_batch_elems: int | None = None) -> None:
        super().__init__()
        check_counts(self.name, max_batch_elems, evals=evals, lookahead=lookahead)
        if not (math.isfinite(start) and math.isfinite(delta) and delta != 0):
            raise ValueError(f"{self.name}: need a finite start and a finite, non-zero delta, got start={start}, "
                             f"delta={delta}")
        if not 0.5 < ratio < 1:
            raise ValueError(f"{self.name}: ratio must be in (0.5, 1) (ByzFL's range), got {ratio}")
        self.search = ByzflSearch(float(start), float(delta), float(ratio), evals)
        self.lookahead, self.max_batch_elems = lookahead, max_batch_elems

    @abstractmethod
    def base_and_direction(self, honest: Tensor, gbar: Tensor) -> tuple[Tensor, Tensor]:
        """``(base, direction)`` of ``a(tau) = base + tau * direction``."""

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        if ctx.aggregator is None:
            raise ValueError(f"{self.name}: ctx.aggregator is missing (tau is searched against the defended rule)")
        gbar = honest.mean(0)
        base, direction = self.base_and_direction(honest, gbar)

        def vectors(taus: list[float]) -> Tensor:
            return base + torch.tensor(taus, dtype=honest.dtype, device=honest.device)[:, None] * direction

        def score(taus: list[float]) -> list[float]:
            aggregates = aggregate_copies(ctx.aggregator, honest, vectors(taus),  # type: ignore[arg-type]
                                          ctx.f, ctx.order, self.max_batch_elems)
            return deviation(aggregates, gbar)

        search = self.search
        end, stats, values = speculative_search(search, search.first(), score, self.lookahead)
        tau = end.best
        distance = values[tau]
        self.metrics = {f"{self.name}-tau": tau, f"{self.name}-distance": distance,
                        f"{self.name}-evals": float(stats.evals), f"{self.name}-calls": float(stats.calls)}
        return vectors([tau])[0]


class OptimalALIE(OptimalScale):
    """Optimal ALIE (ByzFL 0.0.11's ``Optimal_ALittleIsEnough``): ``a = gbar + tau * std``, ``std`` the unbiased
    coordinate-wise standard deviation of the honest vectors (ByzFL's ``var(ddof=1)``; its docstring writes
    ``1/n``), ``tau`` ByzFL's line search (:class:`OptimalScale`) maximising ``||F(g_1..g_h, a x f) - gbar||``
    against the defended rule ``ctx.aggregator`` with the round's ``ctx.f`` copies.

    The sign is ByzFL's (``+ tau * std``, searched from ``start = 0`` upwards), the opposite of ``alie``'s
    ``gbar - z * std``. Cost: ``evals`` aggregations of ``n`` vectors (with ``lookahead = L``: at most
    ``2^L - 1`` per call, in about ``evals / L`` calls).
    """

    name = "alie-opt"

    def base_and_direction(self, honest: Tensor, gbar: Tensor) -> tuple[Tensor, Tensor]:
        if len(honest) < 2:
            raise ValueError(f"{self.name}: the coordinate-wise std needs at least 2 honest vectors")
        return gbar, honest.std(0)


class OptimalIPM(OptimalScale):
    """Optimal IPM (ByzFL 0.0.11's ``Optimal_InnerProductManipulation``): ``a = -tau * gbar``, ``tau`` ByzFL's line
    search (:class:`OptimalScale`) maximising ``||F(g_1..g_h, a x f) - gbar||`` against the defended rule
    ``ctx.aggregator`` with the round's ``ctx.f`` copies. Cost: as ``alie-opt``'s.
    """

    name = "ipm-opt"

    def base_and_direction(self, honest: Tensor, gbar: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(gbar), -gbar
