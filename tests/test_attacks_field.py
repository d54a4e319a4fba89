"""IPM, optimal ALIE / IPM, Fang and the AGR-tailored attack (issue 24): against ByzFL 0.0.11 where it defines them,
on hand-worked inputs elsewhere, and end to end (settings, engine, the Byzantine node's Flower step).

Conventions that differ from ByzFL (also in docs/attacks-field.md):
* ByzFL is compared on numpy float64 inputs (its torch path converts to float32). Its std is the sample std
  (``var(ddof=1)``, although its docstring writes ``1/n``), as ours.
* Optimal ALIE / IPM: where the objective is flat up to rounding (every copy clipped to the same vector by
  ``clipping``), the strict comparisons of the line search are decided by rounding, and the two implementations
  may keep different scales with equal distances (to 1e-12): those cases compare the distances.
* ByzFL's ``f`` is the number of copies; here it is the round's ``ctx.f`` and the defence is ``ctx.aggregator``.
"""

from __future__ import annotations

import dataclasses
import math

import byzfl
import numpy as np
import pytest
import torch

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attack_traits import TRAITS
from flwr_byz.attacks import ATTACKS, AttackContext, get_attack
from flwr_byz.attacks.optimal import ByzflSearch, speculative_search
from flwr_byz.attacks.tailored import Bisection
from flwr_byz.engine import run
from flwr_byz.results import read_run
from flwr_byz.settings import RunSettings

