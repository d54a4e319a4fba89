"""Robust rules cannot be steered: exact Krum/NNM selection against an independent oracle,
bounded outputs for Byzantine values up to the dtype's maximum, permutation-invariant ties,
and bucketing that is a pure function of (seed, round)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from flwr_byz.aggregation import Bulyan, get_aggregator, pairwise_sq_distances
from flwr_byz.seeds import seeded_generator

DTYPES = [torch.float32, torch.float64]


# ---------------------------------------------------------------- the oracle: plain loops, float64
def exact_distances(x: Tensor) -> list[list[float]]:
    """``D[i][j] = sum_c (x_ic - x_jc)^2`` by direct differences in Python floats (float64)."""
    rows = x.double().tolist()
    return [[sum((a - b) ** 2 for a, b in zip(xi, xj)) for xj in rows] for xi in rows]


def exact_scores(dist: list[list[float]], m: int, candidates: list[int]) -> dict[int, float]:
    """Krum scores over ``candidates``: the sum of the ``m`` smallest distances to the other candidates."""
    return {i: sum(sorted(dist[i][j] for j in candidates if j != i)[:m]) for i in candidates}


def exact_krum_order(dist: list[list[float]], m: int) -> list[int]:
    scores = exact_scores(dist, m, list(range(len(dist))))
    return sorted(scores, key=scores.__getitem__)


def exact_bulyan_selection(dist: list[list[float]], f: int) -> set[int]:
    """Krum applied ``n - 2f`` times, removing each winner; ``max(1, r - f - 2)`` neighbours among ``r`` left."""
    left = list(range(len(dist)))
    for _ in range(len(dist) - 2 * f):
        scores = exact_scores(dist, max(1, len(left) - f - 2), left)
        left.remove(min(scores, key=scores.__getitem__))
    return set(range(len(dist))) - set(left)


def exact_nnm(x: Tensor, dist: list[list[float]], f: int) -> Tensor:
    """Each vector replaced by the float64 mean of its ``n - f`` nearest vectors (itself included)."""
    m = len(dist) - f
    nearest = [sorted(range(len(dist)), key=row.__getitem__)[:m] for row in dist]
    return torch.stack([x.double()[idx].mean(0) for idx in nearest])


def no_near_ties(values: list[float]) -> bool:
    """Distinct vectors' values differ by more than rounding: the oracle's choice is unambiguous."""
    ranked = sorted(values)
    return all(b - a > 1e-12 * abs(b) for a, b in zip(ranked, ranked[1:]))


def rows(x: Tensor, idx) -> list[list[float]]:
    """The selected vectors as a sorted list: identical copies are interchangeable."""
    return sorted(x[list(idx)].tolist())


# ---------------------------------------------------------------- inputs
def direction(name: str, mean: Tensor, gen: torch.Generator) -> Tensor:
    d = len(mean)
    if name.startswith("axis"):
        u = torch.zeros(d, dtype=torch.float64)
        u[int(name[4:]) % d] = 1.0
        return u
    if name == "mean":
        return mean / mean.norm()
    if name == "ones":
        return torch.ones(d, dtype=torch.float64) / d**0.5
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    return u / u.norm()


DIRECTIONS = ["axis0", "axis-1", "mean", "random", "ones"]


def honest_vectors(h: int, d: int, seed: int) -> Tensor:
    """Normals of unit spread around a nonzero mean, float64."""
    gen = torch.Generator().manual_seed(seed)
    mean = 3 * torch.randn(d, generator=gen, dtype=torch.float64)
    return mean + torch.randn(h, d, generator=gen, dtype=torch.float64)


# ---------------------------------------------------------------- exact selection
H, F, D = 12, 3, 5
SPREADS = [1.0, 10.0, 1e3, 1e4, 1e6, 1e8]


def copies_at(spread: float, name: str, sign: float, seed: int, dtype: torch.dtype) -> Tensor:
    """``H`` honest vectors then ``F`` identical Byzantine copies at ``mean + sign * spread * u``."""
    honest = honest_vectors(H, D, seed)
    mean = honest.mean(0)
    byz = mean + sign * spread * direction(name, mean, torch.Generator().manual_seed(seed + 1))
    return torch.cat([honest, byz.expand(F, D)]).to(dtype)


CASES = [(s, name, sign) for s in SPREADS for name in DIRECTIONS for sign in (1.0, -1.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_krum_multikrum_and_bulyan_select_what_exact_krum_selects(dtype, seed):
    krum, bulyan = get_aggregator("krum", F), {s: Bulyan(F, s) for s in ("krum", "multikrum")}
    variant = get_aggregator("krum", F, neighbors="n-f-1")
    n, wrong = H + F, []
    for spread, name, sign in CASES:
        x = copies_at(spread, name, sign, seed, dtype)
        dist = exact_distances(x)
        distinct = list(range(H + 1))  # the honest vectors and one Byzantine copy
        for agg, m in ((krum, n - F - 2), (variant, n - F - 1)):
            ref = exact_krum_order(dist, m)
            assert no_near_ties([exact_scores(dist, m, list(range(n)))[i] for i in distinct])
            if not torch.equal(agg(x), x[ref[0]]):
                wrong.append((agg.spec, m, spread, name, sign))
            if rows(x, agg.rule.order(x[None])[0, : n - F].tolist()) != rows(x, ref[: n - F]):
                wrong.append(("multikrum", m, spread, name, sign))
        ref_bulyan = {"krum": exact_bulyan_selection(dist, F),
                      "multikrum": exact_krum_order(dist, n - F - 2)[: n - 2 * F]}
        for selection, rule in bulyan.items():
            if rows(x, rule._select(x[None])[0].tolist()) != rows(x, ref_bulyan[selection]):
                wrong.append((f"bulyan/{selection}", spread, name, sign))
    assert not wrong, f"{len(wrong)} selections differ from exact Krum, e.g. {wrong[:4]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("f", [F, F + 2])  # f > F: each honest vector keeps only its nearest honest ones
def test_nnm_mixes_the_neighbours_exact_distances_select(dtype, seed, f):
    nnm = get_aggregator("nnm+mean", f).pre[0]
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    wrong = []
    for spread, name, sign in CASES:
        x = copies_at(spread, name, sign, seed, dtype)
        dist = exact_distances(x)
        assert all(no_near_ties([row[j] for j in range(H + 1)]) for row in dist)
        ref = exact_nnm(x, dist, f)
        if not torch.allclose(nnm(x).double(), ref, rtol=tol, atol=tol * (1 + spread)):
            wrong.append((spread, name, sign))
    assert not wrong, f"NNM differs from exact NNM for {len(wrong)} cases, e.g. {wrong[:4]}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_distances_are_exact_symmetric_and_never_nan(dtype):
    x = copies_at(1e4, "mean", 1.0, 0, dtype)
    dist = pairwise_sq_distances(x[None])[0]
    ref = torch.tensor(exact_distances(x), dtype=torch.float64)
    assert dist.dtype == torch.float64 and torch.equal(dist, dist.T) and not dist.diagonal().any()
    assert torch.allclose(dist, ref, rtol=1e-13, atol=0)  # honest-honest entries too: no cancellation
    top = torch.finfo(dtype).max
    huge = torch.tensor([[top, -top], [-top, top], [1.0, 2.0]], dtype=dtype)
    dist = pairwise_sq_distances(huge[None])[0]
    assert not dist.isnan().any() and torch.equal(dist, dist.T) and not dist.diagonal().any()


@pytest.mark.parametrize("d", [5, 40, 70_000])  # batched cdist, one pdist per problem, several coordinate blocks
def test_distances_match_direct_differences_in_every_code_path(d):
    x = torch.randn(3, 6, d, generator=torch.Generator().manual_seed(d), dtype=torch.float32)
    x[:, -1] += 1e5  # a far outlier
    ref = ((x.double().unsqueeze(-2) - x.double().unsqueeze(-3)) ** 2).sum(-1)
    dist = pairwise_sq_distances(x)
    assert torch.allclose(dist, ref, rtol=1e-13, atol=0) and torch.equal(dist, dist.mT)
    assert torch.equal(dist, torch.cat([pairwise_sq_distances(xi[None]) for xi in x]))


# ---------------------------------------------------------------- exact ties: permutation invariance
def same_in_every_order(agg, x: Tensor, orders) -> bool:
    """``agg`` gives the same output for every reordering of the rows of ``x`` (up to summation order)."""
    outs = torch.stack([agg(x[torch.tensor(order)]) for order in orders])
    tol = 1e-6 if x.dtype == torch.float32 else 1e-12
    return torch.allclose(outs, outs[0].expand_as(outs), rtol=tol, atol=tol)


def random_orders(n: int, count: int = 30) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randperm(n, generator=gen).tolist() for _ in range(count)]


SQUARE = [[1, 1], [1, -1], [-1, 1], [-1, -1], [0, 0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec, f, params, points",
    [
        ("krum", 1, {"neighbors": "n-f-1"}, [[0], [1], [5]]),  # mutual nearest neighbours, k = 1
        ("krum", 1, {"neighbors": 1}, [[0], [1], [10], [11]]),  # equal scores and equal total distances
        ("multikrum", 1, {"neighbors": "n-f-1", "select": 2}, [[-2], [-1], [0], [1], [2]]),  # tie at the cut
        ("nnm+mean", 1, {}, [[-1], [0], [1]]),  # the middle vector's neighbours tie
        ("nnm+mean", 2, {}, SQUARE),
        ("krum", 1, {"neighbors": 1}, SQUARE),
        ("nnm+krum", 1, {}, SQUARE),
        ("bulyan", 0, {}, SQUARE),
        ("bulyan", 0, {"selection": "multikrum"}, SQUARE),
    ],
)
def test_exact_ties_are_broken_the_same_way_in_every_order(dtype, spec, f, params, points):
    x = torch.tensor(points, dtype=dtype)
    agg = get_aggregator(spec, f, **params)
    assert same_in_every_order(agg, x, itertools.permutations(range(len(x))))


@pytest.mark.parametrize("spec", ["krum", "multikrum", "bulyan", "nnm+mean", "nnm+krum", "nnm+cm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicated_vectors_keep_the_output_permutation_invariant(spec, dtype):
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.cat([base, base[:2], base[:1]]).to(dtype)  # 9 rows, 3 duplicates
    f = 1 if spec == "bulyan" else 2
    assert same_in_every_order(get_aggregator(spec, f), x, random_orders(len(x)))


# ---------------------------------------------------------------- bounded outputs for any magnitude
SWEEP_SPECS = [
    "cm", "tm", "gm", "krum", "multikrum", "bulyan", "cc", "nnm+cm", "nnm+tm", "nnm+gm", "nnm+krum",
    "nnm+multikrum", "bucketing+nnm+cm", "bucketing+cm", "bucketing+gm", "clipping+cm", "clipping+gm", "nnm+cc",
]
# With far outliers these return honest vectors, their means or per-coordinate order statistics of
# honest values: each coordinate stays in the honest range. (The others: ||out|| <= 3 max ||honest||.)
BOX_SPECS = {"cm", "tm", "krum", "multikrum", "bulyan", "nnm+cm", "nnm+tm", "nnm+krum", "nnm+multikrum",
             "bucketing+nnm+cm", "bucketing+cm"}
SWEEP_N, SWEEP_F, SWEEP_D = 15, 3, 8  # bulyan: n >= 4f + 3; bucketing (s = 2): 8 buckets > 2f
SIGNS = {"+": [1.0, 1.0, 1.0], "-": [-1.0, -1.0, -1.0], "mixed": [1.0, -1.0, 1.0]}


def magnitudes(dtype: torch.dtype) -> list[float]:
    top = torch.finfo(dtype).max
    return [1.0, 1e3, 1e8, 1e20, 1e30] + ([1e100, 1e200] if dtype == torch.float64 else []) + [top]


def sweep_batch(magnitude: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Honest ``(h, d)`` and a batch ``(k, n, d)``: one problem per direction and sign pattern, the
    Byzantine rows ``sign * magnitude * u / max|u|`` (largest coordinate exactly ``magnitude``)."""
    honest = honest_vectors(SWEEP_N - SWEEP_F, SWEEP_D, seed=5)
    problems = []
    for name, signs in itertools.product(DIRECTIONS, SIGNS.values()):
        u = direction(name, honest.mean(0), torch.Generator().manual_seed(6))
        unit = u / u.abs().max()
        byz = torch.stack([s * (magnitude * unit) for s in signs])
        problems.append(torch.cat([honest, byz]))
    return honest.to(dtype), torch.stack(problems).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", SWEEP_SPECS)
