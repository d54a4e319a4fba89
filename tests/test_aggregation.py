"""Aggregation rules and pre-aggregators: hand-worked values, properties, preconditions."""

import math

import pytest
import torch

from flwr_byz.aggregation import RULES, get_aggregator, pairwise_sq_distances, sorting
from flwr_byz.aggregation.sorting import order_statistics

ROBUST_SPECS = ["mean", "cm", "tm", "gm", "krum", "multikrum", "bulyan", "cc", "nnm+cm", "nnm+tm", "nnm+gm",
                "nnm+krum", "nnm+bulyan", "clipping+cm"]


def f_for(spec):
    """f = 2 for the 9-vector property tests, 1 where the rule needs n >= 4f + 3 (Bulyan)."""
    return 1 if "bulyan" in spec else 2
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ---------------------------------------------------------------- exact values
def test_mean():
    assert torch.equal(get_aggregator("mean", 0)(t([[1, 2], [3, 6]])), t([2, 4]))


def test_median_even_n_averages_the_two_middle_values():
    x = t([[1, 10], [2, 20], [3, 30], [100, -5]])
    assert torch.equal(get_aggregator("cm", 1)(x), t([2.5, 15]))


def test_median_odd_n():
    assert torch.equal(get_aggregator("cm", 1)(t([[1], [5], [3]])), t([3]))


def test_trimmed_mean_drops_f_per_side_per_coordinate():
    x = t([[0, 5], [1, 4], [2, 3], [6, 2], [100, -50]])
    # col 0: drop 0 and 100 -> mean(1, 2, 6) = 3; col 1: drop -50 and 5 -> mean(2, 3, 4) = 3
    assert torch.allclose(get_aggregator("tm", 1)(x), t([3, 3]))
    assert torch.allclose(get_aggregator("tm", 2)(x), t([2, 3]))


def test_gm_one_smoothed_weiszfeld_step_from_zero():
    # b = (max(nu, 5), max(nu, 0)) = (5, 0.1): z = (0.2*[3,4] + 10*[0,0]) / 10.2
    out = get_aggregator("gm", 0, iterations=1, nu=0.1)(t([[3, 4], [0, 0]]))
    assert torch.allclose(out, t([0.6, 0.8]) / 10.2)


def test_gm_converges_to_the_median_in_one_dimension():
    out = get_aggregator("gm", 1, iterations=500, nu=1e-6)(t([[0], [1], [10]]))
    assert abs(out.item() - 1.0) < 1e-3


def test_gm_tolerance_stops_early_at_the_same_point():
    x = torch.randn(9, 4, dtype=torch.float64)
    long = get_aggregator("gm", 2, iterations=1000, start="mean")(x)
    early = get_aggregator("gm", 2, iterations=1000, start="mean", tol=1e-12)(x)
    assert torch.allclose(long, early, atol=1e-10)


def test_gm_with_tolerance_stops_each_problem_of_a_batch_on_its_own():
    x = torch.randn(3, 7, 4, dtype=torch.float64) * torch.tensor([1.0, 100.0, 0.01], dtype=torch.float64)[:, None, None]
    agg = get_aggregator("gm", 1, iterations=200, tol=1e-6)
    assert torch.equal(agg(x), torch.stack([agg(xi) for xi in x]))


@pytest.mark.parametrize("start", ["zero", "mean", "median"])
def test_gm_start_points_reach_the_same_median(start):
    x = torch.randn(7, 3, dtype=torch.float64)
    out = get_aggregator("gm", 1, iterations=300, nu=1e-8, start=start)(x)
    ref = get_aggregator("gm", 1, iterations=300, nu=1e-8, start="mean")(x)
    assert torch.allclose(out, ref, atol=1e-5)


POINTS = t([[0], [1], [2], [10], [11]])


def test_krum_original_uses_n_minus_f_minus_2_neighbours():
    # m = 2: scores 5, 2, 5, 65, 82 -> x_1
    assert torch.equal(get_aggregator("krum", 1)(POINTS), t([1]))


def test_krum_variant_uses_n_minus_f_minus_1_neighbours():
    # m = 3: scores 105, 83, 69, 146, 182 -> x_2
    assert torch.equal(get_aggregator("krum", 1, neighbors="n-f-1")(POINTS), t([2]))


