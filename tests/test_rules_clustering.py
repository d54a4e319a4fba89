"""DnC, SignGuard and FLAME: exact agreement with plain-numpy references written from the papers, what they
do with far, huge, tied and duplicated inputs (no formal guarantee: each test pins the behaviour), their
seeded draws, their preconditions, and their use as the defended rule (JUMP, the engine, the Flower layer)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN, HDBSCAN, MeanShift, estimate_bandwidth
from torch import Tensor

from flwr_byz.aggregation import DnC, Flame, SignGuard, get_aggregator
from flwr_byz.aggregation.dnc import average
from flwr_byz.attacks import AttackContext, get_attack
from flwr_byz.attacks.span import span_aggregation
from flwr_byz.seeds import seeded_generator
from test_robustness import DIRECTIONS, SIGNS, SQUARE, SWEEP_F, SWEEP_N, random_orders, same_in_every_order, sweep_batch

DTYPES = [torch.float32, torch.float64]
SPECS = ["dnc", "signguard", "flame"]
DETERMINISTIC = {"dnc": {}, "signguard": {}, "flame": {"noise": 0.0}}


# ---------------------------------------------------------------- references: plain numpy, float64, from the papers
def ref_dnc(x: np.ndarray, f: int, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 2 of the DnC paper with one iteration on all coordinates: the kept mask and the mean."""
    mu = x.mean(axis=0)
    v = np.linalg.svd(x - mu, full_matrices=False)[2][0]
    scores = ((x - mu) @ v) ** 2
    keep = np.zeros(len(x), dtype=bool)
    keep[np.argsort(scores)[: len(x) - math.ceil(c * f)]] = True
    return keep, x[keep].mean(axis=0)


def ref_signguard(x: np.ndarray, clustering: str = "meanshift") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SignGuard on the whole window: norm filter [0.1, 3] x median, sign-fraction features (each divided by its
    maximum) clustered as in the official code, the largest cluster, clipping to the median norm, mean; and the
    features."""
    norms = np.linalg.norm(x, axis=1)
    med = np.median(norms)
    by_norm = (norms >= 0.1 * med) & (norms <= 3.0 * med)
    feats = np.stack([(x > 0).mean(axis=1), (x == 0).mean(axis=1), (x < 0).mean(axis=1)], axis=1)
    top = feats.max(axis=0)
    feats = np.where(top > 0, feats / np.where(top > 0, top, 1.0), 0.0)
    if clustering == "dbscan":
        labels = DBSCAN(eps=0.05, min_samples=2).fit(feats).labels_
    else:
        bandwidth = estimate_bandwidth(feats, quantile=0.5)
        labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(feats).labels_
    sizes = np.bincount(labels[labels >= 0])
    assert (sizes == sizes.max()).sum() == 1, "the largest cluster is not unique: no tie in the reference cases"
    by_sign = labels == np.argmax(sizes)
    keep = by_norm & by_sign
    clipped = x * np.minimum(1.0, med / norms)[:, None]
    return keep, clipped[keep].mean(axis=0), feats


def ref_flame(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLAME (Algorithm 1) without noise: HDBSCAN on cosine distances, majority cluster, clip to the median
    norm, mean."""
    n = len(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    dist = np.triu(dist, 1) + np.triu(dist, 1).T
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", allow_single_cluster=True,
                     copy=True).fit(dist).labels_
    keep = labels == 0  # at most one cluster holds more than n/2 rows
    norms = np.linalg.norm(x, axis=1)
    med = np.median(norms)
    clipped = x * np.minimum(1.0, med / norms)[:, None]
    return keep, clipped[keep].mean(axis=0)


def attacked(seed: int, h: int = 10, d: int = 30) -> np.ndarray:
    """``h`` honest rows around a common mean with mostly positive entries, then a sign-flipped pair, a scaled
    pair and an orthogonal row."""
    rng = np.random.default_rng(seed)
    mean = np.abs(rng.normal(size=d)) + 0.2
    honest = mean + 0.6 * rng.normal(size=(h, d))
    other = rng.normal(size=d)
    other -= other @ mean / (mean @ mean) * mean
    byz = np.stack([-mean + 0.1 * rng.normal(size=d), -1.1 * mean, 8.0 * mean, 9.0 * mean + rng.normal(size=d),
                    2.0 * other])
    return np.concatenate([honest, byz])