NEW = ("ipm", "alie-opt", "ipm-opt", "fang", "agr-tailored")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def inputs(h: int, d: int, seed: int) -> np.ndarray:
    """Random float64 honest vectors: a common offset, unequal spreads per coordinate."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=d) * 0.5 + rng.normal(size=(h, d)) * rng.uniform(0.1, 2.0, size=d)


def distance(spec: str, f: int, honest: np.ndarray, a: np.ndarray, **params: object) -> float:
    stack = torch.from_numpy(np.concatenate([honest, np.stack([a] * f)]))
    return float((get_aggregator(spec, f, **params)(stack) - stack[: len(honest)].mean(0)).norm())


# ------------------------------------------------------------------ registry, traits, parameters
def test_the_new_attacks_are_registered_with_their_traits():
    assert set(NEW) <= set(ATTACKS) and set(NEW) <= set(TRAITS)
    assert [name for name in NEW if not ATTACKS[name].shared] == ["fang"]  # its trimmed-mean draws are per node
    assert not any(ATTACKS[name].needs_loss or ATTACKS[name].needs_flipped for name in NEW)


@pytest.mark.parametrize(("name", "params", "match"), [
    ("ipm", {"eps": 0.0}, "eps must be a finite number > 0"),
    ("ipm", {"eps": math.nan}, "eps must be a finite number > 0"),
    ("alie-opt", {"evals": 0}, "evals must be a positive integer"),
    ("alie-opt", {"ratio": 0.5}, r"ratio must be in \(0.5, 1\)"),
    ("ipm-opt", {"delta": 0.0}, "non-zero delta"),
    ("ipm-opt", {"lookahead": 0}, "lookahead must be a positive integer"),
    ("fang", {"variant": "median"}, r"variant must be one of \('auto', 'krum', 'trim'\)"),
    ("fang", {"b": 0.5}, "b must be finite and >= 1"),
    ("fang", {"tol": 0.0}, "tol must be finite and > 0"),
    ("agr-tailored", {"perturbation": "random"}, "perturbation must be one of"),
    ("agr-tailored", {"objective": "loss"}, "objective must be one of"),
    ("agr-tailored", {"gamma_init": -1.0}, "gamma_init > 0"),
    ("agr-tailored", {"gamma": 1.0}, r"unknown parameters \['gamma'\]"),
])
def test_parameters_are_checked_when_the_attack_is_built(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_attack(name, **params)


def test_settings_validation_rejects_bad_parameters_before_training():
    with pytest.raises(ValueError, match="variant must be one of"):
        RunSettings(task="mnist-logreg", aggregation="krum", num_byzantine=1, attack="fang",
                    attack_params="variant=median")
    with pytest.raises(ValueError, match="perturbation must be one of"):
        RunSettings(task="mnist-logreg", aggregation="cm", num_byzantine=1, attack="agr-tailored",
                    attack_params="perturbation=gauss")
    for name in NEW:
        RunSettings(task="mnist-logreg", aggregation="cm", num_byzantine=1, attack=name)


# ------------------------------------------------------------------ IPM, optimal ALIE / IPM = ByzFL 0.0.11
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps", [0.1, 2.0, 7.5])
def test_ipm_equals_byzfl(seed, eps):
    x = inputs(9, 6, seed)
    attack = get_attack("ipm", eps=eps)
    ours = attack(torch.from_numpy(x.copy()), AttackContext(n=12, f=3))
    np.testing.assert_allclose(ours.numpy(), byzfl.InnerProductManipulation(eps)(x.copy()), rtol=1e-15, atol=1e-15)
    assert attack.metrics["ipm-eps"] == eps
    foe = get_attack("foe", eps=1 + eps)(torch.from_numpy(x), AttackContext(n=12, f=3))
    np.testing.assert_allclose(ours.numpy(), foe, rtol=1e-14, atol=1e-14)  # FOE's (1 - eps') gbar is IPM's -eps gbar


# spec and ByzFL's (aggregator, pre-aggregators) for f
BYZFL_RULES = {
    "mean": ({}, lambda f: (byzfl.Average(), [])),
    "tm": ({}, lambda f: (byzfl.TrMean(f), [])),
    "cm": ({}, lambda f: (byzfl.Median(), [])),
    "nnm+tm": ({}, lambda f: (byzfl.TrMean(f), [byzfl.NNM(f)])),
    "nnm+cm": ({}, lambda f: (byzfl.Median(), [byzfl.NNM(f)])),
    "krum": ({"neighbors": "n-f-1"}, lambda f: (byzfl.Krum(f), [])),
    "clipping+mean": ({"c": 2.0}, lambda f: (byzfl.Average(), [byzfl.Clipping(2.0)])),  # ByzFL's default
}
BYZFL_ATTACKS = {"alie-opt": byzfl.Optimal_ALittleIsEnough, "ipm-opt": byzfl.Optimal_InnerProductManipulation}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spec", sorted(BYZFL_RULES))
@pytest.mark.parametrize("name", sorted(BYZFL_ATTACKS))
@pytest.mark.parametrize("lookahead", [1, 3])
def test_optimal_alie_and_ipm_equal_byzfl(name, spec, seed, lookahead):
    h, f, d = 9, 3, 6
    x = inputs(h, d, seed)
    params, theirs_rule = BYZFL_RULES[spec]
    agg, pre = theirs_rule(f)
    theirs = BYZFL_ATTACKS[name](agg, pre_agg_list=pre, f=f)(x.copy())
    attack = get_attack(name, lookahead=lookahead)
    ours = attack(torch.from_numpy(x.copy()), AttackContext(n=h + f, f=f, aggregator=get_aggregator(spec, f, **params)))
    assert attack.metrics[f"{name}-evals"] == 20 if lookahead == 1 else attack.metrics[f"{name}-calls"] < 20
    assert attack.metrics[f"{name}-distance"] == pytest.approx(distance(spec, f, x, ours.numpy(), **params), rel=1e-12)
    if spec == "clipping+mean" and name == "ipm-opt":  # flat up to rounding: equal distances, maybe another tau
        assert distance(spec, f, x, ours.numpy(), **params) == pytest.approx(
            distance(spec, f, x, theirs, **params), rel=1e-12)
    else:
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_optimal_alie_equals_byzfl_with_other_search_settings(seed):
    x = inputs(11, 5, seed)
    theirs = byzfl.Optimal_ALittleIsEnough(byzfl.TrMean(2), pre_agg_list=[], f=2, evals=13, start=-1.0, delta=-3.0,
                                           ratio=0.6)(x.copy())
    attack = get_attack("alie-opt", evals=13, start=-1.0, delta=-3.0, ratio=0.6)
    ours = attack(torch.from_numpy(x.copy()), AttackContext(n=13, f=2, aggregator=get_aggregator("tm", 2)))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-12)


def test_optimal_alie_hand_worked_on_the_mean():
    # Under the mean the distance is f * tau * ||std|| / n: growing in tau, so every probe improves: the expansion
    # doubles the step until the evaluations run out: tau = 10 + 20 + 40 + 80 = 150 after 5 evaluations.
    honest = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]], dtype=torch.float64)
    attack = get_attack("alie-opt", evals=5)
    out = attack(honest, AttackContext(n=5, f=2, aggregator=get_aggregator("mean", 0)))
    assert attack.metrics["alie-opt-tau"] == 150.0
    torch.testing.assert_close(out, honest.mean(0) + 150.0 * honest.std(0))
    assert attack.metrics["alie-opt-distance"] == pytest.approx(2 / 5 * 150 * float(honest.std(0).norm()))


@pytest.mark.parametrize("seed", range(4))
def test_speculation_does_not_change_the_searches(seed):
    """Scoring several steps ahead gives the sequential search's result and path, with fewer calls."""
    rng = np.random.default_rng(seed)

    def score(xs):  # a bumpy function of the scale
        return [float(np.sin(x * 0.37 + seed) * np.exp(-abs(x) / 60)) for x in xs]

    for search in (ByzflSearch(0.0, float(rng.uniform(1, 20)), 0.8, 20),
                   Bisection(float(rng.uniform(1, 20)), 1e-5, improve=True)):
        ends = [speculative_search(search, search.first(), score, depth) for depth in (1, 2, 3, 5)]
        assert len({(end, stats.steps) for end, stats, _ in ends}) == 1
        calls = [stats.calls for _, stats, _ in ends]
        assert calls == sorted(calls, reverse=True) and calls[-1] < calls[0]
        assert ends[0][1].evals == ends[0][1].steps  # depth 1 scores the path only
        assert all(stats.evals <= stats.calls * (2**depth - 1) for (_, stats, _), depth in zip(ends, (1, 2, 3, 5)))


