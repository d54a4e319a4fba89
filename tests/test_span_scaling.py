"""JUMP's breakpoints (where NNM changes a neighbour set) are exact and cheap at any ``n`` (issue 21).

``SpanAggregation.breakpoints`` used to check every root of every ``q_i = D_ij`` and ``q_j = q_l`` with
NNM on two whole stacks, about ``n^4`` work (33 s per JUMP call at ``n = 100``); now they come from one
sort per row (``span.nnm_breakpoints``). Checked here against a dense scan of the neighbour sets that
NNM itself computes, against the former search (kept below as the reference of the damage), and by
counting the pairwise distances one JUMP call computes.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.aggregation import base as aggregation_base
from flwr_byz.aggregation.nnm import nearest_neighbours
from flwr_byz.attacks import AttackContext, get_attack
from flwr_byz.attacks.span import SpanAggregation, sides, span_aggregation
from test_jump import random_problem

RULES = ["nnm+gm", "nnm+cm", "nnm+mean", "nnm+tm"]


def honest_vectors(seed: int, h: int, d: int, spread: float) -> Tensor:
    """A common direction plus isotropic noise of relative size ``spread`` (float64)."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=gen, dtype=torch.float64)
    return mean + spread * mean.norm() * torch.randn(h, d, generator=gen, dtype=torch.float64) / d**0.5