@pytest.mark.parametrize("seed", range(4))
def test_dnc_with_one_iteration_on_all_coordinates_is_the_paper_algorithm(seed):
    x = attacked(seed, h=10 + seed // 2)  # n = 15, 16
    for f, c in ((5, 1.0), (3, 1.5), (2, 1.0)):
        keep, out = ref_dnc(x, f, c)
        rule = DnC(f, niters=3, b=x.shape[1], c=c)  # b = d: every coordinate, one iteration
        t = torch.from_numpy(x)
        assert torch.equal(rule.kept(t[None])[0], torch.from_numpy(keep))
        assert 0 < keep.sum() < len(x)
        torch.testing.assert_close(rule(t), torch.from_numpy(out), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("clustering", ["meanshift", "dbscan"])
@pytest.mark.parametrize("seed", range(4))
def test_signguard_on_the_whole_window_is_the_paper_algorithm(seed, clustering):
    x = attacked(seed, h=10 + seed // 2)
    keep, out, feats = ref_signguard(x, clustering)
    rule = SignGuard(5, window=1.0, clustering=clustering)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(rule.sign_features(t[None])[0], feats)
    assert torch.equal(rule.kept(t[None])[0], torch.from_numpy(keep))
    assert 0 < keep.sum() < len(x) and not keep[-5:].any()  # the flipped, scaled and orthogonal rows are out
    torch.testing.assert_close(rule(t), torch.from_numpy(out), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("seed", range(4))
def test_flame_without_noise_is_the_paper_algorithm(seed):
    x = attacked(seed, h=10 + seed // 2)
    keep, out = ref_flame(x)
    t = torch.from_numpy(x)
    rule = Flame(5, noise=0.0)
    assert torch.equal(rule.kept(t[None])[0], torch.from_numpy(keep))
    assert keep.sum() > len(x) / 2 and not keep[[-5, -4, -1]].any()  # opposite and orthogonal directions are out
    torch.testing.assert_close(rule(t), torch.from_numpy(out), rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- far and huge vectors
def sweep(magnitude: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return sweep_batch(magnitude, dtype)


def huge(dtype: torch.dtype) -> list[float]:
    return [1e3, 1e30, torch.finfo(dtype).max] + ([1e200] if dtype == torch.float64 else [])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dnc_filters_far_vectors_out_and_returns_the_honest_mean(dtype):
    # The copies dominate the top singular direction, take the f highest scores and are removed: the output is
    # the mean of the honest vectors, for every direction, sign pattern and magnitude up to the dtype's maximum.
    rule = get_aggregator("dnc", SWEEP_F)
    h = SWEEP_N - SWEEP_F
    for magnitude in huge(dtype):
        honest, x = sweep(magnitude, dtype)
        kept = rule.rule.kept(x)
        assert kept[:, :h].all() and not kept[:, h:].any(), magnitude
        out = rule(x)
        expected = honest.double().mean(0).to(dtype).expand_as(out)
        torch.testing.assert_close(out, expected, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)


def clipped_mean_of(rows: Tensor, bound: float) -> Tensor:
    """Mean of ``rows`` (float64) each clipped to norm ``bound``."""
    norms = rows.norm(dim=-1, keepdim=True)
    return (rows * (bound / norms).clamp(max=1.0)).mean(0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_signguard_filters_far_vectors_by_their_norm_and_clips_the_rest(dtype):
    # A row more than 3x the median norm fails the norm filter: no copy passes, and the output is the mean of the
    # honest rows that pass the sign filter, clipped to the median norm of all n rows (an honest norm here).
    rule = get_aggregator("signguard", SWEEP_F)
    h = SWEEP_N - SWEEP_F
    for magnitude in huge(dtype):
        honest, x = sweep(magnitude, dtype)
        kept = rule.rule.kept(x)
        out = rule(x)
        assert not kept[:, h:].any() and (kept.sum(-1) >= h // 2).all(), magnitude
        norms = honest.double().norm(dim=-1)
        bound = float(np.median(np.concatenate([norms.numpy(), [math.inf] * SWEEP_F])))
        for problem, row in zip(kept, out):
            expected = clipped_mean_of(honest.double()[problem[:h]], bound).to(dtype)
            torch.testing.assert_close(row, expected, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flame_keeps_far_vectors_only_along_the_honest_directions_and_clips_them(dtype):
    # Cosine distances ignore magnitude: the kept set is the same at every magnitude, a kept copy counts as its
    # direction times the median norm M (an honest norm here), and ||F|| <= M.
    rule = get_aggregator("flame", SWEEP_F, noise=0.0)
    h = SWEEP_N - SWEEP_F
    first = None
    for magnitude in huge(dtype):
        honest, x = sweep(magnitude, dtype)
        kept = rule.rule.kept(x)
        first = kept if first is None else first
        assert torch.equal(kept, first), magnitude
        out = rule(x)
        bound = float(np.median(np.concatenate([honest.double().norm(dim=-1).numpy(), [math.inf] * SWEEP_F])))
        _, unit = sweep(1.0, torch.float64)  # the copies' directions at magnitude 1
        for problem, row, units in zip(kept, out, unit):
            rows = torch.cat([honest.double()[problem[:h]], bound * units[h:][problem[h:]] / units[h:][problem[h:]]
                              .norm(dim=-1, keepdim=True)])
            expected = clipped_mean_of(rows, bound).to(dtype)
            torch.testing.assert_close(row, expected, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12)
            assert row.isfinite().all() and row.double().norm() <= bound * (1 + 1e-6)
    along_mean = [[name == "mean" and sign > 0 for sign in SIGNS[signs]] for name, signs in itertools.product(
        DIRECTIONS, SIGNS)]  # exactly the copies pointing along the honest mean join the honest cluster
    assert torch.equal(first[:, h:], torch.tensor(along_mean))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_all_at_the_dtype_maximum_give_that_row(spec, dtype):
    # Every rule keeps them all (f = 0) or n - f of them and averages; a sum of m terms max/m passes the range by
    # rounding for these m (10 in float32, 11 in float64) and is clamped back.
    top = torch.finfo(dtype).max
    for n, f in ((5, 2), (10 if dtype == torch.float32 else 11, 0)):
        x = torch.tensor([[top, -top, top / 2]] * n, dtype=dtype)
        out = get_aggregator(spec, f, **DETERMINISTIC[spec])(x)
        torch.testing.assert_close(out, x[0], rtol=1e-6, atol=0)
        assert out.isfinite().all()


@pytest.mark.parametrize("spec", SPECS)
def test_a_single_input_is_the_output(spec):
    x = torch.tensor([[3.0, -1.0, 0.5]])
    torch.testing.assert_close(get_aggregator(spec, 0, **DETERMINISTIC[spec])(x), x[0], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_distances_are_exact_symmetric_and_scale_free(dtype):
    from flwr_byz.aggregation.flame import cosine_distances

    x = torch.randn(9, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[4] = 0.0
    dist = cosine_distances(x.to(dtype)[None])[0]
    assert dist.dtype == torch.float64 and torch.equal(dist, dist.T) and not dist.diagonal().any()
    assert ((dist >= 0) & (dist <= 2)).all() and (dist[4, [i for i in range(9) if i != 4]] == 1).all()
    ref = 1 - torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1)
    keep = [i for i in range(9) if i != 4]
    close = dict(rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)
    torch.testing.assert_close(dist[keep][:, keep].fill_diagonal_(0), ref[keep][:, keep].fill_diagonal_(0), **close)
    top = torch.finfo(dtype).max
    torch.testing.assert_close(cosine_distances((x * 1e-30).to(dtype)[None])[0], dist, **close)
    far = x.clone().to(dtype)
    far[0] = top * far[0] / far[0].abs().max()
    torch.testing.assert_close(cosine_distances(far[None])[0], dist, rtol=0, atol=1e-6)


def test_flame_noise_at_the_dtype_boundary_stays_finite():
    top = torch.finfo(torch.float32).max
    x = torch.tensor([[top, top, -top]] * 5, dtype=torch.float32)
    assert get_aggregator("flame", 2, noise=10.0)(x).isfinite().all()


# ---------------------------------------------------------------- exact ties and duplicates: permutation invariance
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec, f, params, points",
    [
        ("dnc", 1, {}, [[-1], [0], [1]]),  # the two outer rows tie at the cut
        ("dnc", 1, {}, [[-2], [-1], [1], [2], [0]]),  # two ties straddle the cut
        ("signguard", 1, {"clustering": "dbscan"}, SQUARE),  # two sign clusters of equal size
        ("signguard", 1, {}, SQUARE),
        ("flame", 1, {"noise": 0.0}, SQUARE),
        ("flame", 1, {"noise": 0.0}, [[1, 0], [0, 1], [-1, 0], [0, -1], [1, 1]]),
    ],
)
def test_exact_ties_are_broken_the_same_way_in_every_order(dtype, spec, f, params, points):
    x = torch.tensor(points, dtype=dtype)
    agg = get_aggregator(spec, f, **params)
    orders = itertools.permutations(range(len(x))) if len(x) <= 5 else random_orders(len(x))
    assert same_in_every_order(agg, x, list(orders))


def test_dnc_breaks_a_tie_at_the_cut_towards_the_lexicographically_smaller_row():
    # -1 and 1 have equal scores and equal total distances: tie_order goes lexicographically; keep {-1, 0}.
    assert torch.equal(get_aggregator("dnc", 1)(torch.tensor([[1.0], [0.0], [-1.0]])), torch.tensor([-0.5]))


def test_signguard_features_are_sign_fractions_over_their_maximum():
    x = torch.tensor([[1.0, 1.0, -1.0, 0.0], [1.0, -1.0, -1.0, -1.0], [2.0, 3.0, 0.0, -0.0]])
    # fractions (pos, zero, neg): (1/2, 1/4, 1/4), (1/4, 0, 3/4), (1/2, 1/2, 0); maxima 1/2, 1/2, 3/4
    expected = [[1.0, 0.5, 1 / 3], [0.5, 0.0, 1.0], [1.0, 1.0, 0.0]]
    np.testing.assert_allclose(SignGuard(1, window=1.0).sign_features(x[None])[0], expected, rtol=1e-15, atol=0)
    no_zeros = SignGuard(1, window=1.0).sign_features(torch.tensor([[[1.0, -2.0], [3.0, 4.0]]]))[0]
    np.testing.assert_array_equal(no_zeros, [[0.5, 0.0, 1.0], [1.0, 0.0, 0.0]])


def test_signguard_gives_equal_sign_clusters_to_the_smaller_feature_row():
    # Window of one coordinate: rows 0, 1 are positive, 2, 3 negative, 4 zero (and too short). The two clusters
    # of size 2 tie; features (0, 0, 1) < (1, 0, 0), so the negative pair is kept (DBSCAN numbers the positive
    # pair first in this order).
    rule = get_aggregator("signguard", 1, clustering="dbscan", seed=0)
    coords = rule.rule.coordinates(2)
    x = torch.tensor(SQUARE, dtype=torch.float64)
    negative = x[:, coords.start] < 0
    assert torch.equal(rule.rule.kept(x[None])[0], negative)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicated_vectors_keep_the_output_permutation_invariant(spec, dtype):
    base = torch.randn(7, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.cat([base, base[:2], base[:1]]).to(dtype)  # 10 rows, 3 duplicates
    assert same_in_every_order(get_aggregator(spec, 2, **DETERMINISTIC[spec]), x, random_orders(len(x), 12))


@pytest.mark.parametrize("spec", SPECS)
def test_symmetric_on_attacked_inputs(spec):
    x = torch.from_numpy(attacked(7))
    agg = get_aggregator(spec, 5, **DETERMINISTIC[spec])
    assert same_in_every_order(agg, x, random_orders(len(x), 12))


# ---------------------------------------------------------------- batches, inputs, devices
@pytest.mark.parametrize("spec", SPECS)
def test_batch_equals_loop_and_the_input_is_untouched(spec):
    _, x = sweep(1e30, torch.float32)
    x = x[:6]
    before = x.clone()
    agg = get_aggregator(spec, SWEEP_F, b=0.5) if spec == "dnc" else get_aggregator(spec, SWEEP_F)
    batched = agg(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(batched, torch.stack([agg(xi) for xi in x]), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(spec, dtype):
    x = torch.from_numpy(attacked(2)).to(dtype)
    agg = get_aggregator(spec, 5, b=7) if spec == "dnc" else get_aggregator(spec, 5)
    agg = agg.for_round(3)
    out = agg(x.cuda())
    assert out.device.type == "cuda" and out.dtype == dtype
    torch.testing.assert_close(out.cpu(), agg(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- seeded draws: a pure function of (seed, round)
def test_dnc_draws_its_coordinates_from_seed_and_round():
    rule = DnC(1, niters=3, b=4, seed=5)
    for t in (0, 1, 6):
        gen = seeded_generator(5, t, "dnc")
        expected = [torch.randperm(20, generator=gen)[:4].sort().values for _ in range(3)]
        drawn = rule.for_round(t).samples(20)
        assert all(torch.equal(a, b) for a, b in zip(drawn, expected, strict=True))
    assert DnC(1, b=0.25).sample_size(20) == 5 and DnC(1, b=100).samples(20) == [None]
    draws = {tuple(torch.cat(rule.for_round(t).samples(20)).tolist()) for t in range(5)}
    assert len(draws) == 5
    later = rule.for_round(3)
    assert later is not rule and rule.round == 0 and later.round == 3


def test_signguard_draws_its_window_from_seed_and_round():
    rule = SignGuard(1, window=0.1, seed=2)
    for t in (0, 4):
        start = int(torch.randint(91, (1,), generator=seeded_generator(2, t, "signguard")))
        assert rule.for_round(t).coordinates(100) == slice(start, start + 10)
    assert len({rule.for_round(t).coordinates(100).start for t in range(6)}) > 1


def test_flame_noise_is_lambda_times_the_median_norm_times_the_rounds_draw():
    x = torch.from_numpy(attacked(1))
    median = float(np.median(x.norm(dim=-1).numpy()))
    quiet = get_aggregator("flame", 5, noise=0.0)(x)
    for t in (0, 3):
        z = torch.randn(x.shape[1], generator=seeded_generator(9, t, "flame"), dtype=torch.float64)
        noisy = get_aggregator("flame", 5, noise=0.01, seed=9).for_round(t)(x)
        torch.testing.assert_close(noisy, quiet + 0.01 * median * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec, params", [("dnc", {"b": 6}), ("signguard", {}), ("flame", {"noise": 0.01})])
def test_the_same_seed_and_round_give_the_same_output_and_other_rounds_differ(spec, params):
    # Server and adversary build their own copies: they agree round by round; rounds draw differently.
    x = torch.randn(11, 60, generator=torch.Generator().manual_seed(8), dtype=torch.float64) + 0.5
    server, adversary = (get_aggregator(spec, 3, seed=4, **params) for _ in range(2))
    outs = []
    for t in (1, 2, 3, 4):
        out = server.for_round(t)(x)
        assert torch.equal(out, adversary.for_round(t)(x)) and torch.equal(out, server.for_round(t)(x))
        outs.append(tuple(out.tolist()))
    assert len(set(outs)) > 1
    assert torch.equal(server(x), server.for_round(0)(x))


# ---------------------------------------------------------------- preconditions and parameters
def test_preconditions_name_what_failed_and_the_fix():
    with pytest.raises(ValueError, match=r"DNC needs n > 2f and n > c\*f \(c=1\), got n=6, f=3: use at least n=7"):
        get_aggregator("dnc", 3, n=6)
    with pytest.raises(ValueError, match=r"DNC needs n > 2f and n > c\*f \(c=3\), got n=6, f=2: use at least n=7"):
        get_aggregator("dnc", 2, c=3.0)(torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"SIGNGUARD needs n > 2f, got n=4, f=2: use at least n=5"):
        get_aggregator("signguard", 2)(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"FLAME needs n > 2f but receives 2.*at least n=5"):
        get_aggregator("bucketing+flame", 1, n=4)
    assert [get_aggregator(s, 2).min_n() for s in SPECS] == [5, 5, 5]
    assert get_aggregator("dnc", 2, c=1.1).min_n() == 5 and get_aggregator("dnc", 10, c=2.5).min_n() == 26
    assert get_aggregator("dnc", 1, c=2.5).min_n() == 4  # ceil(c f) = 3 rows removed, one kept
    assert DnC(10, c=1.1).removed == 11 and DnC(3, c=0.5).removed == 2  # c f = 11.000000000000002 is 11


@pytest.mark.parametrize(
    "spec, params, message",
    [
        ("dnc", {"niters": 0}, "niters >= 1"),
        ("dnc", {"b": 0}, r"b is a number of coordinates \(int >= 1\) or a fraction"),
        ("dnc", {"b": 1.5}, "fraction of them"),
        ("dnc", {"c": -1.0}, "c >= 0"),
        ("signguard", {"lower": 2.0}, "0 <= lower <= 1 <= upper"),
        ("signguard", {"upper": 0.5}, "0 <= lower <= 1 <= upper"),
        ("signguard", {"window": 0.0}, r"window is a fraction of the coordinates in \(0, 1\]"),
        ("signguard", {"clustering": "kmeans"}, "clustering must be one of meanshift, dbscan"),
        ("flame", {"noise": -0.1}, r"noise level \(lambda\) >= 0"),
        ("flame", {"niters": 3}, "valid parameters: noise, seed"),
    ],
)
def test_bad_parameters_say_what_is_accepted(spec, params, message):
    with pytest.raises(ValueError, match=message):
        get_aggregator(spec, 1, **params)


def test_empty_filters_give_the_zero_vector():
    # DnC, c = 2: each iteration keeps the one row nearest the mean on its coordinate, a different row for each
    # coordinate; two distinct coordinates leave an empty intersection.
    x = torch.tensor([[0.0, 1.0, 10.0], [1.0, 10.0, 0.0], [10.0, 0.0, 1.0]])
    dnc = DnC(1, niters=3, b=1, c=2.0, seed=0)
    assert len({int(s) for s in dnc.samples(3)}) > 1
    assert not dnc.kept(x[None]).any() and torch.equal(dnc(x), torch.zeros(3))
    # SignGuard: three rows of distinct signs, each its own cluster (three rows: zero bandwidth); the tie goes to
    # the zero row's features (0, 1, 0), the smallest, and its norm fails the norm filter.
    y = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])
    rule = SignGuard(0, window=1.0)
    assert not rule.kept(y[None]).any() and torch.equal(rule(y), torch.zeros(2))
    none = torch.zeros(1, 3, dtype=torch.bool)
    assert torch.equal(average(torch.ones(1, 3, 2), none), torch.zeros(1, 2))


# ---------------------------------------------------------------- as the defended rule
def test_jump_runs_against_each_rule_through_the_generic_search():
    gen = torch.Generator().manual_seed(0)
    d, n, f = 12, 9, 2
    target = torch.randn(d, generator=gen, dtype=torch.float64)

    def loss(theta: Tensor) -> Tensor:
        return 0.5 * ((theta - target) ** 2).sum(-1)

    theta = torch.zeros(d, dtype=torch.float64)
    honest = (theta - target) + 0.3 * torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    for spec in SPECS:
        agg = get_aggregator(spec, f, seed=1).for_round(2)
        assert span_aggregation(agg, honest, f) is None  # no span fast path: every candidate runs the rule
        ctx = AttackContext(n=n, f=f, aggregator=agg, lr=0.5, params=theta, honest_loss=loss)
        attack = get_attack("jump")
        a = attack(honest, ctx)
        assert a.shape == (d,) and a.isfinite().all(), spec
        stack = torch.cat([honest, a.expand(f, d)])
        assert float(loss((theta - 0.5 * agg(stack))[None])) >= float(loss((theta - 0.5 * agg(
            torch.cat([honest, honest.mean(0).expand(f, d)])))[None])) - 1e-9, spec  # no worse than lambda = 1


@pytest.mark.parametrize("spec", SPECS)
def test_the_engine_runs_jump_against_each_rule(spec):
    from flwr_byz.engine import Simulation
    from flwr_byz.settings import RunSettings

    settings = RunSettings(task="toy2d", aggregation=spec, num_byzantine=1, attack="jump", rounds=2, eval_every=2)
    sim = Simulation(dataclasses.replace(settings), nodes=3, device="cpu")
    for t in (1, 2):
        assert sim.step().round == t
    assert sim.theta.isfinite().all()


def test_flower_layer_knows_the_rules():
    from flwr_byz.flower import DefendedRule, RobustStrategy, defended_rule, tolerated_f

    strategy = RobustStrategy(aggregation="flame", f=1, aggregation_params={"noise": 0.0, "seed": 3})
    rule = defended_rule(strategy, 7)
    assert (rule.spec, rule.f, rule.params) == ("flame", 1, {"noise": 0.0, "seed": 3})
    assert [tolerated_f(DefendedRule(spec, 1), 9) for spec in SPECS] == [1, 4, 4]  # SignGuard, FLAME ignore f
    assert get_aggregator(rule.spec, rule.f, **rule.params).for_round(2).rule.round == 2