# ------------------------------------------------------------------ Fang
def orthogonal(h: int = 6) -> torch.Tensor:
    """Honest vectors e_1..e_h in R^h: pairwise squared distances 2, gbar = 1/h, s = sign(gbar) = 1."""
    return torch.eye(h, dtype=torch.float64)


@pytest.mark.parametrize("spec", ["krum", "multikrum"])
def test_fang_on_krum_hand_worked(spec):
    # h = d = 6, f = 3, n = 9, Krum with n - f - 2 = 4 neighbours. Copies a = -lambda * 1 lie at squared distance
    # D = 6 lambda^2 + 2 lambda + 1 from every e_i. A copy scores 0 + 0 + 2D; an honest vector 4 * 2 = 8 (D >= 2)
    # or 3D + 2 (D < 2): Krum picks a copy, and MultiKrum keeps the three copies in its 6, iff D < 4, i.e.
    # lambda < (sqrt(76) - 2) / 12 = 0.5598. The paper's bound: 4 sqrt(2) / ((9 - 6 - 1) sqrt(6)) + 1 / sqrt(6)
    # = 1.5630; halved twice, 0.3907, is the first below 0.5598.
    lam0 = 4 * math.sqrt(2) / (2 * math.sqrt(6)) + 1 / math.sqrt(6)
    attack = get_attack("fang")
    out = attack(orthogonal(), AttackContext(n=9, f=3, aggregator=get_aggregator(spec, 3)))
    assert attack.metrics["fang-lambda-max"] == pytest.approx(lam0, rel=1e-12)
    assert attack.metrics["fang-lambda"] == pytest.approx(lam0 / 4, rel=1e-12)
    assert attack.metrics["fang-halvings"] == 2 and attack.metrics["fang-selected"] == attack.metrics["fang-krum"] == 1
    torch.testing.assert_close(out, torch.full((6,), -lam0 / 4, dtype=torch.float64))
    assert attack.metrics["fang-evals"] == 3 and attack.metrics["fang-calls"] == 3
    ahead = get_attack("fang", lookahead=5)  # five halvings per batched call: the same result, in one call
    torch.testing.assert_close(ahead(orthogonal(), AttackContext(n=9, f=3, aggregator=get_aggregator(spec, 3))), out)
    assert ahead.metrics["fang-evals"] == 5 and ahead.metrics["fang-calls"] == 1


