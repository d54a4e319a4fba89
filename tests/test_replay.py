"""The replay recorder: rounds of a real Robust D-SGD run, as the adversary saw them."""

from __future__ import annotations

import dataclasses

import torch

from flwr_byz.attacks import get_attack
from flwr_byz.clients.nodes import honest_partitions
from flwr_byz.config import RunSettings
from flwr_byz.experiments.replay import attack_context, simulate
from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import get_task, worker_step

SETTINGS = RunSettings(task="mnist-logreg", aggregation="nnm+cm", num_byzantine=1, attack="sf", rounds=3, seed=3)


def test_recorded_rounds_chain_into_each_other_and_start_from_the_seeded_model() -> None:
    rounds = list(simulate(SETTINGS, nodes=5))
    assert [r.round for r in rounds] == [1, 2, 3] and all(r.honest.shape == (4, 7850) for r in rounds)
    rule = SETTINGS.aggregator()
    for now, later in zip(rounds, rounds[1:]):
        torch.testing.assert_close(now.attack, -now.honest.mean(0))  # SF
        update = rule(torch.cat([now.honest, now.attack.expand(1, -1)]))
        torch.testing.assert_close(later.params, now.params - now.lr * update, rtol=0, atol=0)
    # Round 1 of honest node 2, recomputed from scratch: the seeded model, its partition, worker_step.
    torch.manual_seed(SETTINGS.seed)
    model = get_task("mnist-logreg").build_model()
    task, x, y, parts = honest_partitions(SETTINGS, 4)
    part = torch.as_tensor(parts[2])
    step = worker_step(task, model, x[part], y[part], None, SETTINGS.worker(), SETTINGS.seed, 2, 1)
    torch.testing.assert_close(rounds[0].params, FlatLayout.of(model.state_dict()).flatten(model.state_dict()))
    torch.testing.assert_close(rounds[0].honest[2], step.momentum, rtol=0, atol=0)
    again = list(simulate(SETTINGS, nodes=5))
    assert all(torch.equal(a.params, b.params) and torch.equal(a.honest, b.honest) for a, b in zip(rounds, again))


def test_jump_rounds_carry_the_leaders_context_and_metrics() -> None:
    settings = dataclasses.replace(SETTINGS, attack="jump", jump_loss_size=64, jump_screen_size=16, rounds=2)
    rounds = list(simulate(settings, nodes=5))
    assert all(r.metrics["jump-finalists"] >= 1 for r in rounds)
    state = rounds[-1]
    ctx = attack_context(settings, state)
    assert (ctx.n, ctx.f, ctx.lr) == (5, 1, settings.lr) and ctx.screening_loss is not None
    attack = get_attack("jump")
    torch.testing.assert_close(attack(state.honest, ctx), state.attack, rtol=0, atol=0)  # replayable
    assert attack.metrics == state.metrics
    silent = list(simulate(dataclasses.replace(SETTINGS, attack="none", rounds=2), nodes=5))  # the defence alone
    torch.testing.assert_close(silent[1].params, silent[0].params - silent[0].lr * SETTINGS.aggregator()(silent[0].honest),
                               rtol=0, atol=0)
    assert silent[0].attack.numel() == 0 and len(silent[0].honest) == 4
