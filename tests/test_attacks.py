"""Attacks other than JUMP's search: exact values on hand-worked examples, and shared properties."""

from __future__ import annotations

import math

import pytest
import torch

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import ATTACKS, AttackContext, get_attack

# Three honest vectors; gbar = (3, 4), unbiased std = (2, 2*sqrt(3)), centred rows
# y = (-2, -2), (0, -2), (2, 4), squared pairwise distances 4, 52, 40.
HONEST = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]], dtype=torch.float64)
CTX = AttackContext(n=5, f=2)


def test_sign_flip_and_fall_of_empires() -> None:
    assert torch.equal(get_attack("sf")(HONEST, CTX), torch.tensor([-3.0, -4.0], dtype=torch.float64))
    assert torch.allclose(get_attack("foe")(HONEST, CTX), torch.tensor([-0.3, -0.4], dtype=torch.float64))
    assert torch.allclose(get_attack("foe", eps=3.0)(HONEST, CTX), torch.tensor([-6.0, -8.0], dtype=torch.float64))


def test_alie_z_matches_the_paper_setting() -> None:
    # n = 15, f = 3: h = 12, s = floor(8.5) - 3 = 5, z = Phi^-1(7/12).
    z = ATTACKS["alie"].default_z(15, 3)  # type: ignore[attr-defined]
    assert z == pytest.approx(0.210428, abs=1e-6)
    assert 0.5 * math.erfc(-z / math.sqrt(2)) == pytest.approx(7 / 12)


def test_alie_vector_formula() -> None:
    # n = 5, f = 2: h = 3, s = 1, z = Phi^-1(2/3) = 0.4307273.
    attack = get_attack("alie")
    out = attack(HONEST, CTX)
    z = 0.4307272993
    assert attack.metrics["alie-z"] == pytest.approx(z, abs=1e-9)
    assert torch.allclose(out, torch.tensor([3 - 2 * z, 4 - 2 * math.sqrt(3) * z], dtype=torch.float64))
    fixed = get_attack("alie", z=1.5)(HONEST, CTX)
    assert torch.allclose(fixed, torch.tensor([0.0, 4 - 3 * math.sqrt(3)], dtype=torch.float64))


@pytest.mark.parametrize(("n", "f"), [(5, 3), (2, 0), (7, 4)])
def test_alie_default_z_needs_0_lt_s_lt_h(n: int, f: int) -> None:
    with pytest.raises(ValueError, match="0 < s < h"):
        get_attack("alie")(torch.ones(n - f, 2), AttackContext(n=n, f=f))


def test_label_flip_returns_a_copy_of_ctx_flipped() -> None:
    flipped = torch.tensor([7.0, -1.0])
    out = get_attack("lf")(HONEST, AttackContext(n=5, f=2, flipped=flipped))
    assert torch.equal(out, flipped.double()) and out.dtype == torch.float64
    out.zero_()
    assert torch.equal(flipped, torch.tensor([7.0, -1.0]))
    with pytest.raises(ValueError, match=r"ctx\.flipped is missing"):
        get_attack("lf")(HONEST, CTX)
    with pytest.raises(ValueError, match="shape"):
        get_attack("lf")(HONEST, AttackContext(n=5, f=2, flipped=torch.zeros(3)))