def test_fang_krum_sends_the_last_halving_when_krum_never_selects():
    # One copy among spread honest values (1-D): it never has the lowest Krum score.
    honest = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    attack = get_attack("fang")
    out = attack(honest, AttackContext(n=5, f=1, aggregator=get_aggregator("krum", 1)))
    lam = attack.metrics["fang-lambda"]
    assert attack.metrics["fang-selected"] == 0 and 0 < lam < 1e-5 and lam >= 0.5e-5  # the first below tol
    # lambda_0 = min_i (2 nearest) / ((5 - 2 - 1) * 1) + max |g_i| = 2 / 2 + 4 = 5
    assert attack.metrics["fang-lambda-max"] == 5.0 and lam == 5.0 / 2 ** attack.metrics["fang-halvings"]
    torch.testing.assert_close(out, torch.tensor([-lam], dtype=torch.float64))


def test_fang_on_trimmed_mean_and_median_hand_worked():
    # Columns: s = +1 with min 1 > 0 -> e / r in [1/2, 1]; s = +1 with min -1 -> e * r in [-2, -1];
    # s = -1 with max -1 -> e / r in [-1, -1/2]; s = -1 with max 1 -> e * r in [1, 2]; gbar_j = 0 -> 0.
    honest = torch.tensor([[1.0, -1.0, -1.0, 1.0, -1.0],
                           [2.0, 3.0, -3.0, -3.0, 0.0],
                           [4.0, 4.0, -2.0, -4.0, 1.0]], dtype=torch.float64)
    ctx = AttackContext(n=5, f=2, aggregator=get_aggregator("tm", 2), generator=torch.Generator().manual_seed(7))
    out = get_attack("fang")(honest, ctx)
    r = 1 + torch.rand(5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    e = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0], dtype=torch.float64)
    expected = torch.stack([e[0] / r[0], e[1] * r[1], e[2] / r[2], e[3] * r[3], torch.tensor(0.0).double()])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    exact = get_attack("fang", b=1.0)(honest, dataclasses.replace(ctx, aggregator=get_aggregator("cm", 2)))
    torch.testing.assert_close(exact, e, rtol=0, atol=0)  # b = 1: the honest extremes themselves


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spec", ["tm", "cm", "nnm+cm"])
def test_fang_trim_values_lie_beyond_the_honest_extremes(seed, spec):
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(10, 40, generator=gen, dtype=torch.float64)
    honest += torch.randn(40, generator=gen, dtype=torch.float64)
    ctx = AttackContext(n=13, f=3, aggregator=get_aggregator(spec, 3), generator=gen)
    a = get_attack("fang")(honest, ctx)
    s = torch.sign(honest.mean(0))
    low, high = honest.min(0).values, honest.max(0).values
    assert bool(torch.where(s > 0, a <= low, a >= high).all())  # beyond the extreme, opposite to the descent
    e = torch.where(s > 0, low, high)
    assert bool(((a - e).abs() <= e.abs() + 1e-12).all())  # at most a factor b = 2 (or 1/2) from it
    b = get_attack("fang")(honest, dataclasses.replace(ctx, generator=torch.Generator().manual_seed(seed + 100)))
    assert not torch.equal(a, b)  # each Byzantine node draws its own values


