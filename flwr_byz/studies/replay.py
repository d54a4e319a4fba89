"""Rounds of a real Robust D-SGD run, recorded so that JUMP's searches can be compared from identical states.

:func:`simulate` runs a run's settings on the in-process engine (:class:`~flwr_byz.engine.Simulation`,
the Flower path's maths) on the CPU and yields each round as a :class:`RecordedRound`: the
state the omniscient adversary saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from flwr_byz.attacks import Attack, AttackContext
from flwr_byz.dsgd import attack_context
from flwr_byz.settings import RunSettings
from flwr_byz.engine import Simulation
from flwr_byz.node_data import honest_loss_oracle


@dataclass(frozen=True)
class RecordedRound:
    """Round ``t`` as the adversary saw it: the model ``theta_t`` (flat), the ``(h, d)`` honest
    pseudo-gradients and the server step ``gamma_t * server_lr``; ``attack`` is the Byzantine
    vector the server read (empty without an attack), with the attack's metrics."""

    round: int
    params: Tensor
    honest: Tensor
    lr: float
    attack: Tensor
    metrics: dict[str, float]


def leader_context(settings: RunSettings, state: RecordedRound) -> AttackContext:
    """The context the run's Byzantine leader builds in round ``state.round``, on the CPU (natural row order)."""
    h, f = len(state.honest), settings.num_byzantine
    return attack_context(settings.aggregator(), state.round, h + f, f, state.lr, state.params, range(h + f),
                          settings.seed, h, *honest_loss_oracle(settings, h, state.round))


def simulate(settings: RunSettings, nodes: int, attack: Attack | None = None,
             rounds: int | None = None) -> Iterator[RecordedRound]:
    """Run ``settings`` with ``nodes`` nodes (the last ``num-byzantine`` Byzantine) on the CPU for ``rounds``
    rounds (default: the settings'), yielding each round; ``attack`` replaces the settings' attack.
    The model after round ``t`` is ``params - lr * F(...)`` of that round's replies in the adversary's order."""
    sim = Simulation(settings, nodes, "cpu", attack)
    for _ in range(rounds or settings.rounds):
        params = sim.theta
        done = sim.step()
        vector = done.attack[0] if done.attack is not None else torch.zeros(0)
        yield RecordedRound(done.round, params, done.honest, done.lr, vector, done.metrics)