def test_krum_breaks_the_mutual_nearest_neighbour_tie_the_same_way_in_any_order():
    # one neighbour (n=3, f=1, variant): 0 and 1 both score 1; total distances 26 vs 17 pick 1
    x = t([[0], [1], [5]])
    agg = get_aggregator("krum", 1, neighbors="n-f-1")
    for perm in ([0, 1, 2], [1, 0, 2], [2, 1, 0], [2, 0, 1], [0, 2, 1], [1, 2, 0]):
        assert torch.equal(agg(x[perm]), t([1]))


def test_multikrum_averages_the_best_scores():
    assert torch.equal(get_aggregator("multikrum", 1, neighbors="n-f-1", select=2)(POINTS), t([1.5]))
    # default select = n - f = 4 drops the worst score (x_4 = 11)
    assert torch.equal(get_aggregator("multikrum", 1, neighbors="n-f-1")(POINTS), t([3.25]))


def test_nnm_mixes_each_vector_with_its_nearest_neighbours():
    out = get_aggregator("nnm+mean", 1).pre[0](t([[0], [1], [2], [10]]))
    assert torch.allclose(out, t([[1], [1], [1], [13 / 3]]))


def test_static_clipping():
    out = get_aggregator("clipping+mean", 0, c=1.0).pre[0](t([[3, 4], [0.3, 0.4], [0, 0]]))
    assert torch.allclose(out, t([[0.6, 0.8], [0.3, 0.4], [0, 0]]))


def test_bucketing_averages_buckets_and_keeps_mass():
    x = torch.randn(5, 3, dtype=torch.float64)
    out = get_aggregator("bucketing+mean", 0, s=2, seed=3).pre[0](x)
    assert out.shape == (3, 3)
    # two full buckets of 2, one of 1: 2*b0 + 2*b1 + b2 = sum of x
    assert torch.allclose(2 * out[0] + 2 * out[1] + out[2], x.sum(0))
    same = get_aggregator("bucketing+mean", 0, s=1, seed=3).pre[0](x)
    assert torch.equal(same.sort(0).values, x.sort(0).values)


def test_bucketing_is_seeded_and_shares_its_permutation_across_the_batch():
    x = torch.randn(6, 4, dtype=torch.float64)
    a = get_aggregator("bucketing+mean", 0, s=2, seed=7).pre[0](x)
    b = get_aggregator("bucketing+mean", 0, s=2, seed=7).pre[0](x)
    assert torch.equal(a, b)
    batch = get_aggregator("bucketing+mean", 0, s=2, seed=7).pre[0](torch.stack([x, x]))
    assert torch.equal(batch[0], batch[1]) and torch.equal(batch[0], a)


def test_bulyan_selects_by_krum_then_averages_the_values_closest_to_the_median():
    # theta = 5 selections leave out +-100; median of {0, 1, 2, 3.5, 4} is 2; the beta = 3 closest: 1, 2, 3.5
    x = t([[0], [1], [2], [3.5], [4], [100], [-100]])
    assert torch.allclose(get_aggregator("bulyan", 1)(x), t([13 / 6]))
    assert torch.allclose(get_aggregator("bulyan", 1, selection="multikrum")(x), t([13 / 6]))
    with pytest.raises(ValueError, match=r"BULYAN needs n >= 4f \+ 3, got n=6, f=1"):
        get_aggregator("bulyan", 1, n=6)


def test_centered_clipping_one_step_from_zero():
    # clip_1((3, 4)) = (0.6, 0.8), (0.3, 0.4) is inside the ball: v = their mean
    out = get_aggregator("cc", 0, tau=1.0, iterations=1, start="zero")(t([[3, 4], [0.3, 0.4]]))
    assert torch.allclose(out, t([0.45, 0.6]))


def test_pairwise_distances_exact():
    d = pairwise_sq_distances(t([[[0, 0], [3, 4], [0, 1]]]))[0]
    assert torch.allclose(d, t([[0, 25, 1], [25, 0, 18], [1, 18, 0]]))


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize("spec", ROBUST_SPECS)
def test_permutation_invariance(spec):
    x = torch.randn(9, 6, dtype=torch.float64)
    agg = get_aggregator(spec, f_for(spec))
    assert torch.allclose(agg(x), agg(x[torch.randperm(9)]), atol=1e-12)