def test_fang_refuses_rules_it_has_no_variant_for():
    honest = orthogonal()
    for spec in ("gm", "mean", "bulyan", "cc"):
        ctx = AttackContext(n=7, f=1, aggregator=get_aggregator(spec, 1))
        with pytest.raises(ValueError, match=rf"no variant for the defended rule '{spec}'.*krum, multikrum, tm, cm"):
            get_attack("fang")(honest, ctx)
    with pytest.raises(ValueError, match="selects no rows"):
        get_attack("fang", variant="krum")(honest, AttackContext(n=7, f=1, aggregator=get_aggregator("cm", 1)))
    for spec in ("bucketing+krum", "nnm+krum"):
        with pytest.raises(ValueError, match=r"mixes or regroups the rows.*variant=trim"):
            get_attack("fang")(honest, AttackContext(n=7, f=1, aggregator=get_aggregator(spec, 1)))
    with pytest.raises(ValueError, match="not an Aggregation"):
        get_attack("fang")(honest, AttackContext(n=7, f=1, aggregator=lambda x: x.mean(-2)))
    forced = get_attack("fang", variant="trim")  # the trimmed-mean attack sent against any rule
    forced(honest, AttackContext(n=7, f=1, aggregator=get_aggregator("gm", 1), generator=torch.Generator()))
    assert forced.metrics["fang-krum"] == 0
    bulyan = get_attack("fang", variant="krum")
    bulyan(torch.randn(9, 5, dtype=torch.float64) + 1, AttackContext(n=11, f=2, aggregator=get_aggregator("bulyan", 2)))
    assert bulyan.metrics["fang-krum"] == 1


def test_fang_on_a_rule_without_a_variant_fails_before_training():
    with pytest.raises(ValueError, match="no variant for the defended rule 'gm'"):
        RunSettings(task="mnist-logreg", aggregation="gm", num_byzantine=1, attack="fang", rounds=1, seed=1)
    RunSettings(task="mnist-logreg", aggregation="gm", num_byzantine=1, attack="fang", attack_params="variant=trim")


# ------------------------------------------------------------------ AGR-tailored
def test_tailored_on_krum_keeps_the_largest_selected_gamma():
    # e_1..e_6 as above: gbar = 1/6, p = unit = 1/sqrt(6); a = c * 1 with c = 1/6 - gamma / sqrt(6), at squared
    # distance D = 6c^2 - 2c + 1 from each e_i; Krum selects a copy iff D < 4 iff c > (2 - sqrt(76)) / 12, i.e.
    # gamma < sqrt(456) / 12 = 1.77951.
    star = math.sqrt(456) / 12
    for spec in ("krum", "multikrum"):
        attack = get_attack("agr-tailored")
        out = attack(orthogonal(), AttackContext(n=9, f=3, aggregator=get_aggregator(spec, 3)))
        gamma = attack.metrics["agr-tailored-gamma"]
        assert star - 2e-5 < gamma < star and attack.metrics["agr-tailored-selection"] == 1
        torch.testing.assert_close(out, torch.full((6,), 1 / 6 - gamma / math.sqrt(6), dtype=torch.float64))
        # |gamma_k - succ| = 10 / 2^k after k probes: the search probes while 10 / 2^k > tol, k = 0..19
        assert attack.metrics["agr-tailored-steps"] == 20


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("spec", "f", "perturbation"), [("krum", 3, "unit"), ("multikrum", 3, "std"),
                                                          ("clipping+krum", 2, "sign"), ("bulyan", 2, "unit")])
