"""JUMP: the objective, both solvers, and the paper's 2D study (section 4, Figure 1)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import AttackContext, GlobalSearch, JumpObjective, Powell, get_attack
from flwr_byz.attacks import span
from flwr_byz.aggregation.nnm import nearest_neighbours
from flwr_byz.aggregation.sorting import order_statistics
from flwr_byz.attacks.jump import FINGERPRINT_STRIDE, fingerprint
from flwr_byz.attacks.span import orthonormal_span, span_aggregation
from flwr_byz.tasks import SampleLoss, get_task
from flwr_byz.tasks.models import linear_logits

Loss = Callable[[Tensor], Tensor]


def softmax_regression(gen: torch.Generator, p: int = 4, c: int = 3, m: int = 64) -> tuple[int, Loss]:
    """Cross-entropy of a linear classifier on random data; theta = (W (p x c), b (c))."""
    x, y = torch.randn(m, p, generator=gen, dtype=torch.float64), torch.randint(c, (m,), generator=gen)

    def loss(theta: Tensor) -> Tensor:
        w, b = theta[:, : p * c].reshape(-1, p, c), theta[:, p * c :]
        logits = torch.einsum("mp,kpc->kcm", x, w) + b[:, :, None]
        return torch.nn.functional.cross_entropy(logits, y.expand(len(theta), m), reduction="none").mean(1)

    return p * c + c, loss


def quadratic(gen: torch.Generator, d: int = 6) -> tuple[int, Loss]:
    """``0.5 (theta - c)^T A (theta - c)`` with a random PSD ``A``."""
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    a, c = a @ a.T / d, torch.randn(d, generator=gen, dtype=torch.float64)
    return d, lambda theta: 0.5 * torch.einsum("ki,ij,kj->k", theta - c, a, theta - c)


def random_problem(seed: int, spec: str, task: str) -> tuple[Tensor, AttackContext]:
    """Honest vectors = the true gradient plus heterogeneity noise; n in 7..15, f in 1..3."""
    gen = torch.Generator().manual_seed(seed)
    d, loss = (softmax_regression if task == "softmax" else quadratic)(gen)
    n, f = 7 + seed % 9, 1 + seed % 3
    theta = torch.randn(d, generator=gen, dtype=torch.float64)
    grad = torch.func.grad(lambda t: loss(t[None])[0])(theta)
    honest = grad + 0.5 * grad.norm() * torch.randn(n - f, d, generator=gen, dtype=torch.float64) / d**0.5
    lr = float(torch.empty(1, dtype=torch.float64).uniform_(0.1, 2.0, generator=gen))
    ctx = AttackContext(n=n, f=f, aggregator=get_aggregator(spec, f=f), lr=lr, params=theta, honest_loss=loss)
    return honest, ctx


def test_global_search_matches_or_beats_powell_on_random_problems() -> None:
    """Global >= Powell (from lambda = 1) up to 1% relative on every problem, and clearly better on average.

    Robust rules make phi a sawtooth in lambda (each change of a nearest-neighbour
    set or of Krum's choice is a jump), here with teeth narrower than 0.01 near
    lambda = 1. Both solvers end on the top of some tooth; the global search finds
    the better teeth but, bisecting from a coarse grid, may stop on a slightly lower
    one than Powell's. The global search also scores far fewer lambdas.
    """
    gaps, evals = [], []
    for seed, spec, task in itertools.product(range(10), ["cm", "gm", "krum", "nnm+cm"], ["softmax", "quadratic"]):
        honest, ctx = random_problem(seed, spec, task)
        phi = JumpObjective(honest, ctx, max_batch_elems=2**20)
        _, best = GlobalSearch()(phi, phi.spread)
        scored = phi.evals
        _, local = Powell()(phi, phi.spread)
        gaps.append((best - local) / max(1.0, abs(local)))
        evals.append((scored, phi.evals - scored))
    gap = np.array(gaps)
    assert gap.min() >= -1e-2, sorted(gap)[:3]
    assert np.mean(gap > 1e-6) > 0.2 and gap.mean() > 0.02
    global_evals, powell_evals = np.mean(evals, axis=0)
    assert global_evals < 0.7 * powell_evals  # about 36 against 54


@pytest.mark.parametrize(("solver", "params"), [("global", {"rounds": 30}), ("powell", {})])
def test_recovers_a_known_maximiser(solver: str, params: dict[str, int]) -> None:
    # Mean rule: theta' = theta - lr * gbar * (h + f lambda) / n; the loss -||theta' - c||^2
    # with c built from lambda0 = 3.7 peaks at lambda = 3.7 with value 0.
    n, f, lr, lam0 = 8, 3, 0.5, 3.7
    honest = torch.randn(n - f, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta, gbar = torch.zeros(4, dtype=torch.float64), honest.mean(0)
    target = theta - lr * gbar * (n - f + f * lam0) / n
    ctx = AttackContext(
        n=n,
        f=f,
        aggregator=get_aggregator("mean", f=f),
        lr=lr,
        params=theta,
        honest_loss=lambda t: -((t - target) ** 2).sum(-1),
    )
    attack = get_attack("jump", solver=solver, **params)
    out = attack(honest, ctx)
    assert attack.metrics["jump-lambda"] == pytest.approx(lam0, abs=1e-4)
    assert attack.metrics["jump-loss"] == pytest.approx(0.0, abs=1e-8)
    assert torch.equal(out, attack.metrics["jump-lambda"] * gbar)
    assert set(attack.metrics) == {"jump-lambda", "jump-loss", "jump-ties", "jump-flat", "jump-evals", "jump-losses",
                                   "jump-calls", "jump-finalists", "jump-setup-seconds", "jump-aggregate-seconds",
                                   "jump-loss-seconds", "honest-spread"}


def test_tails_extend_to_the_cap_on_a_monotone_objective() -> None:
    # Mean rule and a loss increasing along -gbar: the larger lambda, the higher the loss.
    honest = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    gbar = honest.mean(0)
    ctx = AttackContext(
        n=3,
        f=1,
        aggregator=get_aggregator("mean", f=1),
        params=torch.zeros(2, dtype=torch.float64),
        honest_loss=lambda t: -(t @ gbar),
    )
    attack = get_attack("jump", lam_cap=1e9)
    attack(honest, ctx)
    assert attack.metrics["jump-lambda"] == 1e9


def test_grid() -> None:
    grid = GlobalSearch(lam_min=0.1, lam_max=10.0, per_decade=2, inlier_points=5, inlier_width=1.0).grid(0.5)
    expected = [-10, -(10**0.5), -1, -(10**-0.5), -0.1, 0, 0.1, 10**-0.5, 0.5, 0.75, 1, 1.25, 1.5, 10**0.5, 10]
    assert np.allclose(grid, expected)
    # Log-spaced points only outside the inlier range 1 +- 2 (here [-1, 3]).
    grid = GlobalSearch(lam_min=0.1, lam_max=10.0, per_decade=2, inlier_points=5, inlier_width=1.0).grid(2.0)
    assert np.allclose(grid, [-10, -(10**0.5), -1, 0, 1, 2, 3, 10**0.5, 10])


def test_jump_input_errors() -> None:
    honest, ctx = random_problem(0, "cm", "quadratic")
    for missing in ("honest_loss", "aggregator", "params"):
        bad = AttackContext(**{**ctx.__dict__, missing: None})
        with pytest.raises(ValueError, match=f"ctx needs {missing}"):
            get_attack("jump")(honest, bad)
    with pytest.raises(ValueError, match=r"ctx\.params has shape"):
        get_attack("jump")(honest, AttackContext(**{**ctx.__dict__, "params": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"\(k, d\) -> \(k,\)"):
        get_attack("jump")(honest, AttackContext(**{**ctx.__dict__, "honest_loss": lambda t: t}))
    with pytest.raises(ValueError, match="lam_min < lam_max"):
        get_attack("jump", lam_min=10.0, lam_max=1.0)


SPAN_SPECS = [
    ("mean", {}),
    ("cm", {}),
    ("tm", {}),
    ("gm", {}),
    ("gm", {"start": "mean", "nu": 1e-3, "tol": 1e-6}),
    ("krum", {}),
    ("krum", {"neighbors": "n-f-1"}),
    ("multikrum", {"select": 3}),
    ("nnm+cm", {}),
    ("nnm+tm", {}),
    ("nnm+gm", {}),
    ("nnm+krum", {}),
    ("nnm+multikrum", {}),
    ("clipping+nnm+cm", {"c": 6.0}),
    ("clipping+gm", {"c": 6.0}),
]


@pytest.mark.parametrize(("spec", "params"), SPAN_SPECS)
@pytest.mark.parametrize(("n", "f", "rule_f"), [(15, 3, 3), (10, 3, 3), (8, 2, 2), (9, 3, 2)])
def test_span_aggregation_matches_the_rule_on_every_candidate(
    spec: str, params: dict[str, object], n: int, f: int, rule_f: int
) -> None:
    # n odd and even; f copies, the rule assuming rule_f. Ties-free random data; lambda = 0
    # is left out (clipped honest vectors would tie around a zero copy).
    gen, d = torch.Generator().manual_seed(n * f), 40
    mean = torch.randn(d, generator=gen, dtype=torch.float64)
    honest = mean + torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    aggregator = get_aggregator(spec, f=rule_f, **params)
    lams = torch.cat([torch.linspace(-6, 6, 36, dtype=torch.float64), torch.tensor([-1e3, 1e3], dtype=torch.float64)])
    fast = span_aggregation(aggregator, honest, f)
    assert fast is not None
    for lam, out in zip(lams, fast(lams), strict=True):
        expected = aggregator(torch.cat([honest, (lam * honest.mean(0)).expand(f, d)]))
        assert torch.allclose(out, expected, rtol=1e-9, atol=1e-9 * float(honest.abs().max()))


@pytest.mark.parametrize("case", ["random", "ill-conditioned", "duplicate row", "float32"])
def test_orthonormal_span_reconstructs_the_honest_vectors(case: str) -> None:
    # C B = H and B B^T = I to float64 rounding, whichever factorisation runs: Cholesky QR on the
    # well-conditioned stacks, Householder where cond(H) = 1e5 would leave Cholesky QR off by ~1e-6.
    gen = torch.Generator().manual_seed(5)
    honest = torch.randn(12, 3000, generator=gen, dtype=torch.float64)
    if case == "ill-conditioned":
        honest[11] = honest[10] + 1e-5 * honest[11]
    elif case == "duplicate row":
        honest[4] = honest[1]
    elif case == "float32":
        honest = honest.float()
    basis, coords = orthonormal_span(honest)
    assert basis.dtype == coords.dtype == torch.float64
    assert torch.allclose(basis @ basis.T, torch.eye(len(basis), dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(coords @ basis, honest.double(), rtol=0, atol=1e-12 * float(honest.abs().max()))


def test_span_aggregation_falls_back_for_other_aggregators() -> None:
    honest = torch.randn(6, 4, dtype=torch.float64)
    others = [get_aggregator("bucketing+cm", f=2), get_aggregator("gm", f=2, start="median"), lambda x: x.mean(-2)]
    assert all(span_aggregation(agg, honest, 2) is None for agg in others)
    assert span_aggregation(get_aggregator("cm", f=2), honest, 0) is None  # no copies
    with pytest.raises(ValueError, match="KRUM needs"):
        span_aggregation(get_aggregator("krum", f=2), honest[:4], 2)  # n = 6 < 2f + 3: the rule's own check


@pytest.mark.parametrize("spec", ["cm", "nnm+cm", "nnm+gm", "krum"])
def test_objective_is_the_same_in_the_span_and_black_box(spec: str) -> None:
    honest, ctx = random_problem(4, spec, "softmax")
    black_box = AttackContext(**{**ctx.__dict__, "aggregator": lambda x: ctx.aggregator(x)})  # type: ignore[misc]
    fast, slow = JumpObjective(honest, ctx, 2**20), JumpObjective(honest, black_box, 2**20)
    assert fast.span is not None and slow.span is None
    lams = np.concatenate([np.linspace(-5, 5, 41), [-1e3, 1e3]])
    assert np.allclose(fast(lams), slow(lams), rtol=1e-9, atol=0)


def test_equal_aggregates_are_scored_once() -> None:
    # CM without pre-aggregation saturates: far enough, every lambda of one sign gives the same aggregate.
    honest, ctx = random_problem(4, "cm", "softmax")
    phi = JumpObjective(honest, ctx, 2**20)
    values = phi(np.array([1e6, 1e7, 1e8, -1e6, -1e7, 0.5]))
    assert (phi.evals, phi.losses, phi.calls) == (6, 3, 1)
    assert values[0] == values[1] == values[2] and values[3] == values[4]
    assert len(set(values.tolist())) == 3


@pytest.mark.parametrize("n", range(1, 14))
def test_sorting_network_sorts_every_zero_one_input(n: int) -> None:
    # The 0-1 principle: a comparator network that sorts all 2^n inputs of 0s and 1s sorts every input.
    bits = ((torch.arange(2**n)[:, None] >> torch.arange(n)) & 1).double()
    out = torch.stack(list(order_statistics(bits.T, range(n)).values()))
    assert bool((out[1:] >= out[:-1]).all()) and torch.equal(out.sum(0), bits.sum(1))


# The paper's 2D study: n = 3, f = 1, CM, L_i = 1 - b_i exp(-||theta - z_i||^2), exact gradients.
Z = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
B = torch.tensor([0.8, 1.2], dtype=torch.float64)
MINIMUM = torch.tensor([1.0, 0.0], dtype=torch.float64)


def toy_loss(theta: Tensor) -> Tensor:
    """Honest loss ``L_H = (L_1 + L_2) / 2`` of ``(k, 2)`` parameters."""
    return (1 - B * torch.exp(-((theta[:, None, :] - Z) ** 2).sum(-1))).mean(-1)


def toy_gradients(theta: Tensor) -> Tensor:
    """``grad L_i(theta) = 2 b_i exp(-||theta - z_i||^2) (theta - z_i)``, stacked ``(2, 2)``."""
    diff = theta - Z
    return (2 * B * torch.exp(-(diff**2).sum(-1)))[:, None] * diff


def toy_trajectory(solver: str, steps: int = 100, lr: float = 1.2) -> Tensor:
    """Robust D-SGD with CM from ``theta_1 = (1.75, -0.2)`` under JUMP; ``(steps + 1, 2)``."""
    agg, attack = get_aggregator("cm", f=1), get_attack("jump", solver=solver)
    theta = torch.tensor([1.75, -0.2], dtype=torch.float64)
    path = [theta]
    for _ in range(steps):
        honest = toy_gradients(theta)
        ctx = AttackContext(n=3, f=1, aggregator=agg, lr=lr, params=theta, honest_loss=toy_loss)
        theta = theta - lr * agg(torch.cat([honest, attack(honest, ctx)[None]]))
        path.append(theta)
    return torch.stack(path)


def test_2d_global_jump_resists_jumps_over_the_minimum_and_escapes() -> None:
    path = toy_trajectory("global")
    loss = toy_loss(path)
    right = path[:, 0] > 1
    jump = int(torch.nonzero(right[:-1] & ~right[1:])[0])  # first step crossing x = 1 leftwards
    assert jump > 10  # it resists descent first
    (x0, y0), (x1, y1) = path[jump].tolist(), path[jump + 1].tolist()
    assert abs(y0 + (1 - x0) * (y1 - y0) / (x1 - x0)) < 0.1  # the jump passes right over (1, 0)
    assert float((path - MINIMUM).norm(dim=1).min()) > 0.1  # never near the global minimum
    assert not bool(right[jump + 1 :].any())  # it does not come back
    assert float(loss[-1]) > 0.6 > float(toy_loss(MINIMUM[None])[0]) + 0.2
    powell = toy_trajectory("powell")
    # Powell from lambda = 1 oscillates across the minimum instead (DESIGN, section 3) ...
    side = (powell[-20:, 0] > 1).int()
    assert bool((side[1:] != side[:-1]).all())
    # ... and keeps the honest loss lower along the way.
    assert float(loss.mean()) > float(toy_loss(powell).mean()) + 0.05


@pytest.mark.parametrize("spec", ["cm", "tm", "nnm+cm", "nnm+tm", "clipping+nnm+cm"])
def test_blocked_coordinate_rules_are_exact_with_ties_and_saturation(spec: str, monkeypatch) -> None:
    # Blocks of 16 of d = 40 coordinates (two full, one partial); integer-valued honest coordinates 1..39
    # and a duplicated row: exact ties among honest values, and with the copies at lambda = +-9 (9 gbar
    # is integer); far lambdas where CM/TM saturate. The fast path must equal the batched rule to rounding.
    # Distances must not tie at NNM's cut: a tie of distances in R^d need not be one in rounded span
    # coordinates (which side wins then depends on the machine's rounding), so coordinate 0 separates the
    # rows' distances (lambda = 0 is left out for NNM: clipped rows tie in distance with a zero copy).
    monkeypatch.setattr(span, "BLOCK", 16)
    gen, f, d = torch.Generator().manual_seed(7), 3, 40
    honest = torch.randint(-2, 3, (9, d), generator=gen).double()
    honest[:, 0] += torch.arange(9, dtype=torch.float64) * 2**-6
    honest[4] = honest[1]
    aggregator = get_aggregator(spec, f=f, **({"c": 6.0} if spec.startswith("clipping") else {}))
    lams = torch.tensor([-1e6, -50.0, -9.0, -1.0, 0.5, 1.0, 2.0, 4.5, 9.0, 50.0, 1e6], dtype=torch.float64)
    if "nnm" not in spec:
        lams = torch.cat([lams, torch.zeros(1, dtype=torch.float64)])
    fast = span_aggregation(aggregator, honest, f)
    assert fast is not None
    expected = aggregator(torch.cat([honest.expand(len(lams), -1, -1),
                                     (lams[:, None] * honest.mean(0)).unsqueeze(1).expand(-1, f, -1)], dim=1))
    scale = (1 + lams.abs()[:, None]) * float(honest.abs().max())  # the lift rounds relative to the copies' norm
    assert bool(((fast(lams) - expected).abs() <= 1e-13 * scale).all())


def test_repeated_aggregates_are_scored_once_across_calls() -> None:
    honest, ctx = random_problem(4, "cm", "softmax")
    calls = []
    counted = AttackContext(**{**ctx.__dict__, "honest_loss": lambda t: calls.append(len(t)) or ctx.honest_loss(t)})
    phi = JumpObjective(honest, counted, 2**20)
    first = phi(np.array([0.5, 1e6]))
    second = phi(np.array([1e7, 0.5, -1e6]))  # 1e7 and 0.5 were seen (1e7 as the same saturated aggregate)
    assert calls == [2, 1] and (phi.evals, phi.losses, phi.calls) == (5, 3, 2)
    assert second[0] == first[1] and second[1] == first[0]
    assert sorted(s.lam for same in phi.scored.values() for s in same) == [-1e6, 0.5, 1e6]  # smallest |lambda| each


def test_aggregates_sharing_a_fingerprint_are_told_apart() -> None:
    # The rule's aggregate differs between signs of lambda only in entry 1, which the fingerprint does not
    # sample: two fingerprints-equal, distinct aggregates, each scored once and with its own value.
    d = 3 * FINGERPRINT_STRIDE

    def rule(x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[:-2] + x.shape[-1:], dtype=x.dtype)
        out[..., 1] = (x[..., -1, 0] > 0).to(x.dtype)
        return out

    honest = torch.ones(4, d, dtype=torch.float64)
    ctx = AttackContext(n=5, f=1, aggregator=rule, lr=1.0, params=torch.zeros(d, dtype=torch.float64),
                        honest_loss=lambda t: t[:, 1] - t[:, 0])
    phi = JumpObjective(honest, ctx, 2**20)
    values = phi(np.array([1.0, -1.0, 2.0, -2.0]))
    assert fingerprint(rule(torch.ones(1, 5, d))[0]) == fingerprint(rule(-torch.ones(1, 5, d))[0])
    assert phi.losses == 2 and values.tolist() == [-1.0, 0.0, -1.0, 0.0]


def mean_rule_problem(lam0: float, n: int = 8, f: int = 3, lr: float = 0.5) -> tuple[Tensor, AttackContext, Loss]:
    """Mean rule: ``theta' = theta - lr gbar (h + f lambda) / n``; ``L = -||theta' - c||^2`` peaks at ``lam0``."""
    honest = torch.randn(n - f, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta, gbar = torch.zeros(4, dtype=torch.float64), honest.mean(0)

    def peaked(lam: float) -> Loss:
        target = theta - lr * gbar * (n - f + f * lam) / n
        return lambda t: -((t - target) ** 2).sum(-1)

    ctx = AttackContext(n=n, f=f, aggregator=get_aggregator("mean", f=f), lr=lr, params=theta, honest_loss=peaked(lam0))
    return honest, ctx, peaked


def test_screened_search_rescores_its_finalists_with_the_honest_loss() -> None:
    # The screening estimate peaks at 2.0, the honest loss at 3.7: the search climbs the screen,
    # then the finalists (its best distinct aggregates) are rescored and the best of them by L_H wins.
    honest, ctx, peaked = mean_rule_problem(3.7)
    screened = AttackContext(**{**ctx.__dict__, "screening_loss": peaked(2.0)})
    for finalists in (1, 3):
        attack = get_attack("jump", finalists=finalists, rounds=30)
        out = attack(honest, screened)
        lam = attack.metrics["jump-lambda"]
        assert attack.metrics["jump-finalists"] == finalists
        assert attack.metrics["jump-loss"] == pytest.approx(float(ctx.honest_loss((ctx.params - ctx.lr * get_aggregator(
            "mean", f=3)(torch.cat([honest, out.expand(3, -1)])))[None])[0]), rel=1e-12)  # L_H, not the screen
        assert torch.equal(out, lam * honest.mean(0))
    assert 2.0 < lam < 3.7  # with 3 finalists, the one nearest 3.7 of the points scored around 2.0
    single = get_attack("jump", finalists=1, rounds=30)
    single(honest, screened)
    assert single.metrics["jump-lambda"] == pytest.approx(2.0, abs=1e-4) and single.metrics["jump-loss"] < attack.metrics["jump-loss"]


def test_a_subsampled_screen_reaches_the_full_samples_damage() -> None:
    # Softmax regression on 512 points: screening every candidate on 64 of them (the same points for
    # all) and rescoring the finalists on all 512 reaches the full search's gain over SF, 99% on average.
    shares = []
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        p, c, m = 5, 4, 512
        x, y = torch.randn(m, p, generator=gen, dtype=torch.float64), torch.randint(c, (m,), generator=gen)

        def loss_on(rows: slice) -> Loss:
            def loss(theta: Tensor) -> Tensor:
                w, b = theta[:, : p * c].reshape(-1, p, c), theta[:, p * c :]
                logits = torch.einsum("mp,kpc->kcm", x[rows], w) + b[:, :, None]
                return torch.nn.functional.cross_entropy(logits, y[rows].expand(len(theta), -1), reduction="none").mean(1)
            return loss

        d, full = p * c + c, loss_on(slice(None))
        theta = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
        grad = torch.func.grad(lambda t: full(t[None])[0])(theta)
        honest = grad + grad.norm() * torch.randn(9, d, generator=gen, dtype=torch.float64) / d**0.5
        ctx = AttackContext(n=12, f=3, aggregator=get_aggregator("nnm+cm", f=3), lr=1.0, params=theta, honest_loss=full)
        whole, screened = get_attack("jump"), get_attack("jump")
        whole(honest, ctx)
        screened(honest, AttackContext(**{**ctx.__dict__, "screening_loss": loss_on(slice(0, 64))}))
        sf = float(full((theta - ctx.aggregator(torch.cat([honest, -honest.mean(0).expand(3, -1)])))[None])[0])
        gain = whole.metrics["jump-loss"] - sf
        assert gain > 0
        shares.append((screened.metrics["jump-loss"] - sf) / gain)
    assert min(shares) >= 0.95 and np.mean(shares) >= 0.99, shares


@pytest.mark.parametrize("seed", range(4))
def test_breakpoints_are_exactly_where_nnm_changes_its_neighbours(seed: int) -> None:
    honest, ctx = random_problem(seed, "nnm+cm", "softmax")
    fast = span_aggregation(ctx.aggregator, honest, ctx.f)
    breaks = fast.breakpoints()
    assert breaks is not None and len(breaks) > 0 and np.all(np.diff(breaks) > 0)
    rbar = fast.coords.mean(0)

    def configuration(lams: np.ndarray) -> Tensor:
        copies = (torch.as_tensor(lams)[:, None] * rbar).unsqueeze(1).expand(-1, ctx.f, -1)
        stacks = torch.cat([fast.coords.expand(len(lams), -1, -1), copies], dim=1)
        return nearest_neighbours(stacks, ctx.n - ctx.f).sort(dim=-1).values

    grid = np.linspace(breaks.min() - 1, breaks.max() + 1, 4001)
    config = configuration(grid)
    changed = np.flatnonzero((config[1:] != config[:-1]).flatten(1).any(1).numpy())
    for i in changed:  # every change seen on the grid has a breakpoint in its interval
        assert np.any((breaks > grid[i]) & (breaks < grid[i + 1]))
    step = 1e-9 * np.maximum(1, np.abs(breaks))
    assert bool((configuration(breaks - step) != configuration(breaks + step)).flatten(1).any(1).all())
    # Between breakpoints the aggregate is continuous: a tiny step moves it by a tiny amount.
    mids = (breaks[1:] + breaks[:-1]) / 2
    near = fast(torch.as_tensor(mids)) - fast(torch.as_tensor(mids + 1e-7 * np.diff(breaks)))
    assert float(near.abs().max()) < 1e-5 * float(honest.abs().max())


def test_only_continuous_rules_after_nnm_report_breakpoints() -> None:
    honest = torch.randn(9, 6, dtype=torch.float64)
    assert len(span_aggregation(get_aggregator("cm", f=3), honest, 3).breakpoints()) == 0  # continuous in lambda
    assert span_aggregation(get_aggregator("nnm+krum", f=3), honest, 3).breakpoints() is None  # Krum's choice jumps
    assert span_aggregation(get_aggregator("clipping+nnm+cm", f=3, c=1.0), honest, 3).breakpoints() is None


class Sawtooth:
    """``phi`` with jumps at ``breakpoints``: each piece decreases linearly from its left end, whose
    height is given, so the maximiser is ``just right of`` the best jump."""

    def __init__(self, breakpoints: np.ndarray, heights: np.ndarray, known: bool) -> None:
        self.jumps, self.heights = breakpoints, heights
        self.breakpoints = breakpoints if known else None

    def __call__(self, lams: np.ndarray) -> np.ndarray:
        piece = np.searchsorted(self.jumps, lams, side="right") - 1
        tooth = self.heights[np.clip(piece, 0, None)] - 0.5 * (lams - self.jumps[np.clip(piece, 0, None)])
        return np.where(piece >= 0, tooth, 0.5 - 0.01 * np.abs(lams))  # low before the first jump


def test_piece_ends_land_on_the_top_of_the_best_tooth() -> None:
    gen = np.random.default_rng(3)
    breaks = np.sort(gen.uniform(-3.0, -2.0, 12))
    heights = 1.0 + 0.02 * gen.random(12)
    best = breaks[np.argmax(heights)]
    search = GlobalSearch(rounds=4, splits=2)
    lam, value = search(Sawtooth(breaks, heights, known=True), 4.0)
    assert lam == pytest.approx(best, abs=1e-8) and value == pytest.approx(heights.max(), abs=1e-8)
    blind_lam, blind = search(Sawtooth(breaks, heights, known=False), 4.0)
    assert blind < value - 1e-4  # multisection alone stops on a lower point of some tooth


def deviation(honest: Tensor, ctx: AttackContext, lam: float) -> float:
    """``||F(honest, lam gbar x f) - gbar||``: the damage a tie is broken by, computed with the rule itself."""
    gbar = honest.mean(0)
    return float((ctx.aggregator(torch.cat([honest, (lam * gbar).expand(ctx.f, -1)])) - gbar).norm())


@pytest.mark.parametrize("solver", ["global", "powell"])
@pytest.mark.parametrize("spec", ["mean", "nnm+cm"])
def test_a_flat_loss_sends_the_farthest_aggregate_and_says_so(solver: str, spec: str) -> None:
    """A constant honest loss ties every candidate: the tie goes to the aggregate farthest from gbar among
    those scored (SF's lambda = -1, the honest copies' lambda = 1 and the flat probes included), and the
    round's metrics say the loss was flat. Under the mean that is never lambda = 0 or 1 (an attack-free round)."""
    honest, ctx = random_problem(3, spec, "softmax")
    flat = AttackContext(**{**ctx.__dict__, "honest_loss": lambda theta: torch.full((len(theta),), 36.04,
                                                                                     dtype=torch.float64)})
    attack = get_attack("jump", solver=solver)
    out = attack(honest, flat)
    lam = attack.metrics["jump-lambda"]
    assert attack.metrics["jump-flat"] == 1.0 and attack.metrics["jump-ties"] > 1
    assert torch.equal(out, lam * honest.mean(0))
    probes = [1.0, -1.0, -10.0, -100.0, -1e3, -1e4, -1e5, -1e6]
    assert deviation(honest, ctx, lam) >= max(deviation(honest, ctx, p) for p in probes) - 1e-9
    if spec == "mean":
        assert abs(lam) >= 1e6  # the mean moves without bound: the farthest probe


def test_a_saturated_loss_ties_at_the_cap_and_breaks_towards_the_farthest_aggregate() -> None:
    """scikit-learn's log loss clips at 36.04: every lambda beyond a threshold scores the cap. Among the tied
    candidates the farthest aggregate from gbar wins; under the mean the distance grows with |lambda - 1|."""
    honest, ctx = random_problem(5, "mean", "softmax")
    capped = AttackContext(**{**ctx.__dict__, "honest_loss": lambda theta: ctx.honest_loss(theta).clamp(max=2.0)})
    assert float(capped.honest_loss((ctx.params - ctx.lr * -100 * honest.mean(0))[None])[0]) == 2.0  # at the cap
    attack = get_attack("jump")
    attack(honest, capped)
    assert attack.metrics["jump-loss"] == 2.0 and attack.metrics["jump-ties"] > 1
    assert attack.metrics["jump-flat"] == 0.0  # lambdas near 1 still score below the cap
    assert deviation(honest, ctx, attack.metrics["jump-lambda"]) > deviation(honest, ctx, -100.0)


def test_a_strict_maximum_is_not_a_tie() -> None:
    honest, ctx = random_problem(4, "nnm+cm", "softmax")
    attack = get_attack("jump")
    attack(honest, ctx)
    assert attack.metrics["jump-ties"] == 1.0 and attack.metrics["jump-flat"] == 0.0


def test_the_loss_along_the_span_scores_gm_candidates_from_the_basis_logits() -> None:
    # MNIST logistic regression (logits linear in the parameters) against NNM + GM, whose aggregates lie in the honest
    # span: the scoring loss comes from the logits of theta and the 12 basis rows (13 models), not one forward pass per
    # candidate, and gives the direct losses to float32 rounding and the same lambda.
    models: list[int] = []

    def counted(entries: dict[str, Tensor], x: Tensor) -> Tensor:
        models.append(len(entries["1.weight"]))
        return linear_logits(entries, x)

    task = dataclasses.replace(get_task("mnist-logreg"), batched_logits=counted)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(300, 1, 28, 28, generator=gen), torch.randint(10, (300,), generator=gen)
    theta = 0.01 * torch.randn(7850, generator=gen)
    honest = 0.05 * torch.randn(7850, generator=gen) + 0.02 * torch.randn(12, 7850, generator=gen)
    loss = SampleLoss(task, task.build_model(), x, y)
    ctx = AttackContext(n=15, f=3, aggregator=get_aggregator("nnm+gm", f=3), lr=0.7, params=theta, honest_loss=loss)
    plain = AttackContext(**{**ctx.__dict__, "honest_loss": lambda flat: loss(flat)})  # type: ignore[misc]
    lams = np.concatenate([np.linspace(-4, 6, 29), [-50.0, 50.0]])
    fast, slow = JumpObjective(honest, ctx), JumpObjective(honest, plain)
    fast_values = fast(lams)
    assert fast.along is not None and models == [13]  # theta and the 12 basis rows, once
    models.clear()
    slow_values = slow(lams)
    assert slow.along is None and sum(models) == slow.losses == 31  # one model per distinct candidate
    assert np.allclose(fast_values, slow_values, rtol=2e-6, atol=0) and not np.array_equal(fast_values, slow_values)
    attacks = get_attack("jump"), get_attack("jump")
    for attack, context in zip(attacks, (ctx, plain), strict=True):
        attack(honest, context)
    assert attacks[0].metrics["jump-lambda"] == attacks[1].metrics["jump-lambda"]
    assert attacks[0].metrics["jump-loss"] == pytest.approx(attacks[1].metrics["jump-loss"], rel=2e-6)


def test_the_loss_along_the_span_waits_for_a_call_that_repays_it() -> None:
    # Fewer new candidates than basis rows + 1 are scored directly; CM's aggregates leave the span: always directly.
    gen = torch.Generator().manual_seed(1)
    task = get_task("mnist-logreg")
    x, y = torch.rand(64, 1, 28, 28, generator=gen), torch.randint(10, (64,), generator=gen)
    honest = 0.05 * torch.randn(7850, generator=gen) + 0.02 * torch.randn(12, 7850, generator=gen)
    loss = SampleLoss(task, task.build_model(), x, y)
    for spec, lams, built in [("nnm+gm", np.linspace(0, 2, 13), False), ("nnm+gm", np.linspace(0, 2, 14), True),
                              ("nnm+cm", np.linspace(-4, 6, 40), False)]:
        ctx = AttackContext(n=15, f=3, aggregator=get_aggregator(spec, f=3), lr=0.7,
                            params=torch.zeros(7850), honest_loss=loss)
        phi = JumpObjective(honest, ctx)
        phi(lams)
        assert (phi.along is not None) == built, (spec, len(lams))
