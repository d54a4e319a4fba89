"""The adversary protocol: every message between the omniscient-adversary hook and Byzantine-capable clients.

Both sides import this module, so message types, record names and config keys are
written once. Two exchanges:

* Role query (``query.role``, once per run): each node answers a :class:`NodeRole`.
* Attack (``train.attack``, each round, only to Byzantine nodes): an :class:`AttackRequest`
  carries the global model, the honest pseudo-gradients ``(h, d)``, the step sizes and the
  defended rule; the node answers an :class:`AttackReply` (its model ``theta - gamma_t a``
  and the attack's metrics). For attacks whose vector is the same for every Byzantine node
  (``shared``), one node computes it and the others get a request carrying that node's
  model to ``echo``: they send the same vector without repeating the search.

None of this reaches the wrapped strategy: the hook turns each attack reply into a reply
to the plain ``train`` instruction with the records an honest reply has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from torch import Tensor

ROLE_ACTION, ATTACK_ACTION = "role", "attack"
ROLE_TYPE = f"{MessageType.QUERY}.{ROLE_ACTION}"
ATTACK_TYPE = f"{MessageType.TRAIN}.{ATTACK_ACTION}"

ROLE_RECORD = "role"
MODEL_RECORD = "model"
HONEST_RECORD = "honest"
ECHO_RECORD = "echo"
CONFIG_RECORD = "attack-config"
METRICS_RECORD = "attack-metrics"
GRADIENTS = "gradients"


@dataclass(frozen=True)
class NodeRole:
    """A node's answer to the role query: Byzantine or not, its rank (partition id), and
    whether its attack sends the same vector on every Byzantine node (``shared``)."""

    byzantine: bool
    rank: int
    shared: bool = False

    def reply_to(self, msg: Message) -> Message:
        record = MetricRecord({"byzantine": int(self.byzantine), "rank": self.rank, "shared": int(self.shared)})
        return Message(RecordDict({ROLE_RECORD: record}), reply_to=msg)

    @classmethod
    def from_reply(cls, reply: Message) -> NodeRole:
        if reply.has_error():
            raise RuntimeError(f"role query failed on node {reply.metadata.src_node_id}: {reply.error.reason}")
        record = reply.content.metric_records.get(ROLE_RECORD)
        if record is None:
            raise RuntimeError(
                f"node {reply.metadata.src_node_id} does not speak the adversary protocol (no {ROLE_RECORD!r} "
                f"record in its {ROLE_TYPE} reply): use flwr_byz's ClientApp"
            )
        return cls(bool(record["byzantine"]), int(record["rank"]), bool(record["shared"]))


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
    the model another Byzantine node computed this round: send it as it is.
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

    def to_message(self, node_id: int) -> Message:
        config = ConfigRecord({
            "server-round": self.server_round, "gamma": self.gamma, "server-lr": self.server_lr,
            "aggregation": self.aggregation, "aggregation-f": self.aggregation_f,
            "aggregation-params": json.dumps(self.aggregation_params), "num-nodes": self.num_nodes,
            "num-attackers": self.num_attackers, "order": list(self.order),
        })
        content = RecordDict({MODEL_RECORD: self.model, CONFIG_RECORD: config})
        if self.honest is not None:
            content[HONEST_RECORD] = ArrayRecord({GRADIENTS: Array(self.honest.detach().cpu().numpy())})
        if self.echo is not None:
            content[ECHO_RECORD] = self.echo
        return Message(content, dst_node_id=node_id, message_type=ATTACK_TYPE)

    @classmethod
    def from_message(cls, msg: Message) -> AttackRequest:
        content = msg.content
        config = content.config_records[CONFIG_RECORD]
        honest = content.array_records.get(HONEST_RECORD)
        return cls(
            server_round=int(config["server-round"]), gamma=float(config["gamma"]),
            server_lr=float(config["server-lr"]), aggregation=str(config["aggregation"]),
            aggregation_f=int(config["aggregation-f"]),
            aggregation_params=json.loads(str(config["aggregation-params"])),
            num_nodes=int(config["num-nodes"]), num_attackers=int(config["num-attackers"]),
            order=[int(i) for i in config["order"]],  # type: ignore[union-attr]
            model=content.array_records[MODEL_RECORD],
            honest=None if honest is None else torch.from_numpy(np.array(honest[GRADIENTS].numpy(), copy=True)),
            echo=content.array_records.get(ECHO_RECORD),
        )


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