def configuration(fast: SpanAggregation, lams: np.ndarray, f: int, m: int) -> Tensor:
    """NNM's neighbour sets ``(k, n, m)`` (sorted indices) of the coordinate stacks of ``lams``, as ``phi`` sees them."""
    rbar = fast.coords.mean(0)
    out = []
    for chunk in np.array_split(lams, max(1, len(lams) // 4096)):
        copies = (torch.as_tensor(chunk)[:, None] * rbar).unsqueeze(1).expand(-1, f, -1)
        stacks = torch.cat([fast.coords.expand(len(chunk), -1, -1), copies], dim=1)
        out.append(nearest_neighbours(stacks, m).sort(dim=-1).values)
    return torch.cat(out)


def check_against_scan(fast: SpanAggregation, breaks: np.ndarray, f: int, m: int, exact: bool = True,
                       canonical: Tensor | None = None) -> None:
    """Every change of the neighbour sets between two points of a dense scan has a breakpoint between
    them; with ``exact``, every breakpoint is a change (the sets just left and right of it differ).
    ``canonical`` maps each row to a representative of its duplicates (changes between duplicates ignored)."""
    assert np.all(np.isfinite(breaks)) and np.all(np.diff(breaks) > 0)
    lo, hi = min(-4.0, *breaks[:1]) - 1, max(6.0, *breaks[-1:]) + 1
    tails = np.logspace(0, 4, 200)
    grid = np.concatenate([np.linspace(lo, hi, 8001), lo - tails, hi + tails, *sides(breaks)])
    grid = np.unique(grid)
    config = configuration(fast, grid, f, m)
    if canonical is not None:
        config = canonical[config].sort(dim=-1).values
    changed = np.flatnonzero((config[1:] != config[:-1]).flatten(1).any(1).numpy())
    for i in changed:  # every change seen on the scan has a breakpoint in its interval
        assert np.any((breaks >= grid[i]) & (breaks <= grid[i + 1])), (grid[i], grid[i + 1])
    if exact and len(breaks):
        left, right = (configuration(fast, x, f, m) for x in sides(breaks))
        assert bool((left != right).flatten(1).any(1).all())


@pytest.mark.parametrize("n", range(5, 13))
@pytest.mark.parametrize("seed", range(3))
def test_breakpoints_are_where_a_dense_scan_sees_nnm_change(n: int, seed: int) -> None:
    """For NNM's own ``f`` and for an attack sending one copy more or fewer than NNM expects, any ``d``."""
    f_nnm = max(1, (n - 1) // 4)
    for f in (f_nnm, f_nnm + 1 - 2 * (seed % 2)):  # one copy more or fewer than NNM expects
        if f >= 1:
            honest = honest_vectors(100 * n + 10 * seed + f, n - f, d=[3, n, 2 * n][seed], spread=[0.3, 1.0, 3.0][seed])
            spans = [span_aggregation(get_aggregator(rule, f=f_nnm), honest, f) for rule in RULES]
            breaks = spans[0].breakpoints()
            assert breaks is not None and len(breaks) > 0
            for fast in spans[1:]:
                assert np.array_equal(fast.breakpoints(), breaks)  # they only depend on NNM
            check_against_scan(spans[0], breaks, f, n - f_nnm)


def test_breakpoints_cover_every_change_with_duplicate_honest_vectors() -> None:
    """Identical honest vectors (identical clients) stay identical only up to rounding in span coordinates;
    every change of a neighbour set between distinct vectors is still bracketed."""
    for seed in range(4):
        n, f = 9 + seed, 2 + seed % 2
        honest = honest_vectors(seed, n - f, d=4 + seed, spread=1.0)
        honest[1] = honest[0]
        honest[3] = honest[2]
        fast = span_aggregation(get_aggregator("nnm+cm", f=f), honest, f)
        representative = torch.unique(honest, dim=0, return_inverse=True)[1]
        canonical = torch.cat([representative, torch.full((f,), len(honest))])
        check_against_scan(fast, fast.breakpoints(), f, n - f, exact=False, canonical=canonical)


def test_rules_that_jump_elsewhere_report_no_breakpoints() -> None:
    honest = honest_vectors(0, 9, 6, 1.0)
    assert len(span_aggregation(get_aggregator("gm", f=3), honest, 3).breakpoints()) == 0
    assert span_aggregation(get_aggregator("nnm+krum", f=3), honest, 3).breakpoints() is None
    assert len(span_aggregation(get_aggregator("nnm+cm", f=0), honest, 3).breakpoints()) == 0  # NNM keeps all


class DistanceCounter:
    """Counts the entries of every ``pairwise_sq_distances`` call in ``flwr_byz`` (``k * n * n`` each) and
    stops a call that would pass ``cap`` (the search before issue 21 asks for ~``2 n^4`` in one call)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cap: int) -> None:
        self.entries, self.cap, original = 0, cap, aggregation_base.pairwise_sq_distances

        def counted(x: Tensor) -> Tensor:
            self.entries += x.shape[0] * x.shape[1] ** 2
            if self.entries > self.cap:
                raise AssertionError(f"{self.entries} pairwise distances, more than {self.cap}")
            return original(x)

        for module in list(sys.modules.values()):
            if (module.__name__ or "").startswith("flwr_byz") and getattr(module, "pairwise_sq_distances", None) is original:
                monkeypatch.setattr(module, "pairwise_sq_distances", counted)


def test_one_jump_call_costs_about_one_aggregation_per_scored_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """JUMP against NNM + GM at n = 100: the distances it computes are about those of aggregating each
    scored lambda once (``n^2`` each), not ``n^2`` per breakpoint per candidate."""
    n, f, d = 100, 20, 20
    gen = torch.Generator().manual_seed(0)
    honest = honest_vectors(1, n - f, d, spread=1.0)
    target = torch.randn(d, generator=gen, dtype=torch.float64)
    ctx = AttackContext(n=n, f=f, aggregator=get_aggregator("nnm+gm", f=f), lr=0.5,
                        params=torch.zeros(d, dtype=torch.float64),
                        honest_loss=lambda theta: ((theta - target) ** 2).sum(-1))
    counter = DistanceCounter(monkeypatch, cap=1000 * n * n)
    attack = get_attack("jump")
    attack(honest, ctx)
    scored = attack.metrics["jump-evals"]
    assert 10 < scored < 200
    assert counter.entries <= 2 * scored * n * n, (counter.entries, scored)
    breaks = span_aggregation(ctx.aggregator, honest, f).breakpoints()
    assert len(breaks) > 500  # many breakpoints: a search that paid per breakpoint would show


def reference_breakpoints(self: SpanAggregation) -> np.ndarray | None:
    """The breakpoints before issue 21: every root of ``q_i = D_ij`` and ``q_j = q_l``, kept where NNM's
    neighbour sets just left and right of it differ (two NNM stacks per root)."""
    pre = [type(stage).__name__ for stage in self.aggregation.pre]
    if type(self.aggregation.rule).__name__ not in ("Mean", "GeometricMedian", "CoordinateMedian", "TrimmedMean"):
        return None
    if not pre:
        return np.empty(0)
    if pre != ["NearestNeighborMixing"]:
        return None
    r = self.coords.cpu()
    rbar, sq = r.mean(0), (r * r).sum(1)
    a, b = float(rbar @ rbar), (-2 * r @ rbar).numpy()
    if a == 0:
        return np.empty(0)
    gaps = (sq[:, None] - torch.cdist(r, r) ** 2).numpy()
    disc = b[:, None] ** 2 - 4 * a * gaps
    root = np.sqrt(np.clip(disc, 0, None))
    real = disc >= 0
    quadratic = np.concatenate([((-b[:, None] - root) / (2 * a))[real], ((-b[:, None] + root) / (2 * a))[real]])
    slopes = b[:, None] - b[None, :]
    offsets = (sq[None, :] - sq[:, None]).numpy()
    nonzero = slopes != 0
    candidates = np.unique(np.concatenate([quadratic, offsets[nonzero] / slopes[nonzero]]))
    candidates = candidates[np.isfinite(candidates)]
    if not len(candidates):
        return candidates
    lams = torch.as_tensor(np.concatenate(sides(candidates)))
    copies = (lams[:, None] * rbar).unsqueeze(1).expand(-1, self.f, -1)
    stacks = torch.cat([r.expand(len(lams), -1, -1), copies], dim=1)
    config = nearest_neighbours(stacks, stacks.shape[1] - self.aggregation.pre[0].f).sort(dim=-1).values
    left, right = config[: len(candidates)], config[len(candidates) :]
    return candidates[(left != right).flatten(1).any(1).numpy()]


def test_the_new_breakpoints_reach_the_former_searchs_damage(monkeypatch: pytest.MonkeyPatch) -> None:
    """On ``test_jump``'s random problems JUMP's loss with the new breakpoints is at least the loss with the
    former ones (equal within 1e-12), and both give the same breakpoints up to rounding."""
    gaps = []
    for seed in range(6):
        for spec in ("nnm+cm", "nnm+gm", "nnm+mean"):
            for task in ("softmax", "quadratic"):
                honest, ctx = random_problem(seed, spec, task)
                new, old = get_attack("jump"), get_attack("jump")
                new(honest, ctx)
                fast = span_aggregation(ctx.aggregator, honest, ctx.f)
                with monkeypatch.context() as patch:
                    patch.setattr(SpanAggregation, "breakpoints", reference_breakpoints)
                    old(honest, ctx)
                    reference = fast.breakpoints()
                assert np.allclose(fast.breakpoints(), reference, rtol=1e-10, atol=1e-12)
                loss, before = new.metrics["jump-loss"], old.metrics["jump-loss"]
                gaps.append(loss - before)
                assert loss >= before - 1e-12 * max(1.0, abs(before)), (seed, spec, task, loss, before)
    assert len(gaps) == 36


@pytest.mark.parametrize("spec", ["cm", "tm"])
def test_coordinate_rules_alone_sort_the_honest_rows_once_and_equal_the_rule(spec: str) -> None:
    """CM and TM without pre-aggregation need no span (the honest rows are every candidate's): the candidate
    aggregates are clamps of the copies against the honest order statistics, equal to the rule on whole
    stacks, bit for bit."""
    h, f, d = 40, 10, 300
    honest = honest_vectors(3, h, d, 0.5).float()
    agg = get_aggregator(spec, f=f)
    fast = span_aggregation(agg, honest, f)
    assert fast.basis is None
    lams = torch.tensor([-1e6, -3.0, 0.0, 0.7, 1.0, 1.3, 40.0], dtype=torch.float64)
    stacks = torch.cat([honest.expand(len(lams), h, d), (lams.float()[:, None] * honest.mean(0)).unsqueeze(1)
                        .expand(len(lams), f, d)], dim=1)
    if spec == "cm":  # one order statistic: the same value
        assert torch.equal(fast(lams), agg(stacks))
    else:  # TM averages the kept values in another order
        torch.testing.assert_close(fast(lams), agg(stacks), rtol=1e-6, atol=1e-6)


def test_the_span_is_built_only_where_it_pays() -> None:
    """The basis costs O(h^2 d) once: kept for quadratic pipelines at any n and for GM while it repays its
    8 iterations per candidate; pipelines linear in n score their candidates directly past a few dozen rows."""
    def built(spec: str, h: int) -> bool:
        return span_aggregation(get_aggregator(spec, f=h // 4), honest_vectors(1, h, 50, 0.5), h // 4) is not None

    assert built("clipping+mean", 12) and not built("clipping+mean", 200)
    assert built("gm", 200) and not built("gm", 800)
    assert built("nnm+mean", 800) and built("krum", 400) and built("nnm+gm", 800)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_mean_alone_is_affine_in_lambda(weighted: bool) -> None:
    """The (weighted) mean of ``[honest, lambda gbar x f]`` is ``F(0) + lambda (F(1) - F(0))``: two aggregations
    for every candidate, equal to the rule on whole stacks (in the defence's row order) up to float32 rounding."""
    from flwr_byz.attacks.batching import copies_stack

    h, f, d = 40, 10, 300
    honest = honest_vectors(4, h, d, 0.5).float()
    weights = torch.rand(h + f, generator=torch.Generator().manual_seed(1)).tolist() if weighted else None
    agg = get_aggregator("mean", 0, weights=weights)
    order = torch.randperm(h + f, generator=torch.Generator().manual_seed(2))
    fast = span_aggregation(agg, honest, f, order)
    assert fast.affine is not None
    lams = torch.tensor([-1e6, -3.0, 0.0, 0.7, 1.0, 40.0], dtype=torch.float64)
    expected = agg(copies_stack(honest, lams.float()[:, None] * honest.mean(0), f, order))
    torch.testing.assert_close(fast(lams), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("spec", ["fltrust", "clipping+fltrust", "arc+fltrust"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fltrust_sees_only_the_sign_of_lambda(spec: str, dtype: torch.dtype) -> None:
    """FLTrust (after row-wise clippings) rescales every reply to ``||g0||``: ``lambda gbar`` enters only through
    ``sign(lambda)``. Three aggregations equal the rule on each whole stack, including huge and tiny lambdas and
    ``lambda = 0`` (a zero row, no trust), in the defence's row order; ``phi`` jumps only at 0."""
    from flwr_byz.attacks.batching import copies_stack
    from flwr_byz.attacks.span import SignAggregation

    h, f, d = 12, 3, 400
    honest = honest_vectors(5, h, d, 0.8).to(dtype)
    reference = honest.mean(0) + 0.3 * honest.std(0)  # g0: near the honest mean, not on it
    agg = get_aggregator(spec, f, **({"c": 0.5} if spec.startswith("clipping") else {})).with_reference(reference)
    order = torch.randperm(h + f, generator=torch.Generator().manual_seed(3))
    fast = span_aggregation(agg, honest, f, order)
    assert isinstance(fast, SignAggregation) and fast.breakpoints().tolist() == [0.0]
    lams = torch.tensor([-1e30, -1e6, -3.0, -1e-6, 0.0, 1e-30, 0.1, 1.0, 7.0, 1e6], dtype=torch.float64)
    expected = agg(copies_stack(honest, lams.to(dtype)[:, None] * honest.mean(0), f, order))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fast(lams), expected, rtol=tol, atol=tol * float(reference.norm()))
    negative, zero, positive = fast(torch.tensor([-1.0, 0.0, 1.0]))
    assert not torch.allclose(negative, positive) and not torch.allclose(zero, positive)


def test_jump_against_fltrust_aggregates_three_stacks_and_damages_as_the_whole_stacks(monkeypatch) -> None:
    """JUMP against FLTrust through the three sign aggregates reaches the honest loss the whole-stack path reaches
    (the same sign of lambda), aggregating three stacks instead of one per candidate."""
    from flwr_byz.aggregation.fltrust import FLTrust

    stacks: list[int] = []
    apply = FLTrust._apply
    monkeypatch.setattr(FLTrust, "_apply", lambda self, x: stacks.append(len(x)) or apply(self, x))
    honest, ctx = random_problem(0, "fltrust", "quadratic")  # a problem where trusting the copies overshoots
    ctx.aggregator = ctx.aggregator.with_reference(honest.mean(0) + honest.std(0))
    fast, whole = get_attack("jump"), get_attack("jump")
    a = fast(honest, ctx)
    assert sum(stacks) == 3 and fast.metrics["jump-losses"] <= 3
    plain = ctx.aggregator
    b = whole(honest, AttackContext(**{**ctx.__dict__, "aggregator": lambda x: plain(x)}))  # no sign path
    assert sum(stacks) - 3 == whole.metrics["jump-evals"] > 30
    assert fast.metrics["jump-lambda"] > 0 and whole.metrics["jump-lambda"] > 0
    assert fast.metrics["jump-loss"] == pytest.approx(whole.metrics["jump-loss"], rel=1e-9)
    torch.testing.assert_close(plain(torch.cat([honest, a.expand(ctx.f, -1)])),
                               plain(torch.cat([honest, b.expand(ctx.f, -1)])), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dnc_candidates_scored_on_the_sampled_columns_equal_the_rule(dtype: torch.dtype) -> None:
    """DnC's kept rows depend only on its sampled coordinates: candidates scored on those columns and averaged from
    the honest rows and the copies equal the rule on whole stacks (huge, tiny, zero and negative lambdas, in the
    defence's row order), and JUMP takes that path where the samples cover less than half the coordinates."""
    from flwr_byz.attacks.batching import copies_stack
    from flwr_byz.attacks.span import SampledAggregation

    h, f, d = 12, 3, 4000
    honest = honest_vectors(6, h, d, 1.5).to(dtype)
    agg = get_aggregator("dnc", f, b=200, niters=3).for_round(7)
    order = torch.randperm(h + f, generator=torch.Generator().manual_seed(4))
    fast = span_aggregation(agg, honest, f, order)
    assert isinstance(fast, SampledAggregation) and len(fast.columns) <= 600
    lams = torch.tensor([-1e30, -1e3, -2.0, 0.0, 1e-6, 0.5, 1.0, 1.3, 4.0, 1e6], dtype=torch.float64)
    expected = agg(copies_stack(honest, lams.to(dtype)[:, None] * honest.mean(0), f, order))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fast(lams), expected, rtol=tol, atol=tol * float(expected.abs().max()))
    kept = agg.rule.kept(copies_stack(honest, lams.to(dtype)[:, None] * honest.mean(0), f, None))
    assert kept[:, h:].any() and not kept[:, h:].all()  # some candidates keep their copies, some lose them
    assert span_aggregation(get_aggregator("dnc", f, b=3000), honest, f) is None  # samples cover most of d
    assert span_aggregation(get_aggregator("bucketing+dnc", f, b=200), honest, f) is None


def test_dnc_ties_at_a_cut_go_by_whole_rows() -> None:
    """Honest rows in pairs ``+- delta_k`` (so ``gbar = 0`` and the copies are zero rows): each pair scores alike
    on any coordinates, so removing 3 rows cuts the second pair. DnC breaks that tie on whole rows; the sampled
    path sees it and computes the candidate on its whole stack, so it still equals the rule."""
    from flwr_byz.attacks.batching import copies_stack

    gen = torch.Generator().manual_seed(8)
    deltas = [s * torch.randn(3000, generator=gen, dtype=torch.float64) for s in (3.0, 2.0, 1.0, 0.5, 0.25, 0.1)]
    honest = torch.stack([sign * delta for delta in deltas for sign in (1, -1)])
    agg = get_aggregator("dnc", 3, b=100, niters=2)
    fast = span_aggregation(agg, honest, 3)
    lams = torch.tensor([1.0, -5.0], dtype=torch.float64)
    x = copies_stack(honest, lams[:, None] * honest.mean(0), 3, None)
    _, tied = agg.rule.kept_on(x, agg.rule.samples(3000))
    assert tied.tolist() == [True, True]
    torch.testing.assert_close(fast(lams), agg(x), rtol=1e-12, atol=1e-12)
