"""Composition of pre-aggregators and a rule from a spec such as ``"bucketing+nnm+cm"``."""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor

from flwr_byz.aggregation.arc import AdaptiveRobustClipping
from flwr_byz.aggregation.base import PreAggregator, Rule, Stage, as_batch
from flwr_byz.aggregation.bucketing import Bucketing
from flwr_byz.aggregation.bulyan import Bulyan
from flwr_byz.aggregation.caf import CovarianceBoundAgnosticFilter
from flwr_byz.aggregation.centered_clipping import CenteredClipping
from flwr_byz.aggregation.clipping import StaticClipping
from flwr_byz.aggregation.dnc import DnC
from flwr_byz.aggregation.flame import Flame
from flwr_byz.aggregation.fltrust import FLTrust
from flwr_byz.aggregation.geometric_median import GeometricMedian
from flwr_byz.aggregation.krum import Krum, MultiKrum
from flwr_byz.aggregation.mda import MinimumDiameterAveraging
from flwr_byz.aggregation.mean import Mean, Weighted
from flwr_byz.aggregation.meamed import MeanAroundMedian
from flwr_byz.aggregation.median import CoordinateMedian
from flwr_byz.aggregation.nnm import NearestNeighborMixing
from flwr_byz.aggregation.signguard import SignGuard
from flwr_byz.aggregation.trimmed_mean import TrimmedMean

RULES: dict[str, type[Rule]] = {
    cls.name: cls
    for cls in (Mean, CoordinateMedian, TrimmedMean, GeometricMedian, Krum, MultiKrum, Bulyan, CenteredClipping,
                FLTrust, DnC, SignGuard, Flame,
                MeanAroundMedian, MinimumDiameterAveraging, CovarianceBoundAgnosticFilter)
}
PRE_AGGREGATORS: dict[str, type[PreAggregator]] = {
    cls.name: cls for cls in (NearestNeighborMixing, Bucketing, StaticClipping, AdaptiveRobustClipping)
}
ROW_PRESERVING: tuple[type[PreAggregator], ...] = (NearestNeighborMixing, StaticClipping, AdaptiveRobustClipping)
"""Pre-aggregators whose output row ``i`` comes from input row ``i`` (same ``n``, same order): the only ones a
weighted rule may follow, its weight ``w_i`` then weighing output row ``i``."""


class Aggregation:
    """Pre-aggregators followed by a rule: ``F = rule o pre_m o ... o pre_1``.

    Callable on ``(n, d) -> (d)`` and ``(k, n, d) -> (k, d)``; never mutates its input.

    A weighted rule (``mean`` or ``multikrum`` built with ``weights``, see :class:`Weighted`) weighs
    the rows it receives; Flower's weighted strategies have no pre-aggregation. So weights are
    only allowed after row-preserving pre-aggregators (:data:`ROW_PRESERVING`: NNM, clipping, ARC), where
    ``w_i`` weighs the pre-aggregated row ``i`` (e.g. ``"nnm+mean"``: ``sum_i w_i y_i / sum_i w_i``, ``y_i``
    the NNM mix of row ``i``); bucketing, which regroups and reorders the rows, raises ``ValueError``.
    """

    def __init__(self, spec: str, pre: list[PreAggregator], rule: Rule) -> None:
        if isinstance(rule, Weighted) and rule.weights is not None:
            moved = [stage.name for stage in pre if not isinstance(stage, ROW_PRESERVING)]
            if moved:
                raise ValueError(
                    f"{spec!r}: {rule.name.upper()} weights weigh the rows it receives, but "
                    f"{', '.join(name.upper() for name in moved)} changes their number and order; weights are "
                    f"allowed only after {', '.join(cls.name for cls in ROW_PRESERVING)} (or no pre-aggregator)"
                )
        self.spec, self.pre, self.rule, self.f = spec, pre, rule, rule.f

    @property
    def needs_reference(self) -> bool:
        """Whether the rule scores the replies against the server's own update of the round (FLTrust's ``g_0``)."""
        return bool(getattr(self.rule, "needs_reference", False))

    def with_reference(self, reference: Tensor | None) -> Aggregation:
        """The pipeline whose rule scores against ``reference`` (:attr:`needs_reference`); itself otherwise."""
        if not self.needs_reference or reference is None:
            return self
        return Aggregation(self.spec, self.pre, self.rule.with_reference(reference))  # type: ignore[attr-defined]

    def for_round(self, t: int) -> Aggregation:
        """The pipeline of round ``t``: every stage's ``for_round(t)`` (bucketing draws that round's buckets)."""
        return Aggregation(self.spec, [stage.for_round(t) for stage in self.pre], self.rule.for_round(t))

    def check(self, n: int) -> None:
        """Raise ``ValueError`` if the pipeline cannot aggregate ``n`` vectors with its ``f`` (or a weighted rule
        does not hold ``n`` weights)."""
        stage, received = self._first_short_stage(n)
        if stage is None:
            if isinstance(self.rule, Weighted):  # the rule receives n rows: its pre-aggregators preserve them
                self.rule.check_weights(n)
            return
        if not self.pre:
            stage.check(received)
        raise ValueError(
            f"{self.spec!r} cannot aggregate n={n} vectors with f={self.f}: "
            f"{stage.name.upper()} needs {stage.requirement} but receives {received}; "
            f"use at least n={self.min_n()} nodes or a smaller f"
        )

    def min_n(self) -> int:
        """Smallest number of inputs the whole pipeline accepts."""
        n = 1
        while self._first_short_stage(n)[0] is not None:
            n += 1
        return n

    def _first_short_stage(self, n: int) -> tuple[Stage | None, int]:
        """The first stage that would receive too few vectors from ``n`` inputs, and how many it gets."""
        for stage in (*self.pre, self.rule):
            if n < stage.min_n():
                return stage, n
            n = stage.output_n(n)
        return None, n

    def __call__(self, x: Tensor) -> Tensor:
        batch, single = as_batch(x)
        self.check(batch.shape[-2])
        for stage in self.pre:
            batch = stage._apply(batch)
        out = self.rule._apply(batch)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"Aggregation({self.spec!r}, f={self.f})"


