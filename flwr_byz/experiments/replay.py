"""Rounds of a real Robust D-SGD run, recorded so that JUMP's searches can be compared from identical states.

:func:`simulate` runs a run's settings in this process, the way the Flower app
does: the honest nodes' :func:`~flwr_byz.tasks.worker_step` on their partitions
(same seeds, so the same batches, dropout masks and momenta), the configured
attack with JUMP's honest-loss oracle (:func:`~flwr_byz.tasks.honest_losses`),
the robust rule, and ``theta <- theta - gamma_t * server_lr * F``. It leaves out
what only the Flower path has: BatchNorm statistics travel as zero pseudo-gradients
(the honest nodes' running statistics are not averaged) and order-dependent rules
see the stack in its natural order. Each round is yielded as a
:class:`RecordedRound`: the state the omniscient adversary saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attacks import Attack, AttackContext
from ..clients.byzantine import honest_loss_oracle
from ..clients.nodes import honest_partitions
from ..config import RunSettings
from ..flat import FlatLayout
from ..seeds import seeded_generator
from ..tasks import worker_step


@dataclass(frozen=True)
class RecordedRound:
    """Round ``t`` as the adversary saw it: the model ``theta_t`` (flat), the ``(h, d)`` honest
    vectors (momenta) and the server step ``gamma_t * server_lr``; ``attack`` is the Byzantine
    vector the run sent, with the attack's metrics (empty without an attack)."""

    round: int
    params: Tensor
    honest: Tensor
    lr: float
    attack: Tensor
    metrics: dict[str, float]


def attack_context(settings: RunSettings, state: RecordedRound) -> AttackContext:
    """The context the run's Byzantine leader builds in round ``state.round``, on the CPU."""
    h = len(state.honest)
    full, screen = honest_loss_oracle(settings, h, state.round)
    return AttackContext(
        n=h + settings.num_byzantine, f=settings.num_byzantine,
        aggregator=settings.aggregator().for_round(state.round), lr=state.lr, params=state.params,
        honest_loss=full, screening_loss=screen,
        generator=seeded_generator(settings.seed, state.round, h, "attack"),
    )


def simulate(settings: RunSettings, nodes: int, attack: Attack | None = None,
             rounds: int | None = None) -> Iterator[RecordedRound]:
    """Run ``settings`` with ``nodes`` nodes (the last ``num-byzantine`` Byzantine) in this process on the
    CPU for ``rounds`` rounds (default: the settings'), yielding each round before its update.

    ``attack`` replaces the settings' attack (attack ``"none"``: the Byzantine nodes send nothing
    and the rule sees the honest vectors only). The model after round ``t`` is
    ``params - lr * F(honest, attack x f)`` of that round.
    """
    f, h = settings.num_byzantine, nodes - settings.num_byzantine
    attack = attack or (settings.make_attack() if settings.attack != "none" else None)
    task, x, y, parts = honest_partitions(settings, h)
    shards = [(x[torch.as_tensor(p)], y[torch.as_tensor(p)]) for p in parts]
    torch.manual_seed(settings.seed)
    model = task.build_model()
    layout = FlatLayout.of(model.state_dict())
    theta = layout.flatten(model.state_dict())
    momenta: list[Tensor | None] = [None] * h
    for t in range(1, (rounds or settings.rounds) + 1):
        model.load_state_dict(layout.unflatten(theta))
        for i, (xi, yi) in enumerate(shards):
            momenta[i] = worker_step(task, model, xi, yi, momenta[i], settings.worker(), settings.seed, i, t).momentum
        honest = torch.stack(momenta)  # type: ignore[arg-type]
        lr = settings.lr_at(t) * settings.server_lr
        state = RecordedRound(t, theta.clone(), honest, lr, torch.zeros(0), {})
        aggregator = settings.aggregator().for_round(t)
        if attack is None:
            yield state
            theta = theta - lr * aggregator(honest)
            continue
        vector = attack(honest, attack_context(settings, state))
        yield dataclasses.replace(state, attack=vector, metrics=dict(attack.metrics))
        theta = theta - lr * aggregator(torch.cat([honest, vector.expand(f, -1)]))