@pytest.mark.parametrize("spec", ["mean", "cm", "tm", "krum", "multikrum", "bulyan", "nnm+cm", "nnm+tm", "nnm+krum"])
@pytest.mark.parametrize("scale", [0.01, 3.0])
def test_positive_homogeneity(spec, scale):
    x = torch.randn(9, 6, dtype=torch.float64)
    agg = get_aggregator(spec, f_for(spec))
    assert torch.allclose(agg(scale * x), scale * agg(x), atol=1e-12)


@pytest.mark.parametrize("spec", ["mean", "cm", "tm", "krum", "multikrum", "bulyan", "cc", "nnm+cm", "nnm+gm"])
def test_translation_equivariance(spec):
    x = torch.randn(9, 6, dtype=torch.float64)
    shift = 5 * torch.randn(6, dtype=torch.float64)
    agg = get_aggregator(spec, f_for(spec), **({"start": "mean"} if spec.endswith("gm") else {}))
    assert torch.allclose(agg(x + shift), agg(x) + shift, atol=1e-9)


@pytest.mark.parametrize("spec", ROBUST_SPECS)
def test_batch_equals_loop(spec):
    x = torch.randn(4, 9, 6, dtype=torch.float64)
    agg = get_aggregator(spec, f_for(spec))
    batched = agg(x)
    assert batched.shape == (4, 6)
    assert torch.allclose(batched, torch.stack([agg(xi) for xi in x]), atol=1e-12)


