"""The server's Robust D-SGD update, shared by the Flower strategy and the in-process engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from flwr_byz.aggregation.pipeline import Aggregation, get_aggregator


@dataclass(frozen=True)
class RobustUpdate:
    """Outcome of :func:`robust_update`: the new model (``None``: keep the old one, ``reason`` says why),
    which rows were finite, and how many rows count as excluded (presumed Byzantine)."""

    theta: Tensor | None
    finite: Tensor
    excluded: int
    reason: str | None = None


def finite_rows(x: Tensor) -> Tensor:
    """Which rows of ``x (n, d)`` hold only finite values. One summation pass: a row whose sum is finite has no
    NaN or infinite entry; only rows whose sum is not (such an entry, or finite ones whose sum overflows) are
    checked entry by entry."""
    finite = x.sum(dim=-1).isfinite()
    if not finite.all():
        suspect = ~finite
        finite[suspect] = x[suspect].isfinite().all(dim=-1)
    return finite


def robust_update(theta: Tensor, grads: Tensor, step: float, rule_for: Callable[[int], Aggregation],
                  excluded: int = 0) -> RobustUpdate:
    """``theta - step * F(finite rows of grads)`` with ``F = rule_for(excluded + non-finite rows)``.

    Rows with a non-finite entry are excluded and counted against the rule's ``f`` on top of
    ``excluded`` (rows the caller already dropped). With fewer rows than ``F`` needs, or a
    non-finite result, the model stays where it was.
    """
    finite = finite_rows(grads)
    valid = int(finite.sum())
    excluded += len(grads) - valid
    rule = rule_for(excluded)
    if valid < rule.min_n():
        return RobustUpdate(None, finite, excluded,
                            f"{valid} valid replies, {rule.spec!r} with f={rule.f} needs {rule.min_n()}")
    new = theta - step * rule(grads if valid == len(grads) else grads[finite])
    if not new.isfinite().all():
        return RobustUpdate(None, finite, excluded, "the aggregate is not finite")
    return RobustUpdate(new, finite, excluded)


def rule_after(rule: Aggregation, excluded: int, params: dict, round_: int) -> Aggregation:
    """The defended rule of round ``round_`` once ``excluded`` replies were dropped as Byzantine: ``rule`` with
    ``f`` lowered by that many (``params``: its hyper-parameters)."""
    f = max(rule.f - excluded, 0)
    return (rule if f == rule.f else get_aggregator(rule.spec, f, **params)).for_round(round_)
