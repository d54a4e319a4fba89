"""The Byzantine node: answers the adversary hook's attack requests (``flwr_byz.protocol``)."""

from __future__ import annotations

import time

import torch
from flwr.app import Context
from torch import Tensor

from ..aggregation import get_aggregator
from ..attacks import Attack, AttackContext
from ..config import RunSettings
from ..flat import FlatLayout
from ..protocol import AttackReply, AttackRequest
from ..records import to_record
from ..tasks import seeded_generator
from ..tasks.nodes import honest_loss_oracle
from .honest import momentum_step
from .nodes import Role, device, local_data
from .records import load_state, save_state

STATE_KEY = "attack-state"


def flipped_gradient(request: AttackRequest, context: Context, settings: RunSettings, role: Role, theta: Tensor,
                     layout: FlatLayout) -> Tensor:
    """LF: the honest pipeline's pseudo-gradient on an honest partition with labels ``c - 1 - y``."""
    task, x, y = local_data(settings, (role.partition_id - role.h) % role.h, role.h)
    state, _, _ = momentum_step(context, settings, task, x, task.num_classes - 1 - y, request.model,
                                request.server_round, request.gamma, role.partition_id, state_key="lf-momentum")
    return (theta - layout.flatten(state, theta.dtype)) / request.gamma


def restored(context: Context, settings: RunSettings) -> Attack:
    """The configured attack with the state this node kept from earlier rounds."""
    attack = settings.make_attack()
    stored = load_state(context.state, STATE_KEY)
    if stored:
        attack.load_state_dict(stored)
    return attack


def train_byzantine(request: AttackRequest, context: Context) -> AttackReply:
    """The model ``theta - gamma_t * a`` this node sends, ``a`` the configured attack's vector
    (or, for an ``echo`` request, the model another Byzantine node computed this round).
    Metrics: the attack's, and ``attack-seconds``: this node's wall time for the round's attack."""
    if request.echo is not None:
        return AttackReply(request.echo)
    start = time.perf_counter()
    if request.honest is None:
        raise ValueError("attack request without honest pseudo-gradients or a model to echo")
    settings = RunSettings.from_run_config(context.run_config)
    role = Role.of(context, settings)
    honest = request.honest.to(device())
    state = {k: v.to(device()) for k, v in request.model.to_torch_state_dict().items()}
    layout = FlatLayout.of(state)
    theta = layout.flatten(state, honest.dtype)
    attack = restored(context, settings)
    jump = attack.name == "jump"
    losses = honest_loss_oracle(settings, role.h, request.server_round, device()) if jump else (None, None)
    ctx = AttackContext(
        n=request.num_nodes,
        f=request.num_attackers,
        aggregator=get_aggregator(request.aggregation, request.aggregation_f,
                                  **request.aggregation_params).for_round(request.server_round),
        lr=request.gamma * request.server_lr,
        params=theta,
        honest_loss=losses[0],
        screening_loss=losses[1],
        flipped=flipped_gradient(request, context, settings, role, theta, layout) if attack.name == "lf" else None,
        generator=seeded_generator(settings.seed, request.server_round, role.partition_id, "attack"),
        order=torch.tensor(request.order, device=honest.device),
    )
    vector = attack(honest, ctx)
    save_state(context.state, STATE_KEY, attack.state_dict())
    model = to_record(state | layout.unflatten(theta - request.gamma * vector))
    return AttackReply(model, {**attack.metrics, "attack-seconds": time.perf_counter() - start})