@pytest.mark.parametrize("spec", ROBUST_SPECS + ["bucketing+nnm+cm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_no_mutation_dtype_and_device_kept(spec, dtype, device):
    x = torch.randn(2, 9, 5, dtype=dtype, device=device)
    before = x.clone()
    out = get_aggregator(spec, 1, **({"s": 1} if "bucketing" in spec else {}))(x)
    assert torch.equal(x, before)
    assert out.dtype == dtype and out.device == x.device and out.shape == (2, 5)


@pytest.mark.parametrize("spec", ["cm", "tm", "nnm+cm", "nnm+tm"])
@pytest.mark.parametrize("magnitude", [1e2, 1e8])
def test_coordinatewise_rules_stay_in_the_honest_range(spec, magnitude):
    honest = torch.randn(7, 5, dtype=torch.float64)
    byz = magnitude * torch.randn(3, 5, dtype=torch.float64)
    out = get_aggregator(spec, 3)(torch.cat([honest, byz]))
    assert (out >= honest.min(0).values - 1e-9).all() and (out <= honest.max(0).values + 1e-9).all()


@pytest.mark.parametrize("spec", ["krum", "nnm+krum", "multikrum", "bulyan"])
def test_krum_ignores_far_outliers(spec):
    honest = torch.randn(12, 5, dtype=torch.float64)
    byz = 1e6 + torch.randn(3, 5, dtype=torch.float64)
    out = get_aggregator(spec, 3)(torch.cat([honest, byz]))
    lo, hi = honest.min(0).values, honest.max(0).values
    assert (out >= lo - 1e-9).all() and (out <= hi + 1e-9).all()


@pytest.mark.parametrize("magnitude", [1e2, 1e5, 1e8])
def test_geometric_median_stays_in_a_ball_around_the_honest_vectors(magnitude):
    # For h > f: ||GM - y|| <= (2h / (h - f)) * max_{i in H} ||x_i - y|| for any y (Minsker 2015).
    honest = torch.randn(7, 5, dtype=torch.float64)
    byz = magnitude * torch.randn(3, 5, dtype=torch.float64)
    center = honest.mean(0)
    radius = (honest - center).norm(dim=1).max()
    out = get_aggregator("gm", 3, iterations=200, nu=1e-6, tol=1e-10)(torch.cat([honest, byz]))
    assert (out - center).norm() <= 2 * 7 / (7 - 3) * radius


def test_default_gm_with_eight_iterations_is_still_bounded():
    honest = torch.randn(12, 50)
    byz = 1e6 * torch.ones(3, 50)
    out = get_aggregator("nnm+gm", 3)(torch.cat([honest, byz]))
    assert out.norm() < 10 * honest.norm(dim=1).max()


# ---------------------------------------------------------------- errors
def test_preconditions_name_what_failed():
    with pytest.raises(ValueError, match=r"TM needs n > 2f, got n=5, f=3"):
        get_aggregator("tm", 3)(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"KRUM needs n > 2f \+ 2, got n=4, f=1"):
        get_aggregator("krum", 1, n=4)
    get_aggregator("krum", 1, neighbors="n-f-1", n=3)
    with pytest.raises(ValueError, match=r"GM needs n > 2f but receives 3.*at least n=9"):
        get_aggregator("bucketing+nnm+gm", 2, n=6)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_min_n_is_the_smallest_accepted_n(rule):
    agg = get_aggregator(rule, 2)
    agg.check(agg.min_n())
    with pytest.raises(ValueError):
        agg.check(agg.min_n() - 1) if agg.min_n() > 1 else agg.check(0)


def test_unknown_names_and_parameters_list_valid_choices():
    with pytest.raises(ValueError, match="valid rules: mean, cm, tm, gm, krum, multikrum"):
        get_aggregator("median-of-means", 1)
    with pytest.raises(ValueError, match="valid pre-aggregators: nnm, bucketing, clipping"):
        get_aggregator("nmm+cm", 1)
    with pytest.raises(ValueError, match="valid parameters: iterations, nu, start, tol"):
        get_aggregator("gm", 1, s=2)
    with pytest.raises(ValueError, match="start must be one of"):
        get_aggregator("gm", 1, start="random")
    with pytest.raises(ValueError, match="non-negative integer"):
        get_aggregator("cm", -1)


def test_bad_inputs_fail_clearly():
    agg = get_aggregator("cm", 0)
    with pytest.raises(ValueError, match="floating"):
        agg(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(n, d\) or \(k, n, d\)"):
        agg(torch.ones(3))


def test_spec_is_normalised():
    assert get_aggregator(" NNM + GM ", 1).spec == "nnm+gm"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_selection_network_is_exact_on_adversarial_rows(dtype: torch.dtype) -> None:
    # Rows large enough for the compiled network (CPU): exact ties across all rows, +-inf, +-finfo.max and
    # signed zeros; every selected rank equals torch.sort's bit for bit, as the eager network's does.
    n, ranks = 12, (0, 4, 7, 11)
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(n, sorting.FUSE_MIN_NUMEL + 5, generator=gen, dtype=dtype)
    rows[:, ::3] = rows[0, ::3].clone()
    big = torch.finfo(dtype).max
    rows[2, 1::7], rows[5, 2::11], rows[7, 1::13], rows[9, 2::17] = math.inf, -math.inf, big, -big
    rows[3, 1::19], rows[6, 1::19] = 0.0, -0.0
    expected = rows.sort(dim=0).values
    compiled = order_statistics(rows.unbind(0), ranks)
    assert sorting._fusion_works and sorting._compiled.cache_info().currsize > 0  # the compiled path ran
    eager = dict(zip(ranks, sorting._selection(n, ranks)(*rows.unbind(0)), strict=True))
    for r in ranks:
        assert torch.equal(compiled[r], expected[r]) and torch.equal(eager[r], expected[r])


def test_large_networks_stay_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """A selection network over more than FUSE_MAX_ROWS rows (CM at n = 500) would take minutes to compile: it
    runs eager even when asked to fuse, and still equals torch.sort."""
    def no_compile(*args):
        raise AssertionError("compiled a network of more than FUSE_MAX_ROWS rows")

    monkeypatch.setattr(sorting, "_compiled", no_compile)
    n = sorting.FUSE_MAX_ROWS + 1
    rows = torch.randn(n, sorting.FUSE_MIN_NUMEL, generator=torch.Generator().manual_seed(0))
    got = order_statistics(rows.unbind(0), (n // 2,), fuse=True)
    assert torch.equal(got[n // 2], rows.sort(dim=0).values[n // 2])
