"""ARC, Meamed, MDA and CAF: equal to ByzFL 0.0.11 where its definition is deterministic, hardened like the
other rules (tests/test_robustness.py), and usable wherever a rule is (pipelines, strategies, JUMP).

Conventions that differ from ByzFL (also in docs/rules-byzfl.md):
* ByzFL is compared on numpy float64 inputs (its torch path converts to float32 and takes the median with
  ``torch.quantile``); outputs agree up to float64 summation order (ByzFL sums in ``argpartition`` order).
* ARC clips ``2 f (n - f) // n`` vectors (exact); ByzFL's ``int((2 * f / n) * (n - f))`` is one less at some
  (n, f), e.g. n = 242, f = 33. ARC requires ``n > 2f`` (ByzFL: ``f <= n``) and never writes into its input
  (ByzFL's ARC clips the rows of the array it is given in place).
* Meamed: values tied at the cut share the remaining places equally (ByzFL: ``argpartition``'s arbitrary pick).
* MDA: subsets of equal diameter are broken by ``tie_order`` ranks (ByzFL: the first subset in input order);
  more than ``max_subsets`` subsets raise ``ValueError``.
* CAF: the exact top eigenpair (ByzFL: one power-iteration step from a random start) and ``tau_max`` over
  the vectors still weighted (ByzFL: over all vectors, so an eliminated outlier stalls its loop); ``f = 0``
  is the mean (ByzFL returns ``None``).
"""

from __future__ import annotations

import itertools

import byzfl
import numpy as np
import pytest
import torch
from test_jump import random_problem
from test_robustness import (
    DIRECTIONS,
    DTYPES,
    SIGNS,
    SQUARE,
    SWEEP_D,
    SWEEP_F,
    SWEEP_N,
    honest_vectors,
    magnitudes,
    random_orders,
    same_in_every_order,
    sweep_batch,
)

from flwr_byz.aggregation import PRE_AGGREGATORS, RULES, get_aggregator
from flwr_byz.aggregation import mda
from flwr_byz.aggregation.arc import clipped_count
from flwr_byz.attacks import get_attack
from flwr_byz.attacks.span import span_aggregation
from flwr_byz.flower.defended import defended_rule, tolerated_f
from flwr_byz.flower.robust import RobustStrategy

