"""One ClientApp for every node of a simulation: honest workers and Byzantine nodes."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flwr_byz.attacks import ATTACKS
from flwr_byz.settings import RunSettings
from flwr_byz.flower.protocol import ATTACK_ACTION, ROLE_ACTION, AttackRequest, NodeRole
from flwr_byz.flower.attacker import train_byzantine
from flwr_byz.flower.paper.honest import train_honest
from flwr_byz.flower.nodes import Role

app = ClientApp()


@app.query(ROLE_ACTION)
def role(msg: Message, context: Context) -> Message:
    """Tell the adversary hook whether this node is Byzantine, its rank (partition id) and
    whether its attack sends the same vector on every Byzantine node."""
    settings = RunSettings.from_run_config(context.run_config)
    node = Role.of(context, settings)
    shared = node.byzantine and settings.attack != "none" and ATTACKS[settings.attack].shared
    return NodeRole(node.byzantine, node.partition_id, shared, settings.attack, settings.attack_params).reply_to(msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """An honest training step; Byzantine nodes only act through ``train.attack``."""
    if Role.of(context, RunSettings.from_run_config(context.run_config)).byzantine:
        raise ValueError("a Byzantine node got a plain train message: wrap the strategy in OmniscientAdversary")
    return train_honest(msg, context)


@app.train(ATTACK_ACTION)
def attack(msg: Message, context: Context) -> Message:
    """The Byzantine reply, computed from the honest updates the hook forwards."""
    return train_byzantine(AttackRequest.from_message(msg), context).reply_to(msg)
