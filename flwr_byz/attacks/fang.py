"""Fang et al.'s full-knowledge attacks on Krum and on trimmed mean / median (USENIX Security 2020)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flwr_byz.aggregation import Aggregation
from flwr_byz.aggregation.base import pairwise_sq_distances
from flwr_byz.attacks.base import Aggregator, Attack, AttackContext
from flwr_byz.attacks.batching import check_counts
from flwr_byz.attacks.optimal import SequentialSearch, speculative_search
from flwr_byz.attacks.tailored import copies_selected, selecting_rule

VARIANTS = ("auto", "krum", "trim")
AUTO_RULES = {"krum": "krum", "multikrum": "krum", "tm": "trim", "cm": "trim"}
"""The rules Fang et al. attack, and the variant ``variant="auto"`` sends against each."""


@dataclass(frozen=True)
class HalvingNode:
    """The probe ``lam``; ``last``: the first below the threshold (probed, then the search stops)."""

    lam: float
    last: bool
    done: bool = False


@dataclass(frozen=True)
class Halving(SequentialSearch[HalvingNode, bool]):
    """Fang et al.'s search: probe ``lambda_0, lambda_0 / 2, ...`` until the copies are selected or ``lambda``
    falls below ``tol`` (that last one is probed and kept)."""

    tol: float

    def first(self, lam0: float) -> HalvingNode:
        return HalvingNode(lam0, not lam0 >= self.tol or lam0 == 0)

    def propose(self, node: HalvingNode) -> float | None:
        return None if node.done else node.lam

    def branch(self, node: HalvingNode, ok: bool) -> HalvingNode:
        if ok or node.last:
            return HalvingNode(node.lam, node.last, done=True)
        half = node.lam / 2
        return HalvingNode(half, half < self.tol or half == 0)

    def succeeded(self, node: HalvingNode, values: dict[float, bool]) -> bool:
        return values[node.lam]


class Fang(Attack):
    """Fang et al. (2020), full knowledge, in gradient convention (the server steps ``theta - lr * F(g)``).

    ``s = sign(gbar)``: the honest update moves coordinate ``j`` of the model in direction ``-s_j``; both variants
    push it the other way. ``variant="auto"`` picks the paper's by the defended rule ``ctx.aggregator.rule``:
    ``krum`` against Krum and MultiKrum (after no pre-aggregator but ``clipping`` or ``arc``, so that a selected row
    is one node's), ``trim`` against trimmed mean (``tm``) and median (``cm``), whatever precedes them; any other
    defence raises ``ValueError`` naming these, in the first attacked round (the rule is known there).
    ``variant="trim"`` sends the trimmed-mean attack against any rule; ``"krum"`` works against any rule that
    selects rows (Krum, MultiKrum, Bulyan).

    ``krum``: every Byzantine node sends ``a = -lambda * s``, the pseudo-gradient of the paper's model
    ``w_Re - lambda * s_param`` (``w_Re`` the current model, ``s_param = -s``), with ``lambda`` the largest of
    ``lambda_0, lambda_0 / 2, ...`` for which the rule selects the copies (Krum: its winner is a copy; MultiKrum:
    all ``f`` among its selected rows); the first ``lambda`` below ``tol`` ends the search and is sent if no
    larger one was selected. The paper's upper bound, with ``n`` vectors, ``h``
    honest, ``d`` coordinates, ``Gamma_i`` the ``n - f - 2`` honest vectors nearest ``g_i``:
    ``lambda_0 = min_i sum_{l in Gamma_i} ||g_l - g_i|| / ((n - 2f - 1) sqrt(d)) + max_i ||g_i|| / sqrt(d)``
    (model distances are ``lr`` times pseudo-gradient distances and ``w_Re`` is ``g = 0``, so ``lr`` cancels).
    ``lookahead`` halvings are scored per batched call of the rule (the result does not depend on it). Cost: one
    Krum selection of ``n`` rows per halving tried (at most about ``log2(lambda_0 / tol)``).

    ``trim``: per coordinate, ``e_j`` is the honest extreme on the side the attack pushes to (``min_i g_ij`` if
    ``s_j > 0``, ``max_i g_ij`` if ``s_j < 0``), and each Byzantine node sends a value beyond it, drawn uniformly
    from ``ctx.generator``: ``e_j / r`` if ``s_j e_j > 0``, else ``e_j * r``, ``r ~ U[1, b]`` (``b = 2``, the paper's);
    coordinates with ``s_j = 0`` are 0. Each node draws its own values (not shared). Cost: ``O(h d)``.

    Metrics ``fang-krum`` (1: the Krum variant), ``fang-deviation`` (``||a - gbar||``); Krum variant also
    ``fang-lambda``, ``fang-lambda-max`` (``lambda_0``), ``fang-halvings``, ``fang-selected`` (0: no ``lambda``
    above ``tol`` was selected, the last one is sent), ``fang-evals`` (halvings scored), ``fang-calls``.
    """

    name = "fang"

    def __init__(self, variant: str = "auto", b: float = 2.0, tol: float = 1e-5, lookahead: int = 1,
                 max_batch_elems: int | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"fang: variant must be one of {VARIANTS}, got {variant!r}")
        if not (math.isfinite(b) and b >= 1):
            raise ValueError(f"fang: b must be finite and >= 1 (values are drawn between e and b * e), got {b}")
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"fang: tol must be finite and > 0, got {tol}")
        check_counts("fang", max_batch_elems, lookahead=lookahead)
        self.variant, self.b, self.tol = variant, float(b), float(tol)
        self.lookahead, self.max_batch_elems = lookahead, max_batch_elems

    def check_rule(self, aggregator: Aggregator) -> None:
        self.variant_for(aggregator)

    def variant_for(self, aggregator: Aggregator | None) -> str:
        """The variant sent against ``aggregator`` (``krum`` or ``trim``); ``ValueError`` for a rule Fang et al.
        give none for (with ``variant="auto"``)."""
        if self.variant == "trim":
            return "trim"
        if self.variant == "krum":
            selecting_rule(aggregator, "fang (variant=krum)", "; set variant=trim or auto")
            return "krum"
        if not isinstance(aggregator, Aggregation):
            raise ValueError(f"fang: variant='auto' picks the attack by the defended rule, but ctx.aggregator is "
                             f"{type(aggregator).__name__}, not an Aggregation; set variant='krum' or 'trim'")
        chosen = AUTO_RULES.get(aggregator.rule.name)
        if chosen is None:
            raise ValueError(
                f"fang: no variant for the defended rule {aggregator.spec!r}: Fang et al. attack "
                f"{', '.join(AUTO_RULES)} (krum, multikrum: the Krum attack; tm, cm: the trimmed-mean/median "
                f"attack); pick another attack, or set attack-params variant=trim to send the trimmed-mean one")
        if chosen == "krum":
            selecting_rule(aggregator, "fang", "; Krum's attack needs to know whether Krum selects the copies: set "
                           "attack-params variant=trim to send the trimmed-mean one, or pick another attack")
        return chosen

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        variant = self.variant_for(ctx.aggregator)
        gbar = honest.mean(0)
        a = self._krum(honest, gbar, ctx) if variant == "krum" else self._trim(honest, gbar, ctx)
        self.metrics["fang-krum"] = float(variant == "krum")
        self.metrics["fang-deviation"] = float(torch.linalg.vector_norm((a - gbar).double()))
        return a

    def lambda_max(self, honest: Tensor, n: int, f: int) -> float:
        """The paper's upper bound ``lambda_0`` (class docstring): ``n - f - 2`` neighbours (at least 0) and the
        denominator ``n - 2f - 1`` (at least 1, for rules that allow ``n <= 2f + 1``)."""
        h, d = honest.shape
        dist = pairwise_sq_distances(honest[None])[0].sqrt()  # float64, direct differences
        k = min(max(n - f - 2, 0), h - 1)
        others = dist.masked_fill(torch.eye(h, dtype=torch.bool, device=dist.device), math.inf)
        near = others.topk(k, dim=-1, largest=False).values.sum(-1) if k else torch.zeros_like(dist[0])
        spread = float(near.min()) / (max(n - 2 * f - 1, 1) * math.sqrt(d))
        return spread + float(torch.linalg.vector_norm(honest.double(), dim=-1).max()) / math.sqrt(d)

    def _krum(self, honest: Tensor, gbar: Tensor, ctx: AttackContext) -> Tensor:
        s = torch.sign(gbar)
        lam0 = self.lambda_max(honest, ctx.n, ctx.f)
        if not math.isfinite(lam0):
            raise ValueError(f"fang: the Krum bound lambda_0 overflows ({lam0}): the honest vectors are too large")

        def vectors(lams: list[float]) -> Tensor:
            return -torch.tensor(lams, dtype=honest.dtype, device=honest.device)[:, None] * s

        def selected(lams: list[float]) -> list[bool]:
            return copies_selected(ctx.aggregator, honest, vectors(lams), ctx.f, ctx.order,  # type: ignore[arg-type]
                                   self.max_batch_elems)

        search = Halving(self.tol)
        end, stats, values = speculative_search(search, search.first(lam0), selected, self.lookahead)
        self.metrics = {"fang-lambda": end.lam, "fang-lambda-max": lam0, "fang-halvings": float(stats.steps - 1),
                        "fang-selected": float(values[end.lam]), "fang-evals": float(stats.evals),
                        "fang-calls": float(stats.calls)}
        return vectors([end.lam])[0]

    def _trim(self, honest: Tensor, gbar: Tensor, ctx: AttackContext) -> Tensor:
        s = torch.sign(gbar)
        e = torch.where(s > 0, honest.min(0).values, torch.where(s < 0, honest.max(0).values, 0.0))  # 0 where s = 0
        gen = ctx.generator
        device = gen.device if gen is not None else honest.device
        u = torch.rand(honest.shape[1], generator=gen, dtype=honest.dtype, device=device).to(honest.device)
        r = 1 + (self.b - 1) * u
        self.metrics = {}
        return torch.where(s * e > 0, e / r, e * r)
