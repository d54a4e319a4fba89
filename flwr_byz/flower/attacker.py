"""The Byzantine step: the model a Byzantine node sends in answer to the hook's attack request
(``flwr_byz.flower.protocol``), wherever it is computed (a Byzantine node, or the hook itself for JUMP
scored by a user app's honest nodes)."""

from __future__ import annotations

import time

from flwr.app import Context
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import Attack
from flwr_byz.attacks.base import HonestLoss
from flwr_byz.dsgd import attack_context, pseudo_gradient
from flwr_byz.flat import FlatLayout
from flwr_byz.flower.nodes import device
from flwr_byz.flower.protocol import AttackReply, AttackRequest
from flwr_byz.flower.records import load_state, save_state, to_record

STATE_KEY = "attack-state"


def byzantine_model(
    request: AttackRequest, attack: Attack, seed: int, rank: int, honest_loss: HonestLoss | None = None,
    screening_loss: HonestLoss | None = None, flipped: dict[str, Tensor] | None = None,
) -> AttackReply:
    """The model ``theta - gamma_t * a`` for the request's round, ``a = attack(honest, ctx)`` with the context of
    :func:`flwr_byz.dsgd.attack_context` (JUMP's honest losses and LF's flipped model ``flipped``, the model the
    honest pipeline sends on flipped labels, as given). Metrics: the attack's, and ``attack-seconds``: the wall
    time of this step."""
    start = time.perf_counter()
    if request.honest is None:
        raise ValueError("attack request without honest pseudo-gradients or a model to echo")
    honest = request.honest.to(device())
    state = {k: v.to(device()) for k, v in request.model.to_torch_state_dict().items()}
    layout = FlatLayout.of(state)
    theta = layout.flatten(state, honest.dtype)
    rule = get_aggregator(request.aggregation, request.aggregation_f, **request.aggregation_params).with_reference(
        None if request.reference is None else request.reference.to(device()))
    ctx = attack_context(
        rule, request.server_round, request.num_nodes, request.num_attackers, request.gamma * request.server_lr,
        theta, request.order, seed, rank, honest_loss, screening_loss,
        None if flipped is None else pseudo_gradient(theta, flipped, layout, request.gamma),
    )
    vector = attack(honest, ctx)
    model = to_record(state | layout.unflatten(theta - request.gamma * vector))
    return AttackReply(model, {**attack.metrics, "attack-seconds": time.perf_counter() - start})


def answer(request: AttackRequest, context: Context, attack: Attack, seed: int, rank: int,
           honest_loss: HonestLoss | None = None, screening_loss: HonestLoss | None = None,
           flipped: dict[str, Tensor] | None = None) -> AttackReply:
    """A Byzantine node's reply: :func:`byzantine_model`, with the attack's state carried in ``context.state``
    across rounds (an echo request is answered by the wrapper, without torch)."""
    stored = load_state(context.state, STATE_KEY)
    if stored:
        attack.load_state_dict(stored)
    reply = byzantine_model(request, attack, seed, rank, honest_loss, screening_loss, flipped)
    save_state(context.state, STATE_KEY, attack.state_dict())
    return reply