NEW_RULES = ["meamed", "mda", "caf"]
NEW_SPECS = NEW_RULES + ["arc+cm", "arc+mean", "arc+nnm+gm", "arc+krum", "arc+mda"]
SIZES = [(3, 1), (5, 1), (5, 2), (7, 2), (8, 3), (9, 4), (10, 3), (12, 5)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def inputs(n: int, d: int, seed: int) -> np.ndarray:
    """Random float64 vectors: a common offset, unequal spreads per coordinate, two far rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d) + rng.normal(size=(n, d)) * rng.uniform(0.1, 5.0, size=d)
    x[: min(2, n // 3)] *= 20.0
    return x


def close(ours: torch.Tensor, theirs: np.ndarray) -> bool:
    """Equal up to float64 summation order."""
    return np.allclose(ours.numpy(), theirs, rtol=1e-13, atol=1e-13 * np.abs(theirs).max())


# ---------------------------------------------------------------- equality with ByzFL 0.0.11
def test_the_registry_names_the_new_stages():
    assert {"meamed", "mda", "caf"} <= set(RULES) and "arc" in PRE_AGGREGATORS
    assert "meamed, mda, caf" in get_aggregator.__doc__ and "arc" in get_aggregator.__doc__


@pytest.mark.parametrize("n, f", SIZES)
@pytest.mark.parametrize("seed", range(3))
def test_meamed_mda_and_arc_equal_byzfl(n, f, seed):
    x = inputs(n, 4, seed)
    t = torch.from_numpy(x.copy())
    assert close(get_aggregator("meamed", f)(t), byzfl.Meamed(f)(x.copy()))
    assert close(get_aggregator("mda", f)(t), byzfl.MDA(f)(x.copy()))
    clipped = get_aggregator("arc+mean", f).pre[0](t)
    assert close(clipped, byzfl.ARC(f)(x.copy()))  # ByzFL clips the rows of its argument in place
    norms = t.norm(dim=-1)
    kept = norms <= norms.sort().values[n - clipped_count(n, f) - 1]  # the threshold's own row included
    assert torch.equal(t, torch.from_numpy(x)) and torch.equal(clipped[kept], t[kept])  # bit for bit


def test_arc_clips_the_exact_count_where_byzfl_rounds_it_down():
    legacy = {(n, f): int((2 * f / n) * (n - f)) for n in range(1, 300) for f in range((n + 1) // 2)}
    differ = sorted(key for key, m in legacy.items() if m != clipped_count(*key))
    assert differ == [(242, 33)] and legacy[242, 33] == clipped_count(242, 33) - 1 == 56
    x = inputs(242, 3, 0)
    ours = get_aggregator("arc+mean", 33).pre[0](torch.from_numpy(x.copy())).numpy()
    theirs = byzfl.ARC(33)(x.copy())
    changed = lambda y: int((np.abs(y - x).max(axis=1) > 0).sum())  # noqa: E731
    assert changed(ours) == 57 and changed(theirs) == 56


def caf_oracle(x: np.ndarray, f: int) -> tuple[np.ndarray, bool]:
    """CAF in numpy float64 with ``eigh`` of the d x d covariance and ``tau_max`` over the weighted vectors;
    also whether ``tau_max`` over all vectors (ByzFL's) was the same at every step."""
    n, c, best, best_mu, same = len(x), np.ones(len(x)), np.inf, x.mean(0), True
    while c.sum() > n - 2 * f:
        mu = c @ x / c.sum()
        diffs = x - mu
        values, vectors = np.linalg.eigh((c[:, None] * diffs).T @ diffs / c.sum())
        if values[-1] < best:
            best, best_mu = values[-1], mu
        tau = (diffs @ vectors[:, -1]) ** 2
        live = tau[c > 0].max()
        if live == 0:
            break
        same &= bool(live == tau.max())
        c = np.maximum(c * (1 - tau / live), 0.0)
    return best_mu, same


@pytest.mark.parametrize("d", [1, 2, 5, 30])
def test_caf_equals_an_exact_eigenvector_oracle(d):
    for seed in range(25):
        n = 3 + seed % 10
        f = 1 + seed % ((n - 1) // 2)
        x = inputs(n, d, seed)
        assert close(get_aggregator("caf", f)(torch.from_numpy(x)), caf_oracle(x, f)[0]), (n, f, seed)


def test_caf_equals_byzfl_where_its_power_step_is_exact_and_tau_max_the_same():
    # With covariance of rank 1 (d = 1, or collinear vectors) one power step from any start is the exact
    # eigenvector, so ByzFL is deterministic; it then equals CAF wherever the largest tau belongs to a
    # vector still weighted at every step (the oracle says where).
    compared = 0
    for seed in range(80):
        n = 3 + seed % 10
        f = 1 + seed % ((n - 1) // 2)
        t = np.random.default_rng(seed).normal(size=(n, 1))
        x = t if seed % 2 else t * np.array([[1.0, -2.0, 0.5]]) + np.array([3.0, 1.0, -1.0])  # collinear in d = 3
        if caf_oracle(x, f)[1]:
            compared += 1
            assert close(get_aggregator("caf", f)(torch.from_numpy(x)), byzfl.CAF(f)(x.copy())), (n, f, seed)
    assert compared >= 10


def test_caf_runs_at_most_2f_steps_where_byzfl_stalls_on_an_eliminated_outlier(monkeypatch):
    # ByzFL divides by max_j tau_j over all j: once a far outlier has weight 0 its tau dwarfs the others and
    # each step removes ~(spread / distance)^2 of weight (measured: 124, 12603 and 1.26M steps at 10, 100 and
    # 1000 spreads). CAF here takes the maximum over the weighted vectors.
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: calls.append(1) or eigh(m))
    honest = torch.randn(8, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.cat([honest, torch.tensor([[1e6]], dtype=torch.float64)])
    out = get_aggregator("caf", 2)(x)
    assert len(calls) <= 4 and out.abs() < x[:8].abs().max()
    assert close(out, caf_oracle(x.numpy(), 2)[0])


def test_byzfl_conventions_that_differ_on_ties():
    # Meamed, n = 5, f = 1: -2 and 3 are both 2.5 from the median 0.5 and one place is left: each gets half.
    x = np.array([[-2.0], [0.0], [0.5], [1.0], [3.0]])
    assert get_aggregator("meamed", 1)(torch.from_numpy(x)).item() == 0.5
    assert byzfl.Meamed(1)(x.copy()).item() in (-0.125, 1.125)  # (0 + 0.5 + 1 - 2) / 4 or (... + 3) / 4
    # MDA, n = 3, f = 1 on a line: {0, 1} and {1, 2} both have diameter 1. ByzFL keeps the first in input
    # order; here 1 is the most central vector and 0 < 2 lexicographically, in every order.
    points = np.array([[0.0], [1.0], [2.0]])
    ours, theirs = set(), set()
    for order in itertools.permutations(range(3)):
        ours.add(get_aggregator("mda", 1)(torch.from_numpy(points[list(order)])).item())
        theirs.add(byzfl.MDA(1)(points[list(order)]).item())
    assert ours == {0.5} and theirs == {0.5, 1.5}
    # CAF with f = 0 filters nothing: the mean (ByzFL returns None).
    assert byzfl.CAF(0)(points.copy()) is None and get_aggregator("caf", 0)(torch.from_numpy(points)).item() == 1.0


def test_mda_scores_subsets_the_same_in_chunks_of_any_size(monkeypatch):
    # Ties across chunks: the lexicographically first kept subset wins whatever the chunk size.
    x = torch.cat([torch.tensor([[0.0], [1.0], [2.0], [-1.0]], dtype=torch.float64),
                   torch.randn(5, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])
    cases = [(x[:3], 1), (x[:4], 1), (x, 2), (torch.tensor(SQUARE, dtype=torch.float64), 2)]
    whole = [get_aggregator("mda", f)(y) for y, f in cases]
    monkeypatch.setattr(mda, "BLOCK", 1)  # one subset per chunk
    assert all(torch.equal(get_aggregator("mda", f)(y), out) for (y, f), out in zip(cases, whole))


# ---------------------------------------------------------------- hand-worked values
def test_hand_worked_values():
    t = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    # ARC, n = 5, f = 1: floor(2 * 4 / 5) = 1 vector clipped to the 4th norm (5): [30, 40] -> [3, 4].
    x = t([[0, 1], [2, 0], [0, 3], [3, 4], [30, 40]])
    assert torch.allclose(get_aggregator("arc+mean", 1).pre[0](x), torch.cat([x[:4], t([[3, 4]])]))
    # Meamed, n = 4 (median 2.5 of 1, 2, 3, 10), f = 1: 2, 3, then 1 -> 2.
    assert get_aggregator("meamed", 1)(t([[1], [2], [3], [10]])).item() == 2.0
    # MDA, f = 1: dropping 10 leaves diameter 2: mean(0, 1, 2) = 1.
    assert get_aggregator("mda", 1)(t([[0], [1], [2], [10]])).item() == 1.0
    # CAF, f = 1 in 1-D: mean 3.25, tau = (x - 3.25)^2 = (10.5625, 5.0625, 1.5625, 45.5625): step 1 removes 10
    # and keeps sum c = 4 - (10.5625 + 5.0625 + 1.5625 + 45.5625) / 45.5625 = 2.6228 > 2; step 2 (weighted mean
    # of 0, 1, 2) has a smaller top eigenvalue than step 1's 17.1875, removes the farthest of them and stops.
    x = t([[0], [1], [2], [10]])
    c = 1 - torch.tensor([10.5625, 5.0625, 1.5625], dtype=torch.float64) / 45.5625
    assert close(get_aggregator("caf", 1)(x), (c @ x[:3, 0] / c.sum()).reshape(1).numpy())


# ---------------------------------------------------------------- hardening
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", NEW_SPECS)
def test_no_byzantine_magnitude_moves_the_output_out_of_the_honest_region(spec, dtype):
    """Outputs stay finite and within 3x the largest honest norm; for far outliers (>= 1e3) MDA, CAF and ARC+CM
    stay in the honest box (means of honest vectors, honest order statistics), Meamed within one honest range
    of it (its values lie within the n-f-th distance of a median inside the honest range)."""
    agg = get_aggregator(spec, SWEEP_F, n=SWEEP_N)
    labels = list(itertools.product(DIRECTIONS, SIGNS))
    bad = []
    for magnitude in magnitudes(dtype):
        honest, x = sweep_batch(magnitude, dtype)
        out = agg(x).double()
        h = honest.double()
        low, high = h.min(0).values, h.max(0).values
        within = out.norm(dim=-1) <= 3 * h.norm(dim=-1).max()
        if magnitude >= 1e3 and spec in ("mda", "caf", "arc+cm", "arc+mda", "meamed"):
            slack = 1e-5 * h.abs().max() + (high - low if spec == "meamed" else 0.0)
            within &= ((out >= low - slack) & (out <= high + slack)).all(-1)
        bad += [(magnitude, *labels[i]) for i in (~(within & out.isfinite().all(-1))).nonzero().flatten().tolist()]
    assert not bad, f"{spec} ({dtype}) leaves the honest region for {len(bad)} inputs, e.g. {bad[:4]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", [s for s in NEW_SPECS if s != "arc+mean"])  # mean: x.mean, not hardened
def test_equal_rows_at_the_dtype_boundary_give_that_row(spec, dtype):
    top = torch.finfo(dtype).max
    x = torch.tensor([[top, -top, 1.0]] * 7, dtype=dtype)
    out = get_aggregator(spec, 2)(x)
    assert out.isfinite().all() and torch.allclose(out, x[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ["meamed", "mda", "caf", "arc+mean"])
def test_opposite_rows_at_the_dtype_boundary_stay_finite(spec, dtype):
    # Distances, norms, medians of two middle values and sums of these rows overflow if computed naively.
    top = torch.finfo(dtype).max
    x = torch.tensor([[top, top], [-top, -top], [top, -top], [0.0, 0.0], [1.0, 2.0]], dtype=dtype)
    out = get_aggregator(spec, 1)(x)
    assert out.isfinite().all() and (out.abs() <= top).all()


def test_mda_ranks_diameters_beyond_float64_among_themselves():
    # Every squared distance overflows; the subset of least diameter is {top, top/2}.
    top = torch.finfo(torch.float64).max
    x = torch.tensor([[top], [-top], [top / 2]], dtype=torch.float64)
    for order in itertools.permutations(range(3)):
        assert get_aggregator("mda", 1)(x[list(order)]).item() == 0.75 * top


def test_meamed_takes_the_median_of_two_middle_values_at_the_dtype_boundary():
    # n = 6: the two middle values of the first coordinate are both top; (top + top) / 2 would overflow.
    for dtype in DTYPES:
        top = torch.finfo(dtype).max
        x = torch.tensor([[top, -top]] * 4 + [[0.0, 0.0], [1.0, 2.0]], dtype=dtype)
        out = get_aggregator("meamed", 1)(x)  # the 4 tops and the nearer of the rest: (4 top + 1) / 5, (0 - 4 top) / 5
        assert out.isfinite().all() and torch.allclose(out, x[0] * 0.8, rtol=1e-6, atol=0)


def test_arc_clips_a_vector_whose_norm_overflows_to_the_honest_norm():
    top = torch.finfo(torch.float64).max
    x = torch.tensor([[3.0, 4.0], [0.0, 5.0], [5.0, 0.0], [top, top], [1.0, 0.0]], dtype=torch.float64)
    out = get_aggregator("arc+mean", 1).pre[0](x)  # floor(2 * 4 / 5) = 1 clipped to norm 5
    assert torch.equal(out[[0, 1, 2, 4]], x[[0, 1, 2, 4]])
    assert torch.allclose(out[3], torch.tensor([5.0, 5.0], dtype=torch.float64) / 2**0.5)


def test_arc_ranks_norms_beyond_float64_among_themselves():
    # n = 5, f = 1: the row of the 4th smallest norm (1.118 top) is the threshold, and the larger one
    # (1.414 top) is clipped to it, though both norms overflow float64.
    top = torch.finfo(torch.float64).max
    x = torch.tensor([[top, top], [top, top / 2], [top, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = get_aggregator("arc+mean", 1).pre[0](x)
    assert torch.equal(out[1:], x[1:])
    assert torch.allclose(out[0], torch.full((2,), top * (1.25 / 2) ** 0.5, dtype=torch.float64))


def test_arc_keeps_the_precision_of_a_float32_row_clipped_by_a_tiny_factor():
    # tau / ||x|| = 1e-3 / 3.4e38 is subnormal in float32: the factor is applied in float64.
    x = torch.tensor([[1e-3, 0.0], [0.0, 1e-3], [1e-3, 0.0], [torch.finfo(torch.float32).max, 0.0], [0.0, 1e-3]])
    out = get_aggregator("arc+mean", 1).pre[0](x)
    assert out[3, 0].item() == pytest.approx(1e-3, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec, f, points",
    [
        ("meamed", 1, [[-1], [0], [1]]),  # -1 and 1 tie for the second place
        ("meamed", 1, [[-2], [0], [0.5], [1], [3]]),
        ("mda", 1, [[0], [1], [2]]),  # {0, 1} and {1, 2}: equal diameters
        ("mda", 1, [[-1], [0], [1], [2]]),  # {-1, 0, 1} and {0, 1, 2}: diameter 2
        ("mda", 2, SQUARE),
        ("meamed", 2, SQUARE),
        ("arc+mean", 2, SQUARE),
        ("arc+mda", 1, SQUARE),
        ("caf", 1, [[-1], [0], [1]]),
    ],
)
def test_exact_ties_are_broken_the_same_way_in_every_order(dtype, spec, f, points):
    x = torch.tensor(points, dtype=dtype)
    assert same_in_every_order(get_aggregator(spec, f), x, itertools.permutations(range(len(x))))


@pytest.mark.parametrize("spec", NEW_SPECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicated_vectors_keep_the_output_permutation_invariant(spec, dtype):
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.cat([base, base[:2], base[:1]]).to(dtype)  # 9 rows, 3 duplicates
    assert same_in_every_order(get_aggregator(spec, 2), x, random_orders(len(x)))


@pytest.mark.parametrize("spec", NEW_SPECS)
def test_batch_equals_loop(spec):
    _, huge = sweep_batch(torch.finfo(torch.float32).max, torch.float32)
    rand = torch.randn(4, SWEEP_N, SWEEP_D, generator=torch.Generator().manual_seed(1))
    agg = get_aggregator(spec, SWEEP_F)
    for x in (huge, rand, rand.double()):
        assert torch.equal(agg(x), torch.stack([agg(xi) for xi in x]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", NEW_SPECS)
def test_dtype_device_shape_and_no_mutation(spec, dtype, device):
    x = torch.randn(3, 9, 5, generator=torch.Generator().manual_seed(2), dtype=dtype).to(device)
    before = x.clone()
    agg = get_aggregator(spec, 2)
    out = agg(x)
    assert out.shape == (3, 5) and out.dtype == dtype and out.device == x.device and torch.equal(x, before)
    assert agg(x[0]).shape == (5,)
    if device != "cpu":
        assert torch.allclose(out.cpu(), agg(x.cpu()), rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-5)


def test_arc_returns_a_new_tensor_even_when_it_clips_nothing():
    x = torch.randn(5, 3)
    out = get_aggregator("arc+mean", 0).pre[0](x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_f_zero_is_the_mean():
    # Meamed keeps all n values, MDA the one subset of size n, CAF filters nothing, ARC clips nothing.
    x = honest_vectors(6, 3, seed=0)
    for spec in ("meamed", "mda", "caf", "arc+mean"):
        assert torch.allclose(get_aggregator(spec, 0)(x), x.mean(0), rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- preconditions
@pytest.mark.parametrize("spec", ["meamed", "mda", "caf"])
def test_too_large_f_names_the_precondition_and_the_fix(spec):
    with pytest.raises(ValueError, match=rf"{spec.upper()} needs n > 2f, got n=4, f=2: use at least n=5 nodes"):
        get_aggregator(spec, 2)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="use at least n=5 nodes or a smaller f"):
        get_aggregator(spec, 2, n=4)


def test_arc_needs_fewer_than_half_byzantine():
    with pytest.raises(ValueError, match=r"ARC needs n > 2f but receives 4.*at least n=5"):
        get_aggregator("arc+mean", 2, n=4)
    with pytest.raises(ValueError, match=r"ARC needs n > 2f, got n=4, f=2"):
        get_aggregator("arc+mean", 2).pre[0](torch.randn(4, 3))


def test_mda_refuses_too_many_subsets_and_names_the_fix():
    agg = get_aggregator("mda", 5, max_subsets=100)
    with pytest.raises(ValueError, match=r"C\(12, 5\) = 792 subsets .* max_subsets=100: pass max_subsets=792"):
        agg(torch.randn(12, 3))
    get_aggregator("mda", 5, max_subsets=792)(torch.randn(12, 3))
    with pytest.raises(ValueError, match="max_subsets must be a positive int"):
        get_aggregator("mda", 1, max_subsets=0)
    with pytest.raises(ValueError, match="more than max_subsets=100000"):  # the default: C(40, 8) = 76904685
        get_aggregator("mda", 8)(torch.randn(40, 2))


# ---------------------------------------------------------------- usable wherever a rule is
@pytest.mark.parametrize("spec", NEW_SPECS)
def test_jump_attacks_each_rule_through_the_generic_search(spec):
    honest, ctx = random_problem(4, spec, "softmax")  # n = 11, f = 2
    assert span_aggregation(ctx.aggregator, honest, ctx.f) is None  # no span fast path: the generic search
    attack = get_attack("jump")
    out = attack(honest, ctx)
    gbar = honest.mean(0)
    assert out.shape == gbar.shape and out.isfinite().all()
    assert torch.allclose(out, attack.metrics["jump-lambda"] * gbar)
    def loss(byzantine: torch.Tensor) -> float:  # the honest loss after the defence aggregates the copies
        aggregate = ctx.aggregator(torch.cat([honest, byzantine.expand(ctx.f, -1)]))
        return ctx.honest_loss((ctx.params - ctx.lr * aggregate)[None]).item()

    assert attack.metrics["jump-loss"] == pytest.approx(loss(out), rel=1e-9)  # the batched scores are the rule's
    assert attack.metrics["jump-loss"] >= loss(gbar) - 1e-12  # at least the damage of lambda = 1


@pytest.mark.parametrize("spec", NEW_SPECS)
def test_robust_strategy_and_the_omniscient_adversary_take_the_new_names(spec):
    strategy = RobustStrategy(aggregation=spec, f=2, aggregation_params={"max_subsets": 500} if "mda" in spec else None)
    rule = defended_rule(strategy, 11)
    assert (rule.spec, rule.f) == (spec, 2) and tolerated_f(rule, 11) == 2  # the output depends on f
    assert get_aggregator(rule.spec, rule.f, **rule.params)(torch.randn(11, 4)).shape == (4,)


def test_weights_may_follow_arc_which_keeps_the_rows():
    x, w = torch.randn(7, 3, dtype=torch.float64), [1.0, 2.0, 0.0, 1.0, 3.0, 1.0, 1.0]
    agg = get_aggregator("arc+mean", 2, weights=w)
    clipped = agg.pre[0](x)
    assert torch.allclose(agg(x), (torch.tensor(w, dtype=torch.float64) @ clipped) / sum(w))
