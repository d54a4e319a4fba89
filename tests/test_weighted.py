"""Reply-weighted Mean and MultiKrum (Flower's FedAvg / MultiKrum weigh replies by ``num-examples``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from flower_helpers import reply
from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import AttackContext, JumpObjective
from flwr_byz.attacks.span import span_aggregation

X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)


# --- hand-worked values -------------------------------------------------------------------------


def test_weighted_mean_is_exact_on_a_hand_worked_example() -> None:
    # (1 * (1, 0) + 2 * (0, 1) + 5 * (2, 2)) / 8 = (11/8, 12/8), exact in binary
    agg = get_aggregator("mean", 0, weights=[1, 2, 5])
    assert torch.equal(agg(X), torch.tensor([1.375, 1.5], dtype=torch.float64))
    assert torch.equal(agg(X.float()), torch.tensor([1.375, 1.5]))  # the dtype of the rows
    assert torch.equal(get_aggregator("mean", 0)(X), torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_weights_follow_the_rows() -> None:
    agg = get_aggregator("mean", 0, weights=[5, 2, 1])
    assert torch.equal(agg(X), torch.tensor([5 / 8 + 2 / 8, 2 / 8 + 2 / 8], dtype=torch.float64))
    assert torch.equal(agg(X[[2, 1, 0]]), get_aggregator("mean", 0, weights=[1, 2, 5])(X))


# Five points on a line; with f = 1 Krum counts n - f - 2 = 2 neighbours:
# scores 0: 1 + 9 = 10, 1: 1 + 4 = 5, 3: 4 + 9 = 13, 7: 16 + 36 = 52, 100: huge.
LINE = torch.tensor([[0.0], [1.0], [3.0], [7.0], [100.0]], dtype=torch.float64)


def test_multikrum_averages_the_selected_rows_with_their_weights() -> None:
    # select 2: rows 1 (score 5) and 0 (score 10); weights 3 and 1 -> (3 * 0 + 1 * 1) / 4 = 0.25.
    # The unselected rows' weights (50 on the outlier) must not enter the normaliser.
    weights = [3, 1, 2, 2, 50]
    weighted = get_aggregator("multikrum", 1, select=2, weights=weights)
    assert torch.equal(weighted(LINE), torch.tensor([0.25], dtype=torch.float64))
    assert torch.equal(get_aggregator("multikrum", 1, select=2)(LINE), torch.tensor([0.5], dtype=torch.float64))
    # default select n - f = 4: rows 0, 1, 3, 7 with weights 3, 1, 2, 2 -> (0 + 1 + 6 + 14) / 8
    assert torch.equal(get_aggregator("multikrum", 1, weights=weights)(LINE),
                       torch.tensor([21 / 8], dtype=torch.float64))
    # permuting rows and weights together changes nothing
    perm = [4, 2, 0, 3, 1]
    permuted = get_aggregator("multikrum", 1, select=2, weights=[weights[i] for i in perm])
    assert torch.equal(permuted(LINE[perm]), torch.tensor([0.25], dtype=torch.float64))


# --- weights=None is today's rule, bit for bit; equal weights are the plain rule -----------------


def rows(seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(7, 1000), (3, 7, 1000)])
def test_without_weights_the_rules_are_unchanged_bit_for_bit(shape: tuple[int, ...]) -> None:
    x = rows(0, shape)
    assert torch.equal(get_aggregator("mean", 0)(x), x.mean(dim=-2))
    assert torch.equal(get_aggregator("mean", 0, weights=None)(x), x.mean(dim=-2))
    multikrum = get_aggregator("multikrum", 2, select=3)
    batch = x if x.dim() == 3 else x[None]
    best = multikrum.rule.order(batch)[..., :3]
    expected = torch.stack([b[i].mean(dim=0) for b, i in zip(batch, best, strict=True)])
    assert torch.equal(multikrum(x), expected if x.dim() == 3 else expected[0])
    assert torch.equal(get_aggregator("multikrum", 2, select=3, weights=None)(x), multikrum(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_weights_give_the_unweighted_rule(dtype: torch.dtype) -> None:
    x = rows(1, (4, 7, 300), dtype)
    for spec, params in (("mean", {}), ("multikrum", {"select": 4}), ("nnm+mean", {}), ("clipping+multikrum", {})):
        plain = get_aggregator(spec, 2, **params)(x)
        for w in ([3.0] * 7, torch.full((7,), 0.25, dtype=torch.float64)):
            weighted = get_aggregator(spec, 2, weights=w, **params)(x)
            assert torch.allclose(weighted, plain, rtol=0, atol=8 * torch.finfo(dtype).eps), spec


def test_batched_form_uses_the_same_weights_for_every_problem() -> None:
    x = rows(2, (5, 7, 40), torch.float64)
    w = [1.0, 4.0, 0.0, 2.0, 7.0, 3.0, 1.5]
    for spec, params in (("mean", {}), ("multikrum", {"select": 4})):
        agg = get_aggregator(spec, 2, weights=w, **params)
        batched = agg(x)
        assert batched.shape == (5, 40)
        for problem, out in zip(x, batched, strict=True):
            assert torch.allclose(out, agg(problem), rtol=1e-14, atol=1e-14)
    p = torch.tensor(w, dtype=torch.float64) / sum(w)
    assert torch.allclose(get_aggregator("mean", 0, weights=w)(x), torch.einsum("n,knd->kd", p, x), rtol=1e-14)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("weights", "match"), [
    ([1.0, -1.0, 2.0], "non-negative"),
    ([1.0, float("nan"), 2.0], "finite"),
    ([1.0, float("inf"), 2.0], "finite"),
    ([0, 0, 0], "positive"),
    ([1e308, 1e308, 1.0], "positive \\(finite\\) sum"),
    ([[1.0, 2.0, 3.0]], "one-dimensional"),
    (2.0, "one-dimensional"),
    ([True, False, True], "real numbers"),
    (["a", "b", "c"], "sequence of non-negative numbers"),
    ([1.0, [2.0]], "sequence of non-negative numbers"),
    (torch.tensor([1, 0, 1], dtype=torch.bool), "real numbers"),
])
@pytest.mark.parametrize("spec", ["mean", "multikrum"])
def test_invalid_weights_are_rejected_when_the_rule_is_built(weights: object, match: str, spec: str) -> None:
    with pytest.raises(ValueError, match=f"{spec.upper()} weights must .*{match}"):
        get_aggregator(spec, 0, weights=weights)


@pytest.mark.parametrize("spec", ["mean", "multikrum"])
def test_weights_must_match_the_rows_at_call_time(spec: str) -> None:
    w = [1.0, 2.0, 3.0, 4.0]
    agg = get_aggregator(spec, 0, weights=w)
    for n in (3, 5):
        with pytest.raises(ValueError, match=f"{spec.upper()} has 4 weights but receives n={n} rows"):
            agg(torch.randn(n, 3))
        with pytest.raises(ValueError, match=f"has 4 weights but receives n={n} rows"):
            agg(torch.randn(5, n, 3))  # batched
        with pytest.raises(ValueError, match=f"has 4 weights but receives n={n} rows"):
            get_aggregator(spec, 0, n=n, weights=w)  # the early check of a known n
    with pytest.raises(ValueError, match="has 4 weights but receives n=5 rows"):
        get_aggregator(f"nnm+{spec}", 1, weights=w)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="has 4 weights but receives n=5 rows"):
        agg.rule(torch.randn(5, 3))  # the bare rule as well
    with pytest.raises(ValueError, match="has 4 weights but receives n=5 rows"):
        agg.rule._apply(torch.randn(2, 5, 3))  # and its batched core, which pipelines call directly
    assert agg(torch.randn(4, 3)).shape == (3,)


def test_multikrum_needs_positive_weight_among_the_selected_rows() -> None:
    # select 2 picks rows 0 and 1 (see LINE); weight 0 on both: the weighted average is undefined
    agg = get_aggregator("multikrum", 1, select=2, weights=[0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"MULTIKRUM selected rows whose weights sum to 0 \(rows \[1, 0\]"):
        agg(LINE)
    assert torch.equal(get_aggregator("multikrum", 1, select=2, weights=[0, 1, 1, 1, 1])(LINE),
                       torch.tensor([1.0], dtype=torch.float64))  # one zero weight is fine


def test_weights_only_on_rules_flower_weighs_and_after_row_preserving_stages() -> None:
    for spec in ("krum", "cm", "tm", "gm", "bulyan", "cc"):
        with pytest.raises(ValueError, match="parameter\\(s\\) weights not accepted"):
            get_aggregator(spec, 1, weights=[1.0] * 7)
    with pytest.raises(ValueError, match="BUCKETING changes their number and order; weights are allowed only after"):
        get_aggregator("bucketing+mean", 1, weights=[1.0] * 6)
    with pytest.raises(ValueError, match="BUCKETING changes"):
        get_aggregator("nnm+bucketing+multikrum", 1, weights=[1.0] * 6)
    get_aggregator("bucketing+mean", 1)  # unweighted: allowed as before
    # after NNM, w_i weighs the mixed row i
    x = rows(3, (6, 5), torch.float64)
    w = [1.0, 2.0, 3.0, 0.0, 5.0, 1.0]
    nnm = get_aggregator("nnm+mean", 1).pre[0]
    expected = get_aggregator("mean", 0, weights=w)(nnm(x))
    assert torch.allclose(get_aggregator("nnm+mean", 1, weights=w)(x), expected, rtol=1e-14, atol=1e-14)


def test_weighted_rules_keep_their_weights_per_round_and_in_their_repr() -> None:
    agg = get_aggregator("multikrum", 1, select=2, weights=[3, 1, 2, 2, 50])
    assert torch.equal(agg.for_round(7)(LINE), agg(LINE))
    assert repr(agg.rule) == "MultiKrum(f=1, neighbors='n-f-2', weights=[3.0, 1.0, 2.0, 2.0, 50.0])"
    assert repr(get_aggregator("multikrum", 1).rule) == "MultiKrum(f=1, neighbors='n-f-2')"
    assert repr(get_aggregator("mean", 0, weights=torch.tensor([1, 2])).rule) == "Mean(f=0, weights=[1.0, 2.0])"
    assert get_aggregator("mean", 0, weights=[2.0**24 + 1, 1.0]).rule.weights[0] == 2**24 + 1  # kept in float64


# --- Flower's own aggregation --------------------------------------------------------------------

NUM_EXAMPLES = [10, 3, 50, 7, 25, 1, 40]
SHAPES = {"w": (3, 2), "b": (2,)}
GAMMA = 0.5


def flower_round(seed: int, num_examples: list[int]) -> tuple[dict[str, np.ndarray], list, torch.Tensor]:
    """``theta``, Flower replies ``theta_i = theta - gamma g_i`` (float32, node i carries ``num_examples[i]``)
    and the pseudo-gradients ``g_i = (theta - theta_i) / gamma`` as the hook computes them, float64 ``(n, d)``."""
    gen = np.random.default_rng(seed)
    theta = {k: (0.1 * gen.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
    n = len(num_examples)
    grads = gen.standard_normal((n, sum(int(np.prod(s)) for s in SHAPES.values())))
    grads[-1] += 8.0  # one far reply: MultiKrum's selection leaves it out
    replies, pseudo = [], []
    for i, (g, weight) in enumerate(zip(grads, num_examples, strict=True)):
        parts = np.split(g, np.cumsum([int(np.prod(s)) for s in SHAPES.values()])[:-1])
        model = {k: (theta[k] - GAMMA * p.reshape(SHAPES[k])).astype(np.float32) for (k, p) in zip(SHAPES, parts)}
        replies.append(reply(i + 1, model, {"num-examples": weight}))
        pseudo.append(np.concatenate([(theta[k].astype(np.float64) - model[k]).ravel() / GAMMA for k in SHAPES]))
    return theta, replies, torch.tensor(np.stack(pseudo))


def flat(theta: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.tensor(np.concatenate([np.asarray(theta[k], dtype=np.float64).ravel() for k in SHAPES]))


def flower_aggregate(strategy, replies) -> torch.Tensor:
    arrays, _ = strategy.aggregate_train(1, replies)
    return flat({k: arrays[k].numpy() for k in SHAPES})


@pytest.mark.parametrize("seed", range(3))
def test_weighted_mean_is_flower_fedavg(seed: int) -> None:
    theta, replies, g = flower_round(seed, NUM_EXAMPLES)
    flower = flower_aggregate(FedAvg(), replies)
    ours = flat(theta) - GAMMA * get_aggregator("mean", 0, weights=NUM_EXAMPLES)(g)
    assert torch.allclose(flower, ours, rtol=0, atol=1e-6)
    unweighted = flat(theta) - GAMMA * get_aggregator("mean", 0)(g)
    assert (flower - unweighted).abs().max() > 0.1  # the weights matter here


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("select", [2, 3, 5])
def test_weighted_multikrum_is_flower_multikrum(seed: int, select: int) -> None:
    theta, replies, g = flower_round(seed, NUM_EXAMPLES)
    flower = flower_aggregate(MultiKrum(num_malicious_nodes=2, num_nodes_to_select=select), replies)
    ours = flat(theta) - GAMMA * get_aggregator("multikrum", 2, select=select, weights=NUM_EXAMPLES)(g)
    assert torch.allclose(flower, ours, rtol=0, atol=1e-6)
    unweighted = flat(theta) - GAMMA * get_aggregator("multikrum", 2, select=select)(g)
    assert (flower - unweighted).abs().max() > 0.01  # the weights matter here


@pytest.mark.parametrize(("strategy", "spec", "f", "params"), [
    (Krum(num_malicious_nodes=2), "krum", 2, {}),  # one selected reply: its weight cancels
    (FedMedian(), "cm", 0, {}),
    (FedTrimmedAvg(beta=0.2), "tm", 1, {}),  # int(0.2 * 7) = 1 trimmed per side
    (Bulyan(num_malicious_nodes=1), "bulyan", 1, {"selection": "multikrum"}),
])
def test_flower_krum_median_trimmed_mean_and_bulyan_ignore_the_weights(strategy, spec, f, params) -> None:
    theta, replies, g = flower_round(4, NUM_EXAMPLES)
    flower = flower_aggregate(strategy, replies)
    ours = flat(theta) - GAMMA * get_aggregator(spec, f, **params)(g)
    assert torch.allclose(flower, ours, rtol=0, atol=1e-6)


# --- JUMP's span path: weights follow the rows in the defence's order ---------------------------


@pytest.mark.parametrize(("spec", "params"), [("mean", {}), ("multikrum", {"select": 5}), ("nnm+mean", {}),
                                              ("clipping+nnm+multikrum", {"c": 6.0})])
def test_span_path_of_a_weighted_rule_follows_the_defence_order(spec: str, params: dict) -> None:
    h, f, d = 7, 3, 40
    gen = torch.Generator().manual_seed(11)
    honest = torch.randn(d, generator=gen, dtype=torch.float64) + torch.randn(h, d, generator=gen, dtype=torch.float64)
    order = torch.randperm(h + f, generator=gen)
    weights = [float(w) for w in torch.randint(1, 20, (h + f,), generator=gen)]
    agg = get_aggregator(spec, f, weights=weights, **params)
    lams = torch.tensor([-30.0, -2.0, -0.5, 0.3, 1.0, 1.7, 4.0, 50.0], dtype=torch.float64)
    copies = (lams[:, None] * honest.mean(0)).unsqueeze(1).expand(-1, f, d)
    stacks = torch.cat([honest.expand(len(lams), h, d), copies], 1)
    generic = agg(stacks[:, order])
    fast = span_aggregation(agg, honest, f, order)
    assert fast is not None
    assert torch.allclose(fast(lams), generic, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(span_aggregation(agg, honest, f)(lams), generic, rtol=1e-3)  # order matters
    ctx = AttackContext(n=h + f, f=f, aggregator=agg, params=torch.zeros(d, dtype=torch.float64),
                        honest_loss=lambda theta: theta.square().sum(-1), order=order)
    phi = JumpObjective(honest, ctx, 2**20)
    assert phi.span is not None
    via_span = phi._aggregate(lams)[0]
    phi.span = None  # the generic path: the (k, n, d) stack in ctx.order
    assert torch.allclose(via_span, phi._aggregate(lams)[0], rtol=1e-9, atol=1e-9)


def test_span_path_of_unweighted_rules_ignores_the_order() -> None:
    honest = rows(5, (6, 30), torch.float64)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    lams = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for spec in ("mean", "multikrum", "nnm+cm"):
        agg = get_aggregator(spec, 3)
        assert span_aggregation(agg, honest, 3, order).order is None
        assert torch.equal(span_aggregation(agg, honest, 3, order)(lams), span_aggregation(agg, honest, 3)(lams))
