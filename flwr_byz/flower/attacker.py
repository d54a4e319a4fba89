"""The Byzantine step: the model a Byzantine node sends in answer to the hook's attack request
(``flwr_byz.flower.protocol``), wherever it is computed (a Byzantine node, or the hook itself for JUMP
scored by a user app's honest nodes)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from flwr.app import Context
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import Attack, AttackContext
from flwr_byz.attacks.base import HonestLoss
from flwr_byz.settings import RunSettings
from flwr_byz.flat import FlatLayout
from flwr_byz.flower.protocol import AttackReply, AttackRequest
from flwr_byz.flower.records import to_record
from flwr_byz.seeds import seeded_generator
from flwr_byz.tasks.nodes import honest_loss_oracle
from flwr_byz.flower.paper.honest import momentum_step
from flwr_byz.flower.nodes import Role, device, local_data
from flwr_byz.flower.records import load_state, save_state

STATE_KEY = "attack-state"
Flipped = Callable[[Tensor, FlatLayout], Tensor]
"""LF's honest-pipeline vector on flipped labels, given the flat global model and its layout."""


def restored(context: Context, attack: Attack) -> Attack:
    """``attack`` with the state this node kept from earlier rounds."""
    stored = load_state(context.state, STATE_KEY)
    if stored:
        attack.load_state_dict(stored)
    return attack


def byzantine_model(
    request: AttackRequest, attack: Attack, seed: int, rank: int, honest_loss: HonestLoss | None = None,
    screening_loss: HonestLoss | None = None, flipped: Flipped | None = None,
) -> AttackReply:
    """The model ``theta - gamma_t * a`` for the request's round, ``a = attack(honest, ctx)`` with the
    defended rule, the server step ``gamma_t * server_lr``, JUMP's honest loss and LF's flipped vector
    as given, randomness from ``(seed, round, rank, "attack")``. Metrics: the attack's, and
    ``attack-seconds``: the wall time of this step."""
    start = time.perf_counter()
    if request.honest is None:
        raise ValueError("attack request without honest pseudo-gradients or a model to echo")
    honest = request.honest.to(device())
    state = {k: v.to(device()) for k, v in request.model.to_torch_state_dict().items()}
    layout = FlatLayout.of(state)
    theta = layout.flatten(state, honest.dtype)
    ctx = AttackContext(
        n=request.num_nodes,
        f=request.num_attackers,
        aggregator=get_aggregator(request.aggregation, request.aggregation_f,
                                  **request.aggregation_params).for_round(request.server_round),
        lr=request.gamma * request.server_lr,
        params=theta,
        honest_loss=honest_loss,
        screening_loss=screening_loss,
        flipped=None if flipped is None else flipped(theta, layout),
        generator=seeded_generator(seed, request.server_round, rank, "attack"),
        order=torch.tensor(request.order, device=honest.device),
    )
    vector = attack(honest, ctx)
    model = to_record(state | layout.unflatten(theta - request.gamma * vector))
    return AttackReply(model, {**attack.metrics, "attack-seconds": time.perf_counter() - start})


def answer(request: AttackRequest, context: Context, attack: Attack, seed: int, rank: int,
           honest_loss: HonestLoss | None = None, screening_loss: HonestLoss | None = None,
           flipped: Flipped | None = None) -> AttackReply:
    """A Byzantine node's reply: the model another node computed (``echo``), or :func:`byzantine_model` with
    the attack's state carried in ``context.state`` across rounds."""
    if request.echo is not None:
        return AttackReply(request.echo)
    reply = byzantine_model(request, restored(context, attack), seed, rank, honest_loss, screening_loss, flipped)
    save_state(context.state, STATE_KEY, attack.state_dict())
    return reply


def train_byzantine(request: AttackRequest, context: Context) -> AttackReply:
    """flwr_byz's Byzantine node: the run's attack, JUMP scored on the honest partitions of the run's task,
    LF's vector from the honest pipeline on an honest partition with labels ``c - 1 - y``."""
    settings = RunSettings.from_run_config(context.run_config)
    role = Role.of(context, settings)
    attack = settings.make_attack()

    def flipped(theta: Tensor, layout: FlatLayout) -> Tensor:
        task, x, y = local_data(settings, (role.partition_id - role.h) % role.h, role.h)
        state, _, _ = momentum_step(context, settings, task, x, task.num_classes - 1 - y, request.model,
                                    request.server_round, request.gamma, role.partition_id, state_key="lf-momentum")
        return (theta - layout.flatten(state, theta.dtype)) / request.gamma

    losses = (None, None)
    if attack.needs_loss and request.echo is None:
        losses = honest_loss_oracle(settings, role.h, request.server_round, device())
    return answer(request, context, attack, settings.seed, role.partition_id, honest_loss=losses[0],
                  screening_loss=losses[1], flipped=flipped if attack.name == "lf" else None)
