"""The Byzantine node: answers ``train.attack`` messages of the omniscient adversary."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from torch import Tensor

from ..aggregation import get_aggregator
from ..attacks import Attack, AttackContext, get_attack
from ..config import RunSettings
from ..flat import FlatLayout
from ..records import to_record, to_tensors
from ..tasks import Task, seeded_generator
from .honest import momentum_step
from .nodes import Role, device, honest_partitions, local_data
from .records import instruction, load_state, save_state

STATE_KEY = "attack-state"


def honest_loss_oracle(settings: RunSettings, role: Role, task: Task, round_: int) -> Callable[[Tensor], Tensor]:
    """``L_H`` on flat parameters ``(k, d) -> (k,)``: the mean over honest workers of their loss on
    ``jump-loss-size / h`` examples each, drawn afresh every round (the adversary knows the data)."""
    _, x, y, parts = honest_partitions(settings, role.h)
    per_worker = max(1, settings.jump_loss_size // role.h)
    gen = seeded_generator(settings.seed, round_, "jump-loss")
    idx = torch.cat([torch.as_tensor(p)[torch.randperm(len(p), generator=gen)[:per_worker]] for p in parts])
    xs, ys = x[idx].to(device()), y[idx].to(device())
    model = task.build_model().to(device())
    return lambda flat: task.batched_loss(model, flat, xs, ys)


def flipped_gradient(msg: Message, context: Context, settings: RunSettings, role: Role, theta: Tensor,
                     layout: FlatLayout, gamma: float) -> Tensor:
    """LF: the honest pipeline's pseudo-gradient on an honest partition with labels ``c - 1 - y``."""
    task, x, y = local_data(settings, (role.partition_id - role.h) % role.h, role.h)
    state, _, _ = momentum_step(context, settings, task, x, task.num_classes - 1 - y, msg, role.partition_id,
                                state_key="lf-momentum")
    return (theta - layout.flatten(state, theta.dtype)) / gamma


def restore(attack: Attack, context: Context) -> None:
    stored = load_state(context.state, STATE_KEY)
    if stored:
        attack.load_state_dict(stored)


def train_byzantine(msg: Message, context: Context) -> Message:
    """Reply to ``train.attack`` with ``theta - gamma_t * a``, ``a`` the configured attack's vector.

    The message carries the global model, the honest pseudo-gradients ``(h, d)``
    under ``honest/gradients``, the defended aggregation and the step sizes.
    """
    settings = RunSettings.from_run_config(context.run_config)
    role = Role.of(context, settings)
    arrays, config = instruction(msg)
    round_, gamma = int(config["server-round"]), float(config.get("lr", 1.0))
    honest = to_tensors(msg.content["honest"])["gradients"].to(device())
    state = {k: v.to(device()) for k, v in arrays.to_torch_state_dict().items()}
    layout = FlatLayout.of(state)
    theta = layout.flatten(state, honest.dtype)

    attack = get_attack(settings.attack, **({"solver": settings.jump_solver} if settings.attack == "jump" else {}))
    restore(attack, context)
    task = honest_partitions(settings, role.h)[0]
    ctx = AttackContext(
        n=int(config["n"]),
        f=int(config["byzantine-sent"]),
        aggregator=get_aggregator(str(config["aggregation"]), int(config["num-byzantine"]),
                                  **json.loads(str(config["aggregation-params"]))),
        lr=gamma * float(config["server-lr"]),
        params=theta,
        honest_loss=honest_loss_oracle(settings, role, task, round_) if settings.attack == "jump" else None,
        flipped=flipped_gradient(msg, context, settings, role, theta, layout, gamma) if settings.attack == "lf" else None,
        generator=seeded_generator(settings.seed, round_, role.partition_id, "attack"),
    )
    vector = attack(honest, ctx)
    save_state(context.state, STATE_KEY, attack.state_dict())
    reply = state | layout.unflatten(theta - gamma * vector)
    content = RecordDict({
        "arrays": to_record(reply),
        "metrics": msg.content["metrics"],
        "attack": ConfigRecord({k: float(v) for k, v in attack.metrics.items()}),
    })
    return Message(content=content, reply_to=msg)