def _accepted(cls: type[Stage]) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "f"}


def get_aggregator(spec: str, f: int, n: int | None = None, **params: Any) -> Aggregation:
    """Build the aggregation named by ``spec`` for ``f`` Byzantine inputs.

    ``spec`` is a rule (``mean, cm, tm, gm, krum, multikrum, bulyan, cc, meamed, mda, caf, fltrust, dnc,
    signguard, flame``) optionally preceded by pre-aggregators (``nnm, bucketing, clipping, arc``) joined with
    ``+``, e.g. ``"nnm+gm"``, ``"arc+nnm+cm"``.
    Each keyword in ``params`` goes to every stage that accepts it (``nu`` to GM,
    ``s`` to bucketing, ...). If ``n`` is given, the preconditions are checked now.

    ``weights`` (``mean`` and ``multikrum`` only; ``None``: equal weights, the plain rule) are
    per-row weights as Flower's FedAvg and MultiKrum apply them (their ``weighted_by_key``,
    ``num-examples`` by default): ``get_aggregator("mean", 0, weights=w)`` is
    ``sum_i w_i x_i / sum_i w_i``; ``get_aggregator("multikrum", f, select=m, weights=w)`` selects
    by Krum scores as before and averages the selected rows with their ``w``. One finite
    non-negative weight per row, in the order of the rows the rule is called on (the same for
    every problem of a batch); see :class:`Aggregation` for pre-aggregators.
    """
    names = [part.strip().lower() for part in str(spec).split("+")]
    *pre_names, rule_name = names
    if rule_name not in RULES:
        raise ValueError(
            f"unknown aggregation rule {rule_name!r} in spec {spec!r}; "
            f"valid rules: {', '.join(RULES)} (optionally preceded by {', '.join(PRE_AGGREGATORS)} joined with '+')"
        )
    for name in pre_names:
        if name not in PRE_AGGREGATORS:
            raise ValueError(
                f"unknown pre-aggregator {name!r} in spec {spec!r}; valid pre-aggregators: "
                f"{', '.join(PRE_AGGREGATORS)} (the rule comes last)"
            )
    classes = [PRE_AGGREGATORS[name] for name in pre_names] + [RULES[rule_name]]
    accepted = {cls: _accepted(cls) for cls in classes}
    unused = set(params) - set().union(*accepted.values())
    if unused:
        valid = sorted(set().union(*accepted.values()))
        raise ValueError(
            f"parameter(s) {', '.join(sorted(unused))} not accepted by {spec!r}; "
            f"valid parameters: {', '.join(valid) or 'none'}"
        )
    stages = [cls(f, **{k: v for k, v in params.items() if k in accepted[cls]}) for cls in classes]
    aggregation = Aggregation("+".join(names), stages[:-1], stages[-1])  # type: ignore[arg-type]
    if n is not None:
        aggregation.check(n)
    return aggregation
