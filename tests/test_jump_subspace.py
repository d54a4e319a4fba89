"""JUMP in a plane (``jump-subspace``): JUMP's answer when the plane adds nothing, never worse than JUMP on the
same oracle, and the plane's optimum on a hand-worked problem JUMP's line cannot reach."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import AttackContext, get_attack
from flwr_byz.attacks.jump_subspace import JumpSubspace, Plane, principal_direction
from flwr_byz.attacks.jump import JumpObjective

sys.path.insert(0, str(Path(__file__).parent))
from test_jump import random_problem  # noqa: E402


def after(honest: Tensor, ctx: AttackContext, vector: Tensor) -> float:
    """``L_H`` after the server's step on the honest vectors and ``f`` copies of ``vector``."""
    assert ctx.aggregator is not None and ctx.honest_loss is not None and ctx.params is not None
    aggregate = ctx.aggregator(torch.cat([honest, vector.expand(ctx.f, -1)]))
    return float(ctx.honest_loss((ctx.params - ctx.lr * aggregate)[None])[0])


def test_registered_with_jumps_traits() -> None:
    attack = get_attack("jump-subspace", sweeps=2, finalists=1)
    assert isinstance(attack, JumpSubspace) and attack.needs_loss and attack.shared
    assert attack.sweeps == 2 and attack.jump.finalists == 1
    with pytest.raises(ValueError, match="sweeps"):
        JumpSubspace(sweeps=-1)
    with pytest.raises(ValueError, match="unknown parameters"):
        JumpSubspace(nonsense=1)


def test_hand_worked_plane_reaches_what_the_line_cannot() -> None:
    """g_1 = (1, 1), g_2 = (1, -1), f = 2, the mean, lr = 1, theta = 0, L_H(x) = -|x - (-1, -1)|^2.

    gbar = (1, 0); the centred rows are (0, +-1): u = (0, 1), sigma = 1, so the plane is all of R^2 and the copies
    c = (l1, l2) move the model to -((2, 0) + 2c) / 4. JUMP's line (l2 = 0) stops at l1 = 1, x = (-1, 0),
    L_H = -1; the plane reaches c = (1, 2), x = (-1, -1), L_H = 0.
    """
    honest = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    target = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    ctx = AttackContext(n=4, f=2, aggregator=get_aggregator("mean", f=2), lr=1.0,
                        params=torch.zeros(2, dtype=torch.float64),
                        honest_loss=lambda theta: -((theta - target) ** 2).sum(1))
    u, sigma = principal_direction(honest - honest.mean(0))
    assert sigma == pytest.approx(1.0) and torch.allclose(u, torch.tensor([0.0, 1.0], dtype=torch.float64))
    jump = get_attack("jump")
    line = jump(honest, ctx)
    assert jump.metrics["jump-lambda"] == pytest.approx(1.0, abs=1e-3)
    assert after(honest, ctx, line) == pytest.approx(-1.0, abs=1e-3)
    plane = JumpSubspace()
    vector = plane(honest, ctx)
    assert torch.allclose(vector, torch.tensor([1.0, 2.0], dtype=torch.float64), atol=0.05)
    assert after(honest, ctx, vector) == pytest.approx(plane.metrics["jump-loss"])
    assert plane.metrics["jump-loss"] > -1e-3
    assert plane.metrics["subspace-gain"] == pytest.approx(plane.metrics["jump-loss"] - after(honest, ctx, line))
    assert plane.metrics["jump-evals"] > jump.metrics["jump-evals"]


def test_zero_spread_and_no_sweep_are_jump() -> None:
    """With equal honest vectors (sigma = 0) or ``sweeps = 0`` the answer is JUMP's, bit for bit."""
    honest, ctx = random_problem(3, "nnm+cm", "softmax")
    same = honest[:1].expand_as(honest).clone()
    for rows, attack in ((same, JumpSubspace()), (honest, JumpSubspace(sweeps=0))):
        expected = get_attack("jump")(rows, ctx)
        assert torch.equal(attack(rows, ctx), expected)
        assert attack.metrics["subspace-mu"] == 0.0 and attack.metrics["subspace-gain"] == 0.0
    plane = Plane(JumpObjective(same, ctx, 2**20))
    assert plane.sigma == 0.0


@pytest.mark.parametrize("spec", ["nnm+cm", "nnm+gm", "cm", "krum", "nnm+tm"])
@pytest.mark.parametrize("screen", [False, True])
def test_never_worse_than_jump_on_the_same_oracle(spec: str, screen: bool) -> None:
    """On every path (span coordinates, CM/TM in R^d, a span rule) and with a screening loss, the reported
    loss is the true aggregator's on the returned vector and at least JUMP's; the plane wins on some problems."""
    gains = []
    for seed in range(6):
        honest, ctx = random_problem(seed, spec, "softmax")
        if screen:
            loss = ctx.honest_loss
            assert loss is not None
            ctx.screening_loss = lambda theta, loss=loss: loss(theta) + 0.05 * theta[:, :3].sum(1)
        jump, plane = get_attack("jump"), JumpSubspace(sweeps=2)
        line, vector = jump(honest, ctx), plane(honest, ctx)
        value = after(honest, ctx, vector)
        assert value == pytest.approx(plane.metrics["jump-loss"], rel=1e-9, abs=1e-12)
        assert plane.metrics["subspace-jump-loss"] == jump.metrics["jump-loss"]
        assert value >= after(honest, ctx, line) - 1e-12
        gains.append(value - after(honest, ctx, line))
    assert max(gains) > 0
