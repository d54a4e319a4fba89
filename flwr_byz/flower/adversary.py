"""The omniscient adversary: a simulation hook that wraps any Message-API strategy."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from flwr_byz.attacks import ATTACKS
from flwr_byz.dsgd import attack_rows, reply_order
from flwr_byz.flower.attacker import byzantine_model
from flwr_byz.flower.defended import DefendedRule, defended_rule, tolerated_f
from flwr_byz.settings import Adversary
from flwr_byz.flower.protocol import HONEST_ORACLE, AttackReply, AttackRequest, NodeRole, retyped, role_query
from flwr_byz.flower.records import to_tensors
from flwr_byz.flower.oracle import EvaluateOracle
from flwr_byz.flower.robust import pseudo_gradients
from flwr_byz.flower.screening import screen_replies

EVENT = "flwr-byz-event "  # prefix of the hook's log lines that `flwr-byz audit` reads back


def emit(event: str, **fields: Any) -> None:
    """Log ``{"event": event, **fields}`` as one JSON line after :data:`EVENT`."""
    log(INFO, "%s%s", EVENT, json.dumps({"event": event, **fields}, default=float))


class OmniscientAdversary(Strategy):
    """Run ``strategy`` with Byzantine nodes driven by an omniscient adversary.

    Each round: the wrapped strategy configures training; only its honest nodes train;
    their pseudo-gradients ``(theta - theta_i) / gamma_t`` (``gamma_t`` under the strategy's
    own ``lr_key``, 1 if absent; replies screened with its ``weighted_by_key``), the global
    model, the step sizes, the defended rule and the order in which the defence will see
    the replies go to the sampled Byzantine nodes (``flwr_byz.flower.protocol``). If their attack
    is ``shared`` (the same vector on every node), one node computes it and the others
    echo it. Each Byzantine reply is rebuilt as a reply to the plain ``train`` instruction
    with an honest reply's record names, metric keys and types (metrics: the honest mean),
    and all replies, in a seeded shuffle of the nodes' rank order, go to the wrapped
    strategy, which cannot tell who is who. A Byzantine node that fails stops the run.
    Training metrics are the honest replies' plus the attack's (``jump-lambda``, ...).
    With ``attack=False``, or attack ``none`` in the nodes' roles, the Byzantine nodes stay
    silent (the defence alone: a baseline). More attacking nodes than the defence tolerates
    (:func:`tolerated_f`) stop the run before round 1.

    Nodes of a user's app wrapped with ``flwr_byz.flower.byzantine`` have the user's code but
    not the honest data: for JUMP the hook runs the attack itself, scoring candidate models with
    the honest nodes' own evaluate handlers (:class:`~flwr_byz.flower.oracle.EvaluateOracle`,
    metric ``loss_key``; ``None``: the one metric named ``*loss*``), and the Byzantine nodes send
    its model. Every round's training metrics and every evaluation (centralised, through
    :meth:`start`'s ``evaluate_fn``, and federated) are also logged as JSON lines (:data:`EVENT`).
    Federated evaluation goes to every node the strategy samples, Byzantine ones included (they evaluate
    honestly), so runs with and without Byzantine nodes are evaluated on the same data.

    ``seed`` (the reply shuffle, the hook's attack randomness) and ``loss_key`` default to the run
    config's ``seed`` and ``loss-key`` (:class:`~flwr_byz.adversary_config.Adversary`), which the nodes report with
    their roles; in a run without Byzantine nodes, whose nodes answer the role query with "no role", the seed is
    the ``--run-config`` override's, else 0. The seed in use is logged with the defence.
    """

    def __init__(self, strategy: Strategy, defended: DefendedRule | None = None, attack: bool = True,
                 seed: int | None = None, loss_key: str | None = None) -> None:
        self.strategy, self.defended, self.attack = strategy, defended, attack
        self.given_seed, self.given_loss_key = seed, loss_key
        self.evaluate_config, self.timeout = ConfigRecord(), 3600.0  # as start() got them (JUMP's score requests)
        self.seed = 0 if seed is None else seed
        self.rng = random.Random(self.seed)
        self.roles: dict[int, NodeRole | None] | None = None  # a node's None: no role, the run has no Byzantine node
        self._grid: Grid | None = None
        self._instruction: RecordDict | None = None
        self._byzantine_nodes: list[int] = []
        self._sampling = False  # this round's strategy sampled some of the nodes
        self.train_metrics: dict[int, MetricRecord] = {}

    @property
    def lr_key(self) -> str:
        return str(getattr(self.strategy, "lr_key", "lr"))

    @property
    def weight_key(self) -> str:
        return str(getattr(self.strategy, "weighted_by_key", "num-examples"))

    @property
    def byzantine(self) -> set[int]:
        """Node ids of the Byzantine nodes (after role discovery)."""
        return {node for node, role in (self.roles or {}).items() if role is not None and role.byzantine}

    @property
    def attacking(self) -> bool:
        """Whether the Byzantine nodes attack (``attack`` on and an attack in their roles)."""
        return self.attack and any(role.attack != "none" for role in (self.roles or {}).values()
                                   if role is not None and role.byzantine)

    # --------------------------------------------------------------- roles
    def discover_roles(self, grid: Grid) -> set[int]:
        """Ask every node not asked yet for its :class:`NodeRole`; the Byzantine node ids. Whenever nodes
        join, check that the defence tolerates the attacking nodes and log it (event ``defence``)."""
        self.roles = self.roles or {}
        nodes = [node for node in grid.get_node_ids() if node not in self.roles]
        if nodes:
            replies = list(grid.send_and_receive([role_query(node) for node in nodes]))
            if len(replies) != len(nodes):
                raise RuntimeError(f"role discovery: {len(nodes) - len(replies)} of {len(nodes)} nodes did not answer")
            first = not self.roles
            self.roles |= {r.metadata.src_node_id: NodeRole.from_reply(r) for r in replies}
            for role in self.roles.values():  # a numpy app's nodes check names only: the values fail here
                if role is not None and role.byzantine and role.attack != "none":
                    Adversary(role.attack, attack_params=role.attack_params).make_attack()
            if first:
                self._seed_from(grid)
            log(INFO, "Adversary: %d Byzantine of %d nodes", len(self.byzantine), len(self.roles))
            self._check_defence(len(self.roles))
        return self.byzantine

    def _seed_from(self, grid: Grid) -> None:
        """Unless given: the seed of the nodes' run config (or the run's ``--run-config`` override)."""
        if self.given_seed is not None:
            return
        reported = {role.seed for role in (self.roles or {}).values() if role is not None}
        if len(reported) > 1:
            raise RuntimeError(f"the nodes report different seeds {sorted(reported)}: one run config per run")
        self.seed = reported.pop() if reported else int(run_overrides(grid).get("seed", 0))
        self.rng = random.Random(self.seed)

    @property
    def loss_key(self) -> str | None:
        """JUMP's loss metric on a wrapped app: given, else the run config's ``loss-key`` (None: auto)."""
        if self.given_loss_key is not None:
            return self.given_loss_key
        return next((role.loss_key for role in (self.roles or {}).values() if role is not None and role.loss_key),
                    None)

    def _check_defence(self, n: int) -> None:
        """Raise if more nodes attack than the defence tolerates; log the defence (event ``defence``).

        A strategy that samples ``fraction_train < 1`` of the nodes sees ``m = max(fraction_train n,
        min_train_nodes)`` replies a round, of which ``ceil(f m / n)`` Byzantine in expectation: that is what
        is checked; rounds whose sample holds more are logged (:meth:`_check_sample`)."""
        fraction = float(getattr(self.strategy, "fraction_train", 1.0))
        m = min(n, max(int(n * fraction), int(getattr(self.strategy, "min_train_nodes", 0)))) if fraction < 1 else n
        try:
            rule = self.defended or defended_rule(self.strategy, m)
        except ValueError:
            if self.attacking:
                raise
            return
        f, tolerated = math.ceil(len(self.byzantine) * m / n - 1e-9), tolerated_f(rule, m)
        emit("defence", strategy=type(self.strategy).__name__, rule=rule.spec, rule_f=rule.f, nodes=n, byzantine=f,
             tolerated_f=tolerated, seed=self.seed, **({"sampled": m} if m < n else {}))
        if self.attacking and f > tolerated:
            half = " (no rule tolerates half the nodes)" if f > (m - 1) // 2 else (
                f", or configure {type(self.strategy).__name__} for f={f}")
            raise ValueError(f"{f} Byzantine nodes of {m}{' sampled' if m < n else ''}, but "
                             f"{type(self.strategy).__name__} ({rule.spec}, "
                             f"f={rule.f}) tolerates at most {tolerated}: lower num-byzantine to {tolerated}{half}")

    def rank(self, node: int) -> tuple[int, int]:
        """A node's sort key: its role's rank (the partition id on the paper app's nodes), then its id; nodes
        without a rank last. ``RobustStrategy(node_key=adversary.rank)`` samples reproducibly across runs."""
        role = (self.roles or {}).get(node)
        return (role.rank if role else 1 << 62, node)

    def _rank_order(self, reply: Message) -> tuple[int, int, bytes]:
        """Sort key of a reply: its node's rank; in an honest run (no ranks) a digest of its arrays, so the
        order does not depend on node ids, which Flower draws anew for each run."""
        rank, node = self.rank(reply.metadata.src_node_id)
        if rank != 1 << 62 or reply.has_error():
            return rank, node, b""
        digest = hashlib.blake2b(digest_size=16)
        for record in reply.content.array_records.values():
            for array in record.values():
                digest.update(array.data)
        return rank, 0, digest.digest()

    # --------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))  # waits for its nodes
        byzantine = self.discover_roles(grid)
        self._grid = grid
        sampled = [m for m in messages if m.metadata.dst_node_id in byzantine]
        self._byzantine_nodes = sorted((m.metadata.dst_node_id for m in sampled), key=self.rank)
        self._instruction = sampled[0].content if sampled else None
        self._sampling = len(messages) < len(self.roles or {})
        if self._sampling:
            self._check_sample(server_round, len(messages))
        return [m for m in messages if m.metadata.dst_node_id not in byzantine]

    def _check_sample(self, server_round: int, m: int) -> None:
        """A sampled round: log (event ``sample``, and a warning) when its Byzantine nodes outnumber what the
        defence tolerates among its ``m`` nodes. They attack all the same: the defence's f is an expectation."""
        f = len(self._byzantine_nodes)
        try:
            tolerated = tolerated_f(self.defended or defended_rule(self.strategy, m), m)
        except ValueError:
            return
        emit("sample", round=server_round, nodes=m, byzantine=f, tolerated_f=tolerated)
        if self.attacking and f > tolerated:
            log(WARNING, "Round %d: %d Byzantine nodes among the %d sampled, more than the defence's %d",
                server_round, f, m, tolerated)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        honest = sorted(replies, key=self._rank_order)
        shuffle = reply_order(self.rng, len(honest) + len(self._byzantine_nodes))
        valid = screen_replies(honest, self._global_arrays(), self.weight_key).valid if self._instruction else []
        attacks: list[Message] = []
        attack_metrics: dict[str, float] = {}
        if self.attacking and self._byzantine_nodes and valid:
            kept = {id(r) for r in valid}
            order = attack_rows(shuffle, [id(r) in kept for r in honest])
            attacks, attack_metrics = self._attack(server_round, valid, order)
        elif self._byzantine_nodes:
            log(WARNING, "Round %d: Byzantine nodes silent (%s)", server_round,
                "attack off" if not self.attacking else "no valid honest reply to attack")
        everything = honest + attacks
        arrays, metrics = self.strategy.aggregate_train(
            server_round, [everything[i] for i in shuffle if i < len(everything)]
        )
        if self._sampling:
            attack_metrics["byzantine-sampled"] = float(len(self._byzantine_nodes))
        self.train_metrics[server_round] = self._metrics(valid or honest, attack_metrics, metrics)
        emit("train", round=server_round, time=time.time(), metrics=dict(self.train_metrics[server_round]))
        return arrays, self.train_metrics[server_round]

    def _names(self) -> tuple[str, str]:
        """Record names of the model and the config in this round's train instruction."""
        assert self._instruction is not None
        arrays, config = (getattr(self.strategy, attr, None) for attr in ("arrayrecord_key", "configrecord_key"))
        if arrays not in self._instruction:
            arrays = next(iter(self._instruction.array_records))
        if config not in self._instruction:
            config = next(iter(self._instruction.config_records), "config")
        return str(arrays), str(config)

    def _global_arrays(self) -> ArrayRecord:
        assert self._instruction is not None
        return self._instruction.array_records[self._names()[0]]

    def _train_config(self) -> ConfigRecord:
        assert self._instruction is not None
        return self._instruction.config_records.get(self._names()[1], ConfigRecord())

    def _attack(self, server_round: int, honest: list[Message], order: list[int]) -> tuple[list[Message], dict]:
        """The Byzantine nodes' replies, disguised as honest ones, and the attack's metrics.

        ``honest`` are the screened honest replies, ``order`` the rows of ``[honest, Byzantine]``
        in the order the defence will see them.
        """
        assert self._grid is not None
        global_arrays, config = self._global_arrays(), self._train_config()
        gamma = float(config.get(self.lr_key, 1.0))
        records = [to_tensors(next(iter(r.content.array_records.values()))) for r in honest]
        _, gradients, _ = pseudo_gradients(to_tensors(global_arrays), records, gamma)
        nodes = self._byzantine_nodes
        n = len(honest) + len(nodes)
        rule = self.defended or defended_rule(self.strategy, n)
        camouflage = _mean_metrics(honest)
        params = dict(rule.params)
        if rule.weighted:  # the replies' weights, in the order the defence sees the rows
            stack = [float(next(iter(r.content.metric_records.values()))[self.weight_key]) for r in honest]
            stack += [float(camouflage[self.weight_key])] * len(nodes)  # type: ignore[arg-type]
            params["weights"] = [stack[row] for row in order]
        request = AttackRequest(
            server_round=server_round, gamma=gamma, server_lr=rule.server_lr, aggregation=rule.spec,
            aggregation_f=rule.f, aggregation_params=params, num_nodes=n, num_attackers=len(nodes),
            order=order, model=global_arrays, honest=gradients, train_config=config, names=self._names(),
            reference=getattr(self.strategy, "reference", None),  # FLTrust's g0: the omniscient adversary knows it
        )
        assert self.roles is not None
        if all(self.roles[node].oracle == HONEST_ORACLE and ATTACKS[self.roles[node].attack].needs_loss
               for node in nodes):
            here, metrics = self._attack_here(request, [r.metadata.src_node_id for r in honest])
            answered = self._exchange([dataclasses.replace(request, honest=None, reference=None,
                                                           echo=here.model).to_message(node)
                                       for node in nodes])
        else:
            shared = all(self.roles[node].shared for node in nodes)
            answered = self._exchange([request.to_message(node) for node in (nodes[:1] if shared else nodes)])
            if shared and len(nodes) > 1:  # one node computed the vector: the others send the same model
                echo = dataclasses.replace(request, honest=None, reference=None, echo=answered[0][1].model)
                answered += self._exchange([echo.to_message(node) for node in nodes[1:]])
            metrics = answered[0][1].metrics
        return [disguise(reply, answer, honest[0], camouflage) for reply, answer in answered], metrics

    def _attack_here(self, request: AttackRequest, honest_nodes: list[int]) -> tuple[AttackReply, dict[str, float]]:
        """JUMP computed by the hook, its honest loss scored by the honest nodes' evaluate handlers; the
        model and metrics with ``oracle-calls`` and ``oracle-seconds`` (the scoring's share of ``attack-seconds``)."""
        assert self._grid is not None and self.roles is not None
        role = self.roles[self._byzantine_nodes[0]]
        attack = Adversary(role.attack, attack_params=role.attack_params).make_attack()
        config = ConfigRecord({**self.evaluate_config, "server-round": request.server_round})
        oracle = EvaluateOracle(self._grid, honest_nodes, request.model, request.names, config, self.loss_key,
                                self.weight_key, self.timeout)
        reply = byzantine_model(request, attack, self.seed, role.rank, honest_loss=oracle)
        return reply, {**reply.metrics, "oracle-calls": float(oracle.calls), "oracle-seconds": oracle.seconds}

    def _exchange(self, messages: list[Message]) -> list[tuple[Message, AttackReply]]:
        """Send attack requests; each reply with its decoded answer, in the order sent. A failed or
        missing reply raises: an attack that did not run must never look like a run under attack."""
        assert self._grid is not None
        by_node = {r.metadata.src_node_id: r for r in self._grid.send_and_receive(messages)}
        missing = [m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in by_node]
        if missing:
            raise RuntimeError(f"Byzantine node(s) {missing} did not answer the attack request")
        return [(by_node[node], AttackReply.from_reply(by_node[node]))
                for node in (m.metadata.dst_node_id for m in messages)]

    def _metrics(self, honest: list[Message], attack: dict[str, float], inner: MetricRecord | None) -> MetricRecord:
        """Honest-only training metrics, the attack's metrics and the inner strategy's ``robust-*`` extras."""
        valid = [r.content for r in honest if not r.has_error() and len(r.content.metric_records) == 1]
        try:
            metrics = aggregate_metricrecords(valid, self.weight_key) if valid else MetricRecord()
        except (KeyError, TypeError):  # replies without the weight key: no honest metrics
            metrics = MetricRecord()
        for key, value in (inner or {}).items():
            if key.startswith("robust-"):
                metrics[key] = value
        metrics.update(attack)
        return metrics

    # --------------------------------------------------------------- delegation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            emit("federated-evaluate", round=server_round, metrics=dict(metrics))
        return metrics

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """``Strategy.start``, logging each result of ``evaluate_fn`` (event ``evaluate``); JUMP's score requests
        carry ``evaluate_config`` and wait ``timeout`` seconds, as evaluate instructions do."""
        self.evaluate_config, self.timeout = ConfigRecord(dict(evaluate_config or {})), timeout

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            assert evaluate_fn is not None
            metrics = evaluate_fn(server_round, arrays)
            if metrics is not None:
                emit("evaluate", round=server_round, metrics=dict(metrics))
            return metrics

        return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                             evaluate if evaluate_fn else None)

    def summary(self) -> None:
        log(INFO, "\t├──> Omniscient adversary around %s (attack %s)", type(self.strategy).__name__,
            "on" if self.attack else "off")
        self.strategy.summary()


