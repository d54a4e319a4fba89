"""What the omniscient adversary knows of the defence: the flwr_byz rule a Flower strategy computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy
from flwr.serverapp.strategy.multikrum import select_multikrum

from flwr_byz.flower.robust import RobustStrategy


@dataclass(frozen=True)
class DefendedRule:
    """What the adversary knows of the defence: ``get_aggregator(spec, f, **params)`` and ``server_lr``;
    ``weighted``: the rule weighs each reply by its ``weighted_by_key`` metric (Flower's FedAvg and MultiKrum), so
    the adversary passes the round's reply weights as the rule's ``weights``, in the order the defence sees them."""

    spec: str
    f: int
    params: dict[str, Any] = field(default_factory=dict)
    server_lr: float = 1.0
    weighted: bool = False


def defended_rule(strategy: Strategy, n: int) -> DefendedRule:
    """The flwr_byz rule equivalent to ``strategy`` aggregating ``n`` replies.

    FedAvg = the mean weighted by ``num-examples``, FedMedian = CM, FedTrimmedAvg(beta) = TM trimming
    ``floor(beta n)``, Krum = original Krum (n - f - 2 neighbours; one selected reply: its weight cancels),
    MultiKrum = MultiKrum averaging its selection weighted by ``num-examples``, Bulyan with its default
    MultiKrum selection = Bulyan(selection="multikrum") (unweighted, as Flower's).
    """
    if isinstance(strategy, RobustStrategy):
        return DefendedRule(strategy.aggregator.spec, strategy.f, strategy.aggregation_params, strategy.server_lr)
    if isinstance(strategy, FedMedian):
        return DefendedRule("cm", 0)
    if isinstance(strategy, FedTrimmedAvg):
        return DefendedRule("tm", int(strategy.beta * n))
    if isinstance(strategy, Krum):
        return DefendedRule("krum", strategy.num_malicious_nodes)
    if isinstance(strategy, MultiKrum):
        return DefendedRule("multikrum", strategy.num_malicious_nodes, {"select": strategy.num_nodes_to_select},
                            weighted=True)
    if isinstance(strategy, Bulyan) and strategy.selection_rule is select_multikrum:
        return DefendedRule("bulyan", strategy.num_malicious_nodes, {"selection": "multikrum"})
    if type(strategy) is FedAvg:
        return DefendedRule("mean", 0, weighted=True)
    raise ValueError(
        f"no known flwr_byz rule for {type(strategy).__name__}: pass "
        f"defended=DefendedRule(spec, f) to OmniscientAdversary"
    )


F_FREE_RULES = ("mean", "cm", "gm", "fltrust", "signguard", "flame")  # outputs that do not depend on their f


def tolerated_f(rule: DefendedRule, n: int) -> int:
    """The most Byzantine nodes among ``n`` the defence is built for: fewer than half (no rule
    survives ``f >= n/2``), and at most the rule's own ``f`` when its output depends on it (Krum, TM,
    NNM, Bulyan, DnC, ...). The f-free rules (mean, CM, GM: FedAvg, FedMedian; FLTrust, SignGuard, FLAME) get the
    first bound."""
    bound = (n - 1) // 2
    return bound if rule.spec in F_FREE_RULES else min(bound, rule.f)