def test_tailored_selection_is_the_largest_gamma_that_keeps_every_copy(spec, f, perturbation, seed):
    gen = torch.Generator().manual_seed(seed)
    h = 9
    honest = torch.randn(h, 30, generator=gen, dtype=torch.float64) + 0.3
    order = torch.randperm(h + f, generator=gen)
    rule = get_aggregator(spec, f)
    ctx = AttackContext(n=h + f, f=f, aggregator=rule, order=order)
    attack = get_attack("agr-tailored", perturbation=perturbation)
    a = attack(honest, ctx)
    gamma = attack.metrics["agr-tailored-gamma"]
    # The copies' rows in the order the defence sees them, and what the rule keeps.
    from flwr_byz.attacks.tailored import selected_rows
    def kept(vector):
        stack = torch.cat([honest, vector.expand(f, -1)])[order]
        rows = selected_rows(rule, stack[None])[0].tolist()
        return sum(int(order[r]) >= h for r in rows), len(rows)
    got, places = kept(a)
    assert 0 < gamma < 20 and got == min(f, places)
    unit = (a - honest.mean(0)) / gamma
    assert kept(honest.mean(0) + (gamma + 4e-5) * unit)[0] < min(f, places)  # a little farther loses a copy
    same = get_attack("agr-tailored", perturbation=perturbation)
    same(honest, AttackContext(n=h + f, f=f, aggregator=rule))  # the rule is permutation invariant
    assert same.metrics["agr-tailored-gamma"] == gamma


@pytest.mark.parametrize(("spec", "saturates", "dist"), [
    # 1-D honest 1..5, f = 2, gbar = 3, a = 3 - gamma. TM (drop 2 each side, mean of 3): distance 2 gamma / 3
    # up to gamma = 1, (1 + gamma) / 3 up to 2, then 1 (the copies are trimmed). CM (4th of 7): gamma up to 1, then 1.
    ("tm", 2.0, lambda g: 2 * g / 3 if g <= 1 else min((1 + g) / 3, 1.0)),
    ("cm", 1.0, lambda g: min(g, 1.0)),
])
def test_tailored_on_tm_and_cm_moves_as_far_as_the_search_says(spec, saturates, dist):
    honest = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=torch.float64)
    ctx = AttackContext(n=7, f=2, aggregator=get_aggregator(spec, 2))
    # From gamma_init = saturates / 2 every probe below the saturation point improves: the search climbs to it
    # (within tol) and stops there, where the rule's output stops moving.
    attack = get_attack("agr-tailored", gamma_init=saturates / 2)
    out = attack(honest, ctx)
    gamma = attack.metrics["agr-tailored-gamma"]
    assert saturates - 2e-5 < gamma < saturates and attack.metrics["agr-tailored-selection"] == 0
    torch.testing.assert_close(out, torch.tensor([3.0 - gamma], dtype=torch.float64))
    assert attack.metrics["agr-tailored-distance"] == pytest.approx(dist(gamma), rel=1e-12)
    # From the paper's gamma_init = 10 the first probe is already saturated and no later probe improves on it:
    # the authors' search keeps 10.
    paper = get_attack("agr-tailored")
    torch.testing.assert_close(paper(honest, ctx), torch.tensor([-7.0], dtype=torch.float64))
    assert paper.metrics["agr-tailored-gamma"] == 10.0 and paper.metrics["agr-tailored-distance"] == 1.0


def test_tailored_perturbations_and_objective_checks():
    honest = torch.tensor([[1.0, -2.0], [3.0, -2.0], [5.0, 4.0]], dtype=torch.float64)
    gbar, std = honest.mean(0), honest.std(0)
    ctx = AttackContext(n=5, f=2, aggregator=get_aggregator("mean", 0))
    for kind, p in (("unit", gbar / gbar.norm()), ("std", std), ("sign", torch.sign(gbar))):
        attack = get_attack("agr-tailored", perturbation=kind, gamma_init=1.0)
        out = attack(honest, ctx)  # the mean moves with gamma: every probe improves, gamma -> 2 gamma_init
        gamma = attack.metrics["agr-tailored-gamma"]
        assert 2 - 2e-5 < gamma < 2
        torch.testing.assert_close(out, gbar - gamma * p)
    with pytest.raises(ValueError, match="selects no rows"):
        get_attack("agr-tailored", objective="selection")(honest, ctx)
    with pytest.raises(ValueError, match="mixes or regroups the rows"):
        get_attack("agr-tailored", objective="selection")(orthogonal(), AttackContext(
            n=9, f=3, aggregator=get_aggregator("nnm+krum", 3)))
    forced = get_attack("agr-tailored", objective="distance")
    forced(orthogonal(), AttackContext(n=9, f=3, aggregator=get_aggregator("krum", 3)))
    assert forced.metrics["agr-tailored-selection"] == 0
    mixed = get_attack("agr-tailored")  # NNM's rows belong to no node: auto maximises the distance
    mixed(orthogonal(), AttackContext(n=9, f=3, aggregator=get_aggregator("nnm+krum", 3)))
    assert mixed.metrics["agr-tailored-selection"] == 0


