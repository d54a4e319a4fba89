"""The AGR-tailored attack (Shejwalkar & Houmansadr, NDSS 2021): the scale of ``gbar - gamma * p`` tailored to the
defended rule, and which rows a selecting rule keeps (also used by Fang's attack on Krum)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flwr_byz.aggregation import Aggregation
from flwr_byz.aggregation.bulyan import Bulyan
from flwr_byz.aggregation.krum import Krum, MultiKrum
from flwr_byz.attacks.base import Aggregator, Attack, AttackContext
from flwr_byz.attacks.batching import aggregate_copies, check_counts, stacks
from flwr_byz.attacks.minmax import PERTURBATIONS, perturbation
from flwr_byz.attacks.optimal import SequentialSearch, deviation, speculative_search
from flwr_byz.attacks.span import ROW_WISE

SELECTING = ("krum", "multikrum", "bulyan")
"""Rules that keep some of the rows they receive: an attack can ask which."""
OBJECTIVES = ("auto", "selection", "distance")
MAX_STEPS = 200  # the bisection's steps, whatever tol: 10 / 2^200 is far below any float's resolution


def selection_problem(aggregator: Aggregator | None) -> str | None:
    """Why the rows ``aggregator`` selects cannot be asked for (``None``: they can): it must be an
    :class:`Aggregation` whose rule selects rows (:data:`SELECTING`) after :data:`ROW_WISE` pre-aggregators only."""
    if not isinstance(aggregator, Aggregation):
        return (f"ctx.aggregator is {type(aggregator).__name__}, not the defended Aggregation (get_aggregator) that "
                f"says which rows it selects")
    if aggregator.rule.name not in SELECTING:
        return f"the defended rule {aggregator.spec!r} selects no rows (rules that do: {', '.join(SELECTING)})"
    mixed = [stage.name for stage in aggregator.pre if not isinstance(stage, ROW_WISE)]
    if mixed:
        return (f"{aggregator.spec!r} mixes or regroups the rows before {aggregator.rule.name} ({', '.join(mixed)}), "
                f"so no selected row is a Byzantine node's own (allowed before it: "
                f"{', '.join(cls.name for cls in ROW_WISE)})")
    return None


def selecting_rule(aggregator: Aggregator | None, who: str, fix: str = "") -> Aggregation:
    """``aggregator``, checked by :func:`selection_problem`; ``ValueError`` naming the problem (and ``fix``)."""
    problem = selection_problem(aggregator)
    if problem is not None:
        raise ValueError(f"{who}: {problem}{fix}")
    return aggregator  # type: ignore[return-value]


def selected_rows(aggregation: Aggregation, stacks: Tensor) -> Tensor:
    """Indices ``(k, s)`` of the rows of each ``(k, n, d)`` stack that a selecting rule (:func:`selecting_rule`)
    keeps after its pre-aggregators: Krum's winner (``s = 1``), MultiKrum's ``select`` best (default ``n - f``),
    Bulyan's ``n - 2f`` Krum selections."""
    n = stacks.shape[-2]
    aggregation.check(n)
    x = stacks
    for stage in aggregation.pre:
        x = stage._apply(x)
    rule = aggregation.rule
    if isinstance(rule, Bulyan):
        return rule._select(x)
    if isinstance(rule, MultiKrum):
        return rule.order(x)[..., : rule.select or n - rule.f]
    assert isinstance(rule, Krum)
    return rule.order(x)[..., :1]


def copies_selected(aggregation: Aggregation, honest: Tensor, vectors: Tensor, f: int, order: Tensor | None,
                    max_batch_elems: int | None = None) -> list[bool]:
    """For each candidate ``vectors[j]``: whether the rule selects all ``f`` of its copies (all its ``s`` places,
    if ``s < f``: Krum's one winner is a copy)."""
    h = len(honest)
    byzantine = torch.arange(h + f, device=honest.device) >= h
    if order is not None:
        byzantine = byzantine[order.to(honest.device)]  # row j of the stack the defence sees is row order[j]
    out: list[bool] = []
    with torch.no_grad():
        for stack in stacks(honest, vectors, f, order, max_batch_elems):
            rows = selected_rows(aggregation, stack)
            kept = byzantine[rows].sum(-1)
            out += (kept == min(f, rows.shape[-1])).tolist()
    return out


@dataclass(frozen=True)
class BisectNode:
    """The search's state: the probe ``gamma``, the ``step``, the last success ``succ`` and the previous probe."""

    gamma: float
    step: float
    succ: float
    prev: float | None
    steps: int


@dataclass(frozen=True)
class Bisection(SequentialSearch[BisectNode, object]):
    """The authors' search for ``gamma`` (their released code, NDSS21-Model-Poisoning).

    ``gamma = gamma_init``, ``step = gamma_init``, ``succ = 0``; while ``|succ - gamma| > tol``: probe ``gamma``; on
    success ``succ = gamma`` and ``gamma += step / 2``, else ``gamma -= step / 2``; ``step /= 2``. The result is
    ``succ``. ``improve = False``: success is the oracle's yes (the copies are selected); ``improve = True``: success
    is a distance larger than the previous probe's (the first probe always succeeds), as the authors' code for
    trimmed mean and median has it.
    """

    gamma_init: float
    tol: float
    improve: bool

    def first(self) -> BisectNode:
        return BisectNode(self.gamma_init, self.gamma_init, 0.0, None, 0)

    def propose(self, node: BisectNode) -> float | None:
        return node.gamma if abs(node.succ - node.gamma) > self.tol and node.steps < MAX_STEPS else None

    def branch(self, node: BisectNode, ok: bool) -> BisectNode:
        half = node.step / 2
        return BisectNode(node.gamma + half if ok else node.gamma - half, half, node.gamma if ok else node.succ,
                          node.gamma, node.steps + 1)

    def succeeded(self, node: BisectNode, values: dict[float, object]) -> bool:
        value = values[node.gamma]
        if not self.improve:
            return bool(value)
        previous = -1.0 if node.prev is None else values[node.prev]
        return bool(value > previous)  # type: ignore[operator]  # NaN never improves


