"""The omniscient adversary: a simulation hook that wraps any Message-API strategy."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy,
)
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from ..records import to_tensors
from .robust import RobustStrategy, pseudo_gradients
from .screening import screen_replies

ATTACK_TYPE = f"{MessageType.TRAIN}.attack"
ROLE_TYPE = f"{MessageType.QUERY}.role"


@dataclass(frozen=True)
class DefendedRule:
    """What the adversary knows of the defence: ``get_aggregator(spec, f, **params)`` and ``server_lr``."""

    spec: str
    f: int
    params: dict[str, Any] = field(default_factory=dict)
    server_lr: float = 1.0


def defended_rule(strategy: Strategy, n: int) -> DefendedRule:
    """The flwr_byz rule equivalent to ``strategy`` aggregating ``n`` replies.

    FedAvg = mean, FedMedian = CM, FedTrimmedAvg(beta) = TM trimming ``floor(beta n)``,
    Krum / MultiKrum = original Krum (n - f - 2 neighbours) / MultiKrum, Bulyan with its default
    MultiKrum selection = Bulyan(selection="multikrum").
    """
    if isinstance(strategy, RobustStrategy):
        return DefendedRule(strategy.aggregator.spec, strategy.num_byzantine, strategy.aggregation_params,
                            strategy.server_lr)
    if isinstance(strategy, FedMedian):
        return DefendedRule("cm", 0)
    if isinstance(strategy, FedTrimmedAvg):
        return DefendedRule("tm", int(strategy.beta * n))
    if isinstance(strategy, Krum):
        return DefendedRule("krum", strategy.num_malicious_nodes)
    if isinstance(strategy, MultiKrum):
        return DefendedRule("multikrum", strategy.num_malicious_nodes, {"select": strategy.num_nodes_to_select})
    if isinstance(strategy, Bulyan) and strategy.selection_rule is select_multikrum:
        return DefendedRule("bulyan", strategy.num_malicious_nodes, {"selection": "multikrum"})
    if type(strategy) is FedAvg:
        return DefendedRule("mean", 0)
    raise ValueError(
        f"no known flwr_byz rule for {type(strategy).__name__}: pass "
        f"defended=DefendedRule(spec, f) to OmniscientAdversary"
    )


class OmniscientAdversary(Strategy):
    """Run ``strategy`` with Byzantine nodes driven by an omniscient adversary.

    Each round: the wrapped strategy configures training; only its honest nodes
    train; their pseudo-gradients ``(theta - theta_i) / gamma_t`` (stacked), the
    global model, the step sizes and the defended rule go to the sampled Byzantine
    nodes in a ``train.attack`` message; all replies, shuffled, go to the wrapped
    strategy, which never learns who is who. Roles come from one ``query.role``
    round, which also ranks the nodes by partition id: replies reach the wrapped
    strategy in a seeded shuffle of that order, so seeded runs are reproducible.
    Training metrics are aggregated over honest replies only, plus the
    attack's metrics (``jump-lambda``, ...). With ``attack=False`` the Byzantine
    nodes stay silent: the defence runs on the honest replies alone (a baseline).
    """

    def __init__(self, strategy: Strategy, defended: DefendedRule | None = None, attack: bool = True,
                 seed: int = 0) -> None:
        self.strategy, self.defended, self.attack = strategy, defended, attack
        self.rng = random.Random(seed)
        self.byzantine: set[int] | None = None
        self.rank: dict[int, int] = {}
        self._grid: Grid | None = None
        self._byzantine_messages: list[Message] = []
        self.train_metrics: dict[int, MetricRecord] = {}

    # --------------------------------------------------------------- roles
    def discover_roles(self, grid: Grid) -> set[int]:
        """Ask every node once whether it is Byzantine."""
        if self.byzantine is None:
            nodes = list(grid.get_node_ids())
            queries = [Message(RecordDict(), dst_node_id=node, message_type=ROLE_TYPE) for node in nodes]
            replies = list(grid.send_and_receive(queries))
            failed = [r.metadata.src_node_id for r in replies if r.has_error()]
            if failed or len(replies) != len(nodes):
                raise RuntimeError(f"role discovery failed for nodes {failed or 'that did not answer'}")
            roles = {r.metadata.src_node_id: r.content["role"] for r in replies}
            self.byzantine = {node for node, role in roles.items() if role["byzantine"]}
            self.rank = {node: int(role.get("partition-id", node)) for node, role in roles.items()}
            log(INFO, "Adversary: %d Byzantine of %d nodes", len(self.byzantine), len(nodes))
        return self.byzantine

    # --------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        byzantine = self.discover_roles(grid)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._grid = grid
        self._byzantine_messages = [m for m in messages if m.metadata.dst_node_id in byzantine]
        return [m for m in messages if m.metadata.dst_node_id not in byzantine]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        honest = self._in_rank_order(replies)
        attacks: list[Message] = []
        usable: list[Message] = []
        if self._byzantine_messages:
            instruction = self._byzantine_messages[0].content
            global_arrays = next(iter(instruction.array_records.values()))
            usable = screen_replies(honest, global_arrays, "num-examples").valid
            if self.attack and usable:
                attacks = self._attack(server_round, usable, instruction)
        everything = honest + self._in_rank_order(attacks)
        self.rng.shuffle(everything)
        arrays, metrics = self.strategy.aggregate_train(server_round, everything)
        self.train_metrics[server_round] = self._metrics(usable or honest, attacks, metrics)
        return arrays, self.train_metrics[server_round]

    def _in_rank_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies sorted by the nodes' partition ids, not by arrival: a seeded run is
        reproducible bit for bit although floating-point sums depend on order."""
        return sorted(replies, key=lambda r: (self.rank.get(r.metadata.src_node_id, 1 << 62), r.metadata.src_node_id))

    def _attack(self, server_round: int, honest: list[Message], instruction: RecordDict) -> list[Message]:
        """Send ``train.attack`` to the sampled Byzantine nodes; their successful replies.

        ``honest`` are the screened honest replies, ``instruction`` the content the wrapped
        strategy meant for the Byzantine nodes (global model and config).
        """
        assert self._grid is not None
        global_arrays = next(iter(instruction.array_records.values()))
        config = next(iter(instruction.config_records.values()), ConfigRecord())
        gamma = float(config.get("lr", 1.0))
        records = [to_tensors(next(iter(r.content.array_records.values()))) for r in honest]
        _, gradients, _ = pseudo_gradients(to_tensors(global_arrays), records, gamma)
        n = len(honest) + len(self._byzantine_messages)
        rule = self.defended or defended_rule(self.strategy, n)
        attack_config = ConfigRecord({
            **dict(config.items()), "server-round": server_round, "lr": gamma, "server-lr": rule.server_lr,
            "aggregation": rule.spec, "num-byzantine": rule.f, "aggregation-params": json.dumps(rule.params),
            "n": n, "byzantine-sent": len(self._byzantine_messages),
        })
        content = RecordDict({
            "arrays": global_arrays,
            "config": attack_config,
            "honest": ArrayRecord({"gradients": Array(gradients.numpy())}),
            "metrics": _mean_metrics(honest),
        })
        messages = [Message(content, dst_node_id=m.metadata.dst_node_id, message_type=ATTACK_TYPE)
                    for m in self._byzantine_messages]
        replies = list(self._grid.send_and_receive(messages))
        for reply in replies:
            if reply.has_error():
                log(WARNING, "Adversary: Byzantine node %d failed: %s", reply.metadata.src_node_id, reply.error.reason)
        return [r for r in replies if not r.has_error()]

    def _metrics(self, honest: list[Message], attacks: list[Message], inner: MetricRecord | None) -> MetricRecord:
        """Honest-only training metrics, the attack's metrics and the inner strategy's own extras."""
        valid = [r.content for r in honest if not r.has_error() and len(r.content.metric_records) == 1]
        try:
            metrics = aggregate_metricrecords(valid, "num-examples") if valid else MetricRecord()
        except (KeyError, TypeError):  # replies without the weight key: no honest metrics
            metrics = MetricRecord()
        for key, value in (inner or {}).items():
            if key.startswith("robust-"):
                metrics[key] = value
        if attacks and "attack" in attacks[0].content.config_records:
            metrics.update({k: float(v) for k, v in attacks[0].content["attack"].items()})
        return metrics

    # --------------------------------------------------------------- delegation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        byzantine = self.discover_roles(grid)
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return [m for m in messages if m.metadata.dst_node_id not in byzantine]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log(INFO, "\t├──> Omniscient adversary around %s (attack %s)", type(self.strategy).__name__,
            "on" if self.attack else "off")
        self.strategy.summary()


def _mean_metrics(replies: list[Message]) -> MetricRecord:
    """Mean of the honest replies' scalar metrics: a Byzantine reply's camouflage."""
    records = [next(iter(r.content.metric_records.values())) for r in replies]
    keys = set.intersection(*(set(r.keys()) for r in records))
    return MetricRecord({
        k: type(records[0][k])(np.mean([r[k] for r in records])) for k in sorted(keys)
        if not isinstance(records[0][k], list)
    })
