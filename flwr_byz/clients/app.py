"""One ClientApp for every node of a simulation: honest workers and Byzantine nodes."""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..config import RunSettings
from .byzantine import train_byzantine
from .honest import train_honest
from .nodes import Role

app = ClientApp()


@app.query("role")
def role(msg: Message, context: Context) -> Message:
    """Tell the adversary oracle whether this node is Byzantine, and its partition id (a stable rank)."""
    node = Role.of(context, RunSettings.from_run_config(context.run_config))
    record = MetricRecord({"byzantine": int(node.byzantine), "partition-id": node.partition_id})
    return Message(RecordDict({"role": record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """An honest training step; Byzantine nodes only act through ``train.attack``."""
    if Role.of(context, RunSettings.from_run_config(context.run_config)).byzantine:
        raise ValueError("a Byzantine node got a plain train message: wrap the strategy in OmniscientAdversary")
    return train_honest(msg, context)


@app.train("attack")
def attack(msg: Message, context: Context) -> Message:
    """The Byzantine reply, computed from the honest updates the oracle forwards."""
    return train_byzantine(msg, context)