def run_overrides(grid: Grid) -> dict[str, Any]:
    """The run's ``--run-config`` overrides as the Grid knows them ({} where it does not)."""
    try:
        return dict(grid.run.override_config)
    except (AttributeError, NotImplementedError, TypeError):  # a Grid without run details (no run set)
        return {}


def disguise(reply: Message, answer: AttackReply, template: Message, metrics: MetricRecord) -> Message:
    """``answer`` as a reply to the plain train instruction: ``template``'s (an honest reply's)
    message type, group and records (names, array keys in order, metrics ``metrics``),
    ``reply``'s sender and ids."""
    content = RecordDict()
    for name, record in template.content.items():
        if isinstance(record, ArrayRecord):
            content[name] = ArrayRecord({key: answer.model[key] for key in record.keys()})
        elif isinstance(record, MetricRecord):
            content[name] = MetricRecord(dict(metrics))
        else:
            content[name] = ConfigRecord(dict(record))
    return retyped(reply, content, template.metadata.message_type, template.metadata.group_id)


def _mean_metrics(replies: list[Message]) -> MetricRecord:
    """Mean of the honest replies' scalar metrics, each of its honest type: a Byzantine reply's camouflage."""
    records = [next(iter(r.content.metric_records.values())) for r in replies]
    return MetricRecord({
        k: type(v)(np.mean([r[k] for r in records])) if not isinstance(v, list) else v
        for k, v in records[0].items()
    })