def test_gaussian_is_seeded_noise_around_the_mean() -> None:
    def draw(seed: int, sigma: float = 2.0) -> torch.Tensor:
        ctx = AttackContext(n=5, f=2, generator=torch.Generator().manual_seed(seed))
        return get_attack("gaussian", sigma=sigma)(HONEST, ctx)

    assert draw(0).shape == (2,)
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    assert torch.equal(draw(0, sigma=0.0), HONEST.mean(0))
    noise = torch.randn(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(draw(0), HONEST.mean(0) + 2.0 * noise)


def test_inf_fills_with_plus_infinity() -> None:
    out = get_attack("inf")(HONEST, CTX)
    assert out.shape == (2,) and bool(torch.isposinf(out).all())


def test_minmax_eta_hand_worked() -> None:
    # p = -(3, 4)/5; ||a - g_i||^2 = eta^2 - 2 eta <p, y_i> + ||y_i||^2; the third row binds:
    # eta^2 + 8.8 eta + 20 = 52 (largest pairwise squared distance).
    attack = get_attack("minmax")
    out = attack(HONEST, CTX)
    eta = (-8.8 + math.sqrt(8.8**2 + 4 * 32)) / 2
    assert attack.metrics["minmax-eta"] == pytest.approx(eta, abs=1e-5)
    assert attack.metrics["minmax-eta"] <= eta
    assert torch.allclose(out, HONEST.mean(0) - eta * torch.tensor([0.6, 0.8], dtype=torch.float64), atol=1e-5)


def test_minsum_eta_hand_worked() -> None:
    # sum_i ||a - g_i||^2 = 32 + 3 eta^2 <= max_i sum_j ||g_i - g_j||^2 = 92  =>  eta = sqrt(20).
    attack = get_attack("minsum")
    attack(HONEST, CTX)
    assert attack.metrics["minsum-eta"] == pytest.approx(math.sqrt(20), abs=1e-5)


@pytest.mark.parametrize("name", ["minmax", "minsum"])
@pytest.mark.parametrize("perturbation", ["unit", "std", "sign"])
def test_minmax_minsum_constraint_binds(name: str, perturbation: str) -> None:
    honest = torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 1.0
    attack = get_attack(name, perturbation=perturbation)
    a = attack(honest, AttackContext(n=8, f=2))
    eta = attack.metrics[f"{name}-eta"]
    pair = torch.cdist(honest, honest)

    def slack(vec: torch.Tensor) -> float:
        dist = (honest - vec).norm(dim=1)
        if name == "minmax":
            return float(pair.max() - dist.max())
        return float((pair**2).sum(1).max() - (dist**2).sum())

    assert 0 < eta < 50
    assert slack(a) >= -1e-9
    assert slack(a + (a - honest.mean(0)) * (2e-5 / eta)) < 0  # a slightly larger step breaks it


@pytest.mark.parametrize("name", ["minmax", "minsum"])
def test_minmax_minsum_cap_eta_at_50(name: str) -> None:
    # g = (0, 0), (200, 0): the budget allows eta = 100, so the search stops at its cap.
    honest = torch.tensor([[0.0, 0.0], [200.0, 0.0]])
    attack = get_attack(name)
    out = attack(honest, AttackContext(n=3, f=1))
    assert attack.metrics[f"{name}-eta"] == 50.0
    assert torch.equal(out, torch.tensor([50.0, 0.0]))


def test_mimic_warmup_then_top_direction() -> None:
    # Spread along the x axis: the top principal direction is ~(1, 0); centred at
    # mu = (1.25, 0) the projections are -1.25, -0.25, -2.25, 3.75: worker 3 wins.
    honest = torch.tensor([[0.0, 0.0], [1.0, 0.1], [-1.0, -0.1], [5.0, 0.0]])
    ctx = AttackContext(n=6, f=2, generator=torch.Generator().manual_seed(0))
    attack = get_attack("mimic", warmup=2)
    assert torch.equal(attack(honest, ctx), honest[0])
    assert torch.equal(attack(honest, ctx), honest[0])
    assert attack.z is not None and abs(float(attack.z[0])) > 0.999  # type: ignore[attr-defined]
    assert torch.equal(attack(honest, ctx), honest[3]) and attack.metrics["mimic-target"] == 3.0
    attack.reset()
    assert torch.equal(attack(honest, ctx), honest[0])


def test_mimic_state_round_trips_through_state_dict() -> None:
    # A Flower node may run each round in another process: the state must carry everything.
    gen = torch.Generator().manual_seed(1)
    rounds = [torch.randn(5, 4, generator=gen) for _ in range(4)]
    def ctx() -> AttackContext:
        return AttackContext(n=7, f=2, generator=torch.Generator().manual_seed(0))

    steady = get_attack("mimic", warmup=2)
    moved = get_attack("mimic", warmup=2)
    for honest in rounds:
        expected = steady(honest, ctx())
        fresh = get_attack("mimic", warmup=2)
        fresh.load_state_dict(moved.state_dict())
        assert torch.equal(fresh(honest, ctx()), expected)
        assert torch.equal(fresh.z, steady.z)  # type: ignore[attr-defined]
        moved = fresh
    with pytest.raises(ValueError, match="stateless"):
        get_attack("sf").load_state_dict({"t": torch.tensor(1)})
    assert get_attack("sf").state_dict() == {}


def test_get_attack_names_and_errors() -> None:
    assert set(ATTACKS) == {"sf", "foe", "alie", "lf", "mimic", "minmax", "minsum", "jump", "gaussian", "inf",
                            "ipm", "alie-opt", "ipm-opt", "fang", "agr-tailored",  # these five: test_attacks_field
                            "mpaf", "poisonedfl", "rop"}  # these three: test_attacks_stateful
    assert get_attack("SF").name == "sf"
    with pytest.raises(ValueError, match=r"unknown attack 'nope'; valid: \['agr-tailored', 'alie'"):
        get_attack("nope")
    with pytest.raises(ValueError, match=r"valid: \['eps'\]"):
        get_attack("foe", epsilon=1.0)
    with pytest.raises(ValueError, match="perturbation must be one of"):
        get_attack("minmax", perturbation="random")
    with pytest.raises(ValueError, match="warmup"):
        get_attack("mimic", warmup=0)
    with pytest.raises(ValueError, match="sigma"):
        get_attack("gaussian", sigma=-1.0)
    with pytest.raises(ValueError, match="unknown solver"):
        get_attack("jump", solver="nelder-mead")
    with pytest.raises(ValueError, match="lam_max"):
        get_attack("jump", solver="powell", lam_max=10.0)


def test_context_and_input_validation() -> None:
    with pytest.raises(ValueError, match="0 <= f < n"):
        AttackContext(n=3, f=3)
    with pytest.raises(ValueError, match="0 <= f < n"):
        AttackContext(n=3, f=-1)
    with pytest.raises(ValueError, match=r"\(h, d\) = \(3, d\)"):
        get_attack("sf")(torch.zeros(4, 2), CTX)
    with pytest.raises(ValueError, match=r"\(h, d\)"):
        get_attack("sf")(torch.zeros(3), CTX)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_no_input_mutation_and_dtype_kept(name: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    honest = torch.randn(5, 4, generator=gen, dtype=dtype)
    params = torch.randn(4, generator=gen, dtype=dtype)
    flipped = torch.randn(4, generator=gen, dtype=dtype)
    before = [t.clone() for t in (honest, params, flipped)]
    ctx = AttackContext(
        n=7,
        f=2,
        aggregator=get_aggregator("cm", f=2),
        lr=0.5,
        params=params,
        honest_loss=lambda theta: (theta**2).sum(-1),
        flipped=flipped,
        generator=gen,
    )
    out = get_attack(name)(honest, ctx)
    assert out.shape == (4,) and out.dtype == dtype
    assert all(torch.equal(a, b) for a, b in zip((honest, params, flipped), before, strict=True))


def test_every_attack_reports_the_honest_spread():
    """``honest-spread`` = max_i ||g_i - gbar|| / ||gbar||: for g = (1, 0), (3, 0), gbar = (2, 0), it is 1 / 2;
    with gbar = 0 it is infinite (every lambda gbar is the same point)."""
    from flwr_byz.attacks import ATTACKS

    honest = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    for name in ("sf", "alie", "minsum", "gaussian"):
        attack = ATTACKS[name]()
        attack(honest, AttackContext(n=3, f=1, generator=torch.Generator().manual_seed(0)))
        assert attack.metrics["honest-spread"] == 0.5, name
    attack = ATTACKS["sf"]()
    attack(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), AttackContext(n=3, f=1))
    assert attack.metrics["honest-spread"] == float("inf")
