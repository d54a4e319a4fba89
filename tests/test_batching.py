"""Candidate stacks in chunks: every searching attack keeps one batched call of the rule under its cap, and the cap
changes how the work is cut, never the result."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import AttackContext, batching, get_attack

H, F, D = 12, 3, 20_000  # one candidate's stack: 15 x 20,000 = 300,000 entries, 3 fit in 2^20

CASES = [("jump", "cc"), ("jump", "signguard"), ("alie-opt", "nnm+cm"), ("agr-tailored", "krum"),
         ("agr-tailored", "tm"), ("fang", "krum")]
"""JUMP against rules it scores through stacks (no span path), the scale searches on a distance and on selection
(these with ``lookahead=5``: up to 31 probes a call)."""


BUILD = batching.copies_stack  # the real one: each run records its own stacks only


def problem(spec: str) -> tuple[Tensor, AttackContext]:
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(D, generator=gen, dtype=torch.float64)
    params = torch.zeros(D, dtype=torch.float64)
    honest = -target + 0.5 * torch.randn(H, D, generator=gen, dtype=torch.float64)
    ctx = AttackContext(n=H + F, f=F, aggregator=get_aggregator(spec, f=F), lr=0.5, params=params,
                        honest_loss=lambda theta: 0.5 * ((theta - target) ** 2).sum(-1))
    return honest, ctx


def run(attack: str, spec: str, monkeypatch: pytest.MonkeyPatch, **params: object) -> tuple[Tensor, list[int]]:
    """The attack's vector and the entries of every stack it built."""
    sizes: list[int] = []

    def recording(honest: Tensor, vectors: Tensor, f: int, order: Tensor | None) -> Tensor:
        stack = BUILD(honest, vectors, f, order)
        sizes.append(stack.numel())
        return stack

    monkeypatch.setattr(batching, "copies_stack", recording)
    honest, ctx = problem(spec)
    if attack != "jump":
        params = {"lookahead": 5, **params}
    return get_attack(attack, **params)(honest, ctx), sizes


def test_default_caps() -> None:
    assert batching.batch_elems(torch.device("cpu")) == 2**20
    assert batching.batch_elems(torch.device("cuda")) == 2**26
    assert batching.batch_elems(torch.device("cpu"), 5) == 5


@pytest.mark.parametrize("attack, spec", CASES)
def test_stacks_stay_under_the_cap_and_the_result_does_not_move(attack: str, spec: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    vector, sizes = run(attack, spec, monkeypatch)  # the CPU default, 2^20
    assert max(sizes) <= 2**20 and len(sizes) > 1, sizes
    one = (H + F) * D
    tight, tight_sizes = run(attack, spec, monkeypatch, max_batch_elems=one)  # one candidate a call
    assert set(tight_sizes) == {one}
    whole, whole_sizes = run(attack, spec, monkeypatch, max_batch_elems=2**40)
    assert len(whole_sizes) < len(sizes) < len(tight_sizes)  # the cap cuts the same candidates into more calls
    assert sum(whole_sizes) == sum(sizes) == sum(tight_sizes)  # and none is dropped or scored twice
    torch.testing.assert_close(vector, whole, rtol=0, atol=0)
    torch.testing.assert_close(tight, whole, rtol=0, atol=0)


@pytest.mark.parametrize("attack", ["jump", "alie-opt", "agr-tailored", "fang"])
@pytest.mark.parametrize("value", [0, -3, 1.5, True])
def test_bad_caps_fail_at_construction(attack: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{attack}: max_batch_elems must be a positive integer, got {value!r}"):
        get_attack(attack, max_batch_elems=value)