# ------------------------------------------------------------------ every new attack: dtypes, devices, inputs
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NEW)
def test_dtype_device_and_inputs_kept(name, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    honest = torch.randn(8, 16, generator=gen, dtype=dtype, device=device) + 0.2
    before = honest.clone()
    spec = "multikrum" if name == "fang" else "tm"
    ctx = AttackContext(n=11, f=3, aggregator=get_aggregator(spec, 3), generator=gen,
                        order=torch.randperm(11, generator=gen, device=device))
    attack = get_attack(name)
    out = attack(honest, ctx)
    assert out.shape == (16,) and out.dtype == dtype and out.device == honest.device
    assert torch.equal(honest, before) and bool(out.isfinite().all())
    assert all(isinstance(v, float) and not math.isnan(v) for v in attack.metrics.values())


# ------------------------------------------------------------------ end to end
ENGINE = [("ipm", "cm", "ipm-eps"), ("alie-opt", "tm", "alie-opt-tau"), ("ipm-opt", "nnm+cm", "ipm-opt-tau"),
          ("fang", "krum", "fang-lambda"), ("agr-tailored", "multikrum", "agr-tailored-gamma")]


@pytest.mark.parametrize(("name", "spec", "metric"), ENGINE)
def test_engine_runs_each_new_attack_with_its_metrics(name, spec, metric, tmp_path):
    settings = RunSettings(task="mnist-logreg", aggregation=spec, num_byzantine=1, attack=name, rounds=2,
                           eval_every=2, eval_size=200, seed=1, results_dir=str(tmp_path))
    header, rows = read_run(run(settings, nodes=6))
    assert header["attack"] == name and [r["round"] for r in rows] == [0, 2]
    assert metric in rows[-1] and math.isfinite(rows[-1][metric]) and "attack-seconds" in rows[-1]
    assert math.isfinite(rows[-1]["test-loss"])


def test_the_byzantine_nodes_flower_step_sends_the_attack():
    """What a Byzantine ClientApp computes for the hook's request: ``theta - gamma * a``, with the attack's metrics."""
    from flwr_byz.flower.attacker import byzantine_model
    from flwr_byz.flower.protocol import AttackRequest
    from flwr_byz.flower.records import to_record

    honest = orthogonal().float()
    state = {"w": torch.arange(6, dtype=torch.float32)}
    order = [3, 0, 7, 1, 8, 2, 4, 6, 5]
    request = AttackRequest(server_round=1, gamma=0.5, server_lr=1.0, aggregation="krum", aggregation_f=3,
                            aggregation_params={}, num_nodes=9, num_attackers=3, order=order,
                            model=to_record(state), honest=honest)
    for name in NEW:
        attack = get_attack(name)
        reply = byzantine_model(request, attack, seed=0, rank=6)
        expected = get_attack(name)(honest, AttackContext(n=9, f=3, aggregator=get_aggregator("krum", 3),
                                                          order=torch.tensor(order)))
        sent = reply.model.to_torch_state_dict()["w"]
        torch.testing.assert_close(sent, state["w"] - 0.5 * expected)  # Fang's Krum variant is deterministic
        assert "attack-seconds" in reply.metrics and set(attack.metrics) <= set(reply.metrics)
        assert name != "fang" or attack.metrics["fang-selected"] == 1