def test_no_byzantine_magnitude_moves_the_output_out_of_the_honest_region(spec, dtype):
    agg = get_aggregator(spec, SWEEP_F, n=SWEEP_N)
    labels = list(itertools.product(DIRECTIONS, SIGNS))
    bad = []
    for magnitude in magnitudes(dtype):
        honest, x = sweep_batch(magnitude, dtype)
        out = agg(x).double()
        h = honest.double()
        within = out.norm(dim=-1) <= 3 * h.norm(dim=-1).max()
        if spec in BOX_SPECS and magnitude >= 1e3:
            slack = 1e-5 * h.abs().max()
            within &= ((out >= h.min(0).values - slack) & (out <= h.max(0).values + slack)).all(-1)
        bad += [(magnitude, *labels[i]) for i in (~(within & out.isfinite().all(-1))).nonzero().flatten().tolist()]
    assert not bad, f"{spec} ({dtype}) leaves the honest region for {len(bad)} inputs, e.g. {bad[:4]}"


@pytest.mark.parametrize("spec", ["nnm+krum", "bulyan", "bucketing+nnm+cm", "cc", "clipping+gm"])
def test_batch_equals_loop_at_the_dtype_boundary(spec):
    _, x = sweep_batch(torch.finfo(torch.float32).max, torch.float32)
    agg = get_aggregator(spec, SWEEP_F)
    assert torch.equal(agg(x), torch.stack([agg(xi) for xi in x]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipping_keeps_a_vector_whose_norm_overflows(dtype):
    top = torch.finfo(dtype).max
    x = torch.tensor([[top, top, -top, top], [3.0, 4.0, 0.0, 0.0]], dtype=dtype)
    out = get_aggregator("clipping+mean", 0, c=2.0).pre[0](x)
    assert torch.allclose(out, torch.tensor([[1.0, 1.0, -1.0, 1.0], [1.2, 1.6, 0.0, 0.0]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_centered_clipping_pulls_the_same_towards_any_far_outlier(dtype):
    # A far row moves each step by tau / n along its direction, whether its norm overflows or not.
    honest, _ = sweep_batch(1.0, dtype)
    cc = get_aggregator("cc", SWEEP_F)
    far, overflowing = (cc(torch.cat([honest, torch.full((SWEEP_F, SWEEP_D), m, dtype=dtype)]))
                        for m in (1e10, torch.finfo(dtype).max))
    assert torch.allclose(far, overflowing)


@pytest.mark.parametrize("spec", ["gm", "cc", "nnm+gm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_start_points_stay_finite_at_the_dtype_boundary(spec, dtype):
    _, x = sweep_batch(torch.finfo(dtype).max, dtype)
    assert get_aggregator(spec, SWEEP_F, start="mean")(x).isfinite().all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_bucket_means_of_vectors_at_the_dtype_boundary_are_finite(dtype):
    top = torch.finfo(dtype).max
    x = torch.tensor([[top, -top]] * 5, dtype=dtype)
    assert torch.equal(get_aggregator("bucketing+mean", 0, s=2).pre[0](x), x[:3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gm_of_equal_rows_at_the_dtype_boundary_is_that_row(dtype):
    top = torch.finfo(dtype).max
    x = torch.tensor([[top, -top, 1.0]] * 5, dtype=dtype)
    assert torch.allclose(get_aggregator("gm", 2, start="median")(x), x[0])


# ---------------------------------------------------------------- bucketing: a pure function of (seed, round)
def test_bucketing_draws_the_permutation_of_its_seed_and_round():
    x = torch.randn(10, 3, dtype=torch.float64)
    for t in (0, 1, 7):
        perm = torch.randperm(10, generator=seeded_generator(4, t, "bucketing"))
        agg = get_aggregator("bucketing+mean", 0, s=1, seed=4).for_round(t)
        assert torch.equal(agg.pre[0](x), x[perm])
    never = get_aggregator("bucketing+mean", 0, s=1, seed=4)
    assert torch.equal(never.pre[0](x), never.for_round(0).pre[0](x))


def test_bucketing_repeats_its_buckets_within_a_round_and_changes_them_across_rounds():
    x = torch.randn(11, 4, dtype=torch.float64)
    server, adversary = (get_aggregator("bucketing+nnm+cm", 1, seed=9) for _ in range(2))
    for t in (1, 2, 3):
        first = server.for_round(t)(x)
        assert torch.equal(first, server.for_round(t)(x)) and torch.equal(first, adversary.for_round(t)(x))
        rule = server.for_round(t)
        assert torch.equal(rule(x), rule(x))
    stage = server.pre[0]
    orders = {tuple(get_aggregator("bucketing+mean", 0, s=1, seed=9).for_round(t).pre[0](x)[:, 0].tolist())
              for t in range(5)}
    assert len(orders) == 5
    assert stage.for_round(3) is not stage and stage.round == 0


def test_for_round_keeps_stateless_stages_and_the_spec():
    agg = get_aggregator("nnm+cm", 1)
    later = agg.for_round(5)
    assert later.spec == agg.spec and later.f == agg.f and later.rule is agg.rule and later.pre[0] is agg.pre[0]


def test_finite_rows_keeps_huge_finite_rows_whose_sum_overflows() -> None:
    from flwr_byz.aggregation.update import finite_rows

    big = torch.finfo(torch.float32).max
    x = torch.tensor([[1.0, 2.0, 3.0], [big, big, big], [1.0, float("nan"), 1.0], [float("inf"), 0.0, 0.0],
                      [float("inf"), float("-inf"), 0.0], [-big, -big, 1.0]], dtype=torch.float32)
    assert finite_rows(x).tolist() == [True, True, False, False, False, True]
    assert finite_rows(x[:1]).tolist() == [True]