class AGRTailored(Attack):
    """AGR-tailored attack (Shejwalkar & Houmansadr, NDSS 2021): ``a = gbar - gamma * p``, ``gamma`` tailored to the
    defended rule ``F = ctx.aggregator``.

    ``p`` (``perturbation``): ``unit`` = ``gbar / ||gbar||``, ``std`` = the unbiased coordinate-wise std, ``sign`` =
    ``sign(gbar)`` (``minmax``'s perturbations, negated). ``objective="auto"`` picks the paper's by the rule:
    against Krum, MultiKrum and Bulyan (after no pre-aggregator but ``clipping`` or ``arc``, which rescale rows one
    by one) the largest ``gamma`` for which the rule selects all ``f`` copies (Krum: its winner is a copy;
    MultiKrum: its ``select`` best, Bulyan: its ``n - 2f`` Krum selections, hold them); against every other
    defence (trimmed mean and median in the paper; also ``nnm+krum``, whose mixed rows belong to no node) a
    ``gamma`` that makes ``||F(g_1..g_h, a x f) - gbar||`` large: a probe succeeds when that distance grew since
    the previous probe (the first probe always succeeds), the authors' hill climb, so a distance that is flat from
    ``gamma_init`` on keeps ``gamma_init``. ``"selection"`` and ``"distance"`` force one objective.

    The search (:class:`Bisection`) starts at ``gamma_init`` (10, the authors' code's for trimmed mean and median;
    3 for its Multi-Krum and Bulyan) and halves its step down to ``tol`` (the code's 1e-5): about ``log2(gamma_init / tol)`` probes, a result in ``[0, 2 gamma_init)``; ``gamma = 0``
    (no probe succeeded) sends ``gbar``. ``lookahead`` steps are scored per batched call of the rule
    (:func:`~flwr_byz.attacks.optimal.speculative_search`; the result does not depend on it; 1, the default, is
    the sequential search). Metrics ``agr-tailored-gamma``, ``-selection`` (1: the selection objective),
    ``-distance`` (``||F - gbar||`` at ``gamma``), ``-steps`` (probes on the search's path), ``-evals`` (probes
    scored), ``-calls`` (batched calls). Cost: ``evals`` aggregations (or selections) of ``n`` vectors.
    """

    name = "agr-tailored"

    def __init__(self, perturbation: str = "unit", gamma_init: float = 10.0, tol: float = 1e-5,
                 objective: str = "auto", lookahead: int = 1, max_batch_elems: int | None = None) -> None:
        super().__init__()
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"{self.name}: perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"{self.name}: objective must be one of {OBJECTIVES}, got {objective!r}")
        if not (math.isfinite(gamma_init) and gamma_init > 0 and math.isfinite(tol) and tol > 0):
            raise ValueError(f"{self.name}: need finite gamma_init > 0 and tol > 0, got gamma_init={gamma_init}, "
                             f"tol={tol}")
        check_counts(self.name, max_batch_elems, lookahead=lookahead)
        self.perturbation, self.objective = perturbation, objective
        self.gamma_init, self.tol = float(gamma_init), float(tol)
        self.lookahead, self.max_batch_elems = lookahead, max_batch_elems

    def uses_selection(self, aggregator: Aggregator | None) -> bool:
        """Whether the selection objective applies to ``aggregator`` (``ValueError`` if ``objective="selection"``
        names a defence whose selected rows are unknown, :func:`selection_problem`)."""
        if self.objective == "selection":
            selecting_rule(aggregator, self.name, "; use objective=distance or auto")
            return True
        return self.objective == "auto" and selection_problem(aggregator) is None

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        if ctx.aggregator is None:
            raise ValueError(f"{self.name}: ctx.aggregator is missing (gamma is tailored to the defended rule)")
        if self.perturbation == "std" and ctx.h < 2:
            raise ValueError(f"{self.name}: the std perturbation needs at least 2 honest vectors")
        selection = self.uses_selection(ctx.aggregator)
        gbar = honest.mean(0)
        p = perturbation(self.perturbation, honest, gbar)  # -(gbar / ||gbar||), -std or -sign(gbar)

        def vectors(gammas: list[float]) -> Tensor:
            return gbar + torch.tensor(gammas, dtype=honest.dtype, device=honest.device)[:, None] * p

        def distances(gammas: list[float]) -> list[float]:
            aggregates = aggregate_copies(ctx.aggregator, honest, vectors(gammas),  # type: ignore[arg-type]
                                          ctx.f, ctx.order, self.max_batch_elems)
            return deviation(aggregates, gbar)

        def selected(gammas: list[float]) -> list[bool]:
            return copies_selected(ctx.aggregator, honest, vectors(gammas), ctx.f, ctx.order,  # type: ignore[arg-type]
                                   self.max_batch_elems)

        search = Bisection(self.gamma_init, self.tol, improve=not selection)
        end, stats, values = speculative_search(search, search.first(), selected if selection else distances,
                                                self.lookahead)
        gamma = end.succ
        distance = values[gamma] if not selection and gamma in values else distances([gamma])[0]
        self.metrics = {f"{self.name}-gamma": gamma, f"{self.name}-selection": float(selection),
                        f"{self.name}-distance": float(distance),  # type: ignore[arg-type]
                        f"{self.name}-steps": float(stats.steps),
                        f"{self.name}-evals": float(stats.evals), f"{self.name}-calls": float(stats.calls)}
        return vectors([gamma])[0]
