"""Hand-built Flower messages for strategy tests (explicit Metadata, as outside a running app)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

# Instruction messages take their sender from the process's task identity, set by a running app.
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def metadata(node_id: int, message_type: str = "train") -> Metadata:
    return Metadata(run_id=1, message_id=f"m{node_id}", src_node_id=node_id, dst_node_id=0,
                    reply_to_message_id="q", group_id="1", created_at=0.0, ttl=100.0,
                    message_type=message_type)


def reply(node_id: int, arrays: dict[str, np.ndarray], metrics: dict | None = None) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
        "metrics": MetricRecord({"num-examples": 1, **(metrics or {})}),
    })
    return Message(content=content, metadata=metadata(node_id))


def error_reply(node_id: int, reason: str = "client crashed") -> Message:
    return Message(error=Error(code=1, reason=reason), metadata=metadata(node_id))


class NodesGrid(Grid):
    """A Grid that only knows its node ids: enough for ``configure_*`` outside a run."""

    def __init__(self, num_nodes: int) -> None:
        self.nodes = list(range(1, num_nodes + 1))

    def get_node_ids(self):
        return self.nodes

    def create_message(self, *args, **kwargs):  # pragma: no cover - not used by these tests
        raise NotImplementedError

    def get_nodes(self):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def set_run(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError


def configure(strategy, arrays: dict[str, np.ndarray], num_nodes: int, config: dict | None = None,
              server_round: int = 1) -> list[Message]:
    record = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return list(strategy.configure_train(server_round, record, ConfigRecord(config or {}), NodesGrid(num_nodes)))


class LoopbackGrid(NodesGrid):
    """A Grid that delivers each message in-process to ``app(message, contexts[node])`` (a real
    ClientApp) and keeps every message it sent; an exception becomes an error reply, as in Flower."""

    def __init__(self, app, contexts: dict) -> None:
        self.nodes, self.app, self.contexts = list(contexts), app, contexts
        self.sent: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"  # the SuperLink's job
            self.sent.append(msg)
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as err:  # noqa: BLE001 - Flower turns any client exception into an error reply
                reply = msg.create_error_reply(Error(code=0, reason=f"{type(err).__name__}: {err}"))
            reply.metadata.__dict__["_message_id"] = f"r{len(self.sent)}"
            replies.append(reply)
        return replies


def simulation_contexts(run_config: dict, num_nodes: int) -> dict:
    """Contexts of ``num_nodes`` simulated nodes (ids 1..n, partition ids 0..n-1) sharing ``run_config``."""
    from flwr.app import Context

    return {i + 1: Context(run_id=1, node_id=i + 1, node_config={"partition-id": i, "num-partitions": num_nodes},
                           state=RecordDict(), run_config=dict(run_config)) for i in range(num_nodes)}
