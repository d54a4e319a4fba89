"""The adversary protocol: every message between the omniscient-adversary hook and Byzantine-capable clients.

Both sides import this module, so message types, record names and config keys are
written once. Three exchanges:

* Role query (``query.role``, once per node): each node answers a :class:`NodeRole`; in a run without
  Byzantine nodes it answers "no role" (:meth:`NodeRole.none_reply`, a record, not an error: Flower logs
  nothing), and the hook runs without an adversary.
* Attack (``train.attack``, each round, only to Byzantine nodes): an :class:`AttackRequest`
  carries the global model, the honest pseudo-gradients ``(h, d)``, the step sizes and the
  defended rule; the node answers an :class:`AttackReply` (its model ``theta - gamma_t a``
  and the attack's metrics). For attacks whose vector is the same for every Byzantine node
  (``shared``), one node computes it and the others get a request carrying that node's
  model to ``echo``: they send the same vector without repeating the search.

* Score (``evaluate.score``, only to honest nodes, only for JUMP on an app whose nodes cannot score
  candidates themselves: a user's app wrapped with :func:`flwr_byz.flower.byzantine`): a
  :class:`ScoreRequest` carries ``k`` candidate models; the node runs its own evaluate handler
  on each and answers a :class:`ScoreReply` (each metric of that handler, one value per candidate).

None of this reaches the wrapped strategy: the hook turns each attack reply into a reply
to the plain ``train`` instruction with the records an honest reply has.

Torch is imported only to decode an attack request's honest pseudo-gradients (a Byzantine node about to compute
an attack): a role query, an echo request and a score request are decoded with numpy alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict

if TYPE_CHECKING:
    from torch import Tensor

ROLE_ACTION, ATTACK_ACTION, SCORE_ACTION = "role", "attack", "score"
ROLE_TYPE = f"{MessageType.QUERY}.{ROLE_ACTION}"
ATTACK_TYPE = f"{MessageType.TRAIN}.{ATTACK_ACTION}"
SCORE_TYPE = f"{MessageType.EVALUATE}.{SCORE_ACTION}"
LOCAL_ORACLE, HONEST_ORACLE = "local", "honest-nodes"
REFUSED = "flwr-byz refused"  # starts the error reason of an adversary request a node does not answer
OFF = "the adversary protocol is off"  # ... because the run has no Byzantine node
NO_ROLE = "no-role"  # key of a role reply that carries no role (the run has no Byzantine node), with the reason
MAX_SCORE_CANDIDATES = 256  # candidate models one score request may carry

ROLE_RECORD = "role"
MODEL_RECORD = "model"
HONEST_RECORD = "honest"
ECHO_RECORD = "echo"
REFERENCE_RECORD = "reference"
CONFIG_RECORD = "attack-config"
METRICS_RECORD = "attack-metrics"
TRAIN_CONFIG_RECORD = "train-config"
EVALUATE_CONFIG_RECORD = "evaluate-config"
CANDIDATES_RECORD = "candidates"
SCORES_RECORD = "scores"
GRADIENTS = "gradients"


@dataclass(frozen=True)
class NodeRole:
    """A node's answer to the role query: Byzantine or not, its rank (partition id), whether its
    attack sends the same vector on every Byzantine node (``shared``), the attack it runs
    (``attack``, ``attack_params``: ``"key=value, ..."``) and where JUMP's honest loss comes
    from: the node's own copy of the honest data (``oracle="local"``, flwr_byz's ClientApp) or
    the honest nodes' evaluate handlers (``"honest-nodes"``, a wrapped user app: the hook then
    runs the attack itself and the Byzantine nodes send its model). ``seed`` and ``loss_key`` are the run
    config's (:class:`~flwr_byz.adversary_config.Adversary`): the hook takes them from the nodes, so a user's server
    code needs no plumbing."""

    byzantine: bool
    rank: int
    shared: bool = False
    attack: str = "none"
    attack_params: str = ""
    oracle: str = LOCAL_ORACLE
    seed: int = 0
    loss_key: str = ""

    def reply_to(self, msg: Message) -> Message:
        record = ConfigRecord({"byzantine": self.byzantine, "rank": self.rank, "shared": self.shared,
                               "attack": self.attack, "attack-params": self.attack_params, "oracle": self.oracle,
                               "seed": self.seed, "loss-key": self.loss_key})
        return Message(RecordDict({ROLE_RECORD: record}), reply_to=msg)

    @staticmethod
    def none_reply(msg: Message, why: str) -> Message:
        """The answer of a node without a role (the run has no Byzantine node): a role record holding only
        :data:`NO_ROLE` and ``why``. A reply, not an error, so Flower logs nothing for it."""
        return Message(RecordDict({ROLE_RECORD: ConfigRecord({NO_ROLE: why})}), reply_to=msg)

    @classmethod
    def from_reply(cls, reply: Message) -> NodeRole | None:
        """The node's role; ``None`` if it has none because the run has no Byzantine node (an honest run): its
        reply is :meth:`none_reply` (or, from a node of flwr-byz before it, an error refusing the query as off)."""
        node = reply.metadata.src_node_id
        if reply.has_error() and REFUSED in reply.error.reason and OFF in reply.error.reason:
            return None
        if reply.has_error():
            unwrapped = f"No {MessageType.QUERY} function registered" in reply.error.reason
            raise RuntimeError(f"role query failed on node {node}: {reply.error.reason}" + (
                ". Every node must run a Byzantine-capable ClientApp: the paper's "
                "(flwr_byz.flower.paper.client_app:app), or yours wrapped with "
                "`app = flwr_byz.flower.byzantine(app)` at the end of your client_app.py"
                if unwrapped else ""))
        record = reply.content.config_records.get(ROLE_RECORD)
        if record is None:
            raise RuntimeError(
                f"node {node} does not speak the adversary protocol (no {ROLE_RECORD!r} record in its {ROLE_TYPE} "
                "reply): wrap your ClientApp with `app = flwr_byz.flower.byzantine(app)`"
            )
        if NO_ROLE in record:
            return None
        return cls(bool(record["byzantine"]), int(record["rank"]), bool(record["shared"]), str(record["attack"]),
                   str(record["attack-params"]), str(record["oracle"]), int(record["seed"]), str(record["loss-key"]))


def retyped(msg: Message, content: RecordDict, message_type: str, group_id: str | None = None) -> Message:
    """``content`` in a message with ``msg``'s ids, sender, receiver and times, of type ``message_type``
    (and group ``group_id``, else ``msg``'s)."""
    meta = msg.metadata
    return Message(content=content, metadata=Metadata(
        run_id=meta.run_id, message_id=meta.message_id, src_node_id=meta.src_node_id, dst_node_id=meta.dst_node_id,
        reply_to_message_id=meta.reply_to_message_id, group_id=meta.group_id if group_id is None else group_id,
        created_at=meta.created_at, ttl=meta.ttl, message_type=message_type, src_task_id=meta.src_task_id,
        dst_task_id=meta.dst_task_id,
    ))


def to_numpy(values: np.ndarray | Tensor) -> np.ndarray:
    """``values`` as a numpy array: a numpy array as it is, a torch tensor (on any device) copied to the CPU."""
    return values if isinstance(values, np.ndarray) else values.detach().cpu().numpy()


def role_query(node_id: int) -> Message:
    return Message(RecordDict(), dst_node_id=node_id, message_type=ROLE_TYPE)


@dataclass
class AttackRequest:
    """One round's instruction to a Byzantine node.

    ``gamma`` is the client step the wrapped strategy sent (pseudo-gradients are
    ``(theta - theta_i) / gamma``), ``server_lr`` its server step; the defence is
    ``get_aggregator(aggregation, aggregation_f, **aggregation_params).for_round(server_round)``
    over ``num_nodes`` rows, ``num_attackers`` of them Byzantine. ``order[i]`` is the row of the
    stack ``[honest..., Byzantine...]`` that the defence sees ``i``-th. ``echo``, if set, is
    the model another Byzantine node computed this round: send it as it is. ``train_config``
    is the config the honest nodes got with the model, and ``names`` the record names of
    the model and of that config in their instruction (a node that trains on flipped labels
    rebuilds the instruction from them). ``reference``: the server's own update of the round for a rule
    that scores replies against it (FLTrust's ``g_0``); the defence is then the rule ``with_reference`` it.
    """

    server_round: int
    gamma: float
    server_lr: float
    aggregation: str
    aggregation_f: int
    aggregation_params: dict[str, Any]
    num_nodes: int
    num_attackers: int
    order: list[int]
    model: ArrayRecord
    honest: Tensor | None = None
    echo: ArrayRecord | None = None
    train_config: ConfigRecord = field(default_factory=ConfigRecord)
    names: tuple[str, str] = ("arrays", "config")
    reference: Tensor | None = None

    def to_message(self, node_id: int) -> Message:
        config = ConfigRecord({
            "server-round": self.server_round, "gamma": self.gamma, "server-lr": self.server_lr,
            "aggregation": self.aggregation, "aggregation-f": self.aggregation_f,
            "aggregation-params": json.dumps(self.aggregation_params), "num-nodes": self.num_nodes,
            "num-attackers": self.num_attackers, "order": list(self.order), "names": list(self.names),
        })
        content = RecordDict({MODEL_RECORD: self.model, CONFIG_RECORD: config, TRAIN_CONFIG_RECORD: self.train_config})
        if self.honest is not None:
            content[HONEST_RECORD] = ArrayRecord({GRADIENTS: Array(to_numpy(self.honest))})
        if self.echo is not None:
            content[ECHO_RECORD] = self.echo
        if self.reference is not None:
            content[REFERENCE_RECORD] = ArrayRecord({GRADIENTS: Array(to_numpy(self.reference))})
        return Message(content, dst_node_id=node_id, message_type=ATTACK_TYPE)

    @classmethod
    def from_message(cls, msg: Message) -> AttackRequest:
        content = msg.content
        config = content.config_records[CONFIG_RECORD]
        honest, reference = (_tensor(content.array_records.get(name)) for name in (HONEST_RECORD, REFERENCE_RECORD))
        return cls(
            server_round=int(config["server-round"]), gamma=float(config["gamma"]),
            server_lr=float(config["server-lr"]), aggregation=str(config["aggregation"]),
            aggregation_f=int(config["aggregation-f"]),
            aggregation_params=json.loads(str(config["aggregation-params"])),
            num_nodes=int(config["num-nodes"]), num_attackers=int(config["num-attackers"]),
            order=[int(i) for i in config["order"]],  # type: ignore[union-attr]
            model=content.array_records[MODEL_RECORD],
            honest=honest,
            echo=content.array_records.get(ECHO_RECORD),
            train_config=content.config_records[TRAIN_CONFIG_RECORD],
            names=tuple(str(name) for name in config["names"]),  # type: ignore[arg-type, union-attr]
            reference=reference,
        )

    def instruction(self) -> RecordDict:
        """The train instruction the honest nodes got this round (model and config under their record names)."""
        return RecordDict({self.names[0]: self.model, self.names[1]: self.train_config})


def _tensor(record: ArrayRecord | None) -> Tensor | None:
    """The array of a request's ``record`` as a tensor (``None`` if absent). Only a node about to compute an attack
    receives one: the one use of torch here."""
    if record is None:
        return None
    import torch

    return torch.from_numpy(np.array(record[GRADIENTS].numpy(), copy=True))


@dataclass
class AttackReply:
    """A Byzantine node's answer: the model it sends and the attack's metrics (``jump-lambda``, ...)."""

    model: ArrayRecord
    metrics: dict[str, float] = field(default_factory=dict)

    def reply_to(self, msg: Message) -> Message:
        metrics = MetricRecord({k: float(v) for k, v in self.metrics.items()})
        return Message(RecordDict({MODEL_RECORD: self.model, METRICS_RECORD: metrics}), reply_to=msg)

    @classmethod
    def from_reply(cls, reply: Message) -> AttackReply:
        if reply.has_error():
            raise RuntimeError(
                f"Byzantine node {reply.metadata.src_node_id} failed to attack: {reply.error.reason}"
            )
        content = reply.content
        return cls(content.array_records[MODEL_RECORD], dict(content.metric_records.get(METRICS_RECORD, {})))


@dataclass
class ScoreRequest:
    """``k`` candidate models for an honest node to evaluate with its own evaluate handler.

    Candidate ``j`` is ``model`` with its floating entries (``FlatLayout`` order) replaced by
    ``candidates[j]`` (:func:`flwr_byz.flower.records.with_flat`); it reaches the handler as an ``evaluate``
    instruction holding the model under ``names[0]`` and ``config`` under ``names[1]``. ``candidates`` is a
    ``(k, d)`` numpy array (decoded) or tensor (the hook's, sent as numpy).
    """

    model: ArrayRecord
    candidates: np.ndarray | Tensor
    config: ConfigRecord
    names: tuple[str, str] = ("arrays", "config")

    def to_message(self, node_id: int) -> Message:
        content = RecordDict({
            MODEL_RECORD: self.model, CANDIDATES_RECORD: ArrayRecord({GRADIENTS: Array(to_numpy(self.candidates))}),
            CONFIG_RECORD: ConfigRecord({"names": list(self.names)}), EVALUATE_CONFIG_RECORD: self.config,
        })
        return Message(content, dst_node_id=node_id, message_type=SCORE_TYPE)

    @classmethod
    def from_message(cls, msg: Message) -> ScoreRequest:
        content = msg.content
        candidates = content.array_records[CANDIDATES_RECORD][GRADIENTS].numpy()
        names = tuple(str(name) for name in content.config_records[CONFIG_RECORD]["names"])  # type: ignore[union-attr]
        return cls(content.array_records[MODEL_RECORD], candidates, content.config_records[EVALUATE_CONFIG_RECORD],
                   names)  # type: ignore[arg-type]


@dataclass
class ScoreReply:
    """An honest node's scores: every scalar metric of its evaluate handler's reply, one value per candidate."""

    metrics: dict[str, list[float]]

    def reply_to(self, msg: Message) -> Message:
        return Message(RecordDict({SCORES_RECORD: MetricRecord(dict(self.metrics))}), reply_to=msg)

    @classmethod
    def from_reply(cls, reply: Message) -> ScoreReply:
        if reply.has_error():
            raise RuntimeError(
                f"honest node {reply.metadata.src_node_id} failed to score JUMP's candidates with its evaluate "
                f"handler: {reply.error.reason}"
            )
        record = reply.content.metric_records[SCORES_RECORD]
        return cls({key: [float(v) for v in values] for key, values in record.items()})  # type: ignore[union-attr]
