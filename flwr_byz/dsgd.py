"""The parts of one Robust D-SGD round that the Flower path (``OmniscientAdversary``, the Byzantine ClientApp,
``RobustStrategy``) and the in-process engine both need, written once.

* :func:`reply_order`: the seeded order in which the defence sees the replies (rank order: honest, then Byzantine);
* :func:`attack_rows`: that order as rows of the attack's stack ``[valid honest, Byzantine]``;
* :func:`attack_context`: the context a Byzantine node builds for its attack;
* :func:`pseudo_gradient`: what the server reads from a node's model, ``(theta - theta_i) / gamma_t``
  (LF's vector is the pseudo-gradient of the honest pipeline's model on flipped labels);
* :func:`buffer_median`: the new integer buffers (BatchNorm's ``num_batches_tracked``), the replies' median.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from flwr_byz.aggregation import Aggregation
from flwr_byz.attacks import AttackContext
from flwr_byz.attacks.base import HonestLoss
from flwr_byz.flat import FlatLayout
from flwr_byz.seeds import seeded_generator


def reply_order(rng: random.Random, n: int) -> list[int]:
    """Position ``i`` holds the rank of the ``i``-th reply the defence sees: one ``rng.shuffle`` of ``range(n)``,
    ranks ``0..h-1`` the honest nodes and ``h..n-1`` the Byzantine ones. Seeded runs are reproducible bit for bit
    although floating-point sums depend on the order."""
    order = list(range(n))
    rng.shuffle(order)
    return order


def attack_rows(order: Sequence[int], valid: Sequence[bool]) -> list[int]:
    """``order`` (over ``h = len(valid)`` honest ranks, then Byzantine ones) as rows of the attack's stack
    ``[valid honest..., Byzantine...]``: honest replies that were not valid are dropped, as the defence drops them."""
    h = len(valid)
    row, rows = 0, {}
    for rank, good in enumerate(valid):
        if good:
            rows[rank], row = row, row + 1
    return [rows[i] if i < h else row + i - h for i in order if i >= h or valid[i]]


def is_buffer(value: Tensor) -> bool:
    """Whether a model entry is an integer buffer (not part of the flat model ``theta``; median-aggregated)."""
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


def buffer_median(reference: Mapping[str, Tensor], replies: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """The integer buffers of the new model: for each :func:`is_buffer` entry of ``reference``, the element-wise
    median (the lower middle value) of the replies' values."""
    return {key: torch.stack([reply[key] for reply in replies]).median(dim=0).values
            for key, value in reference.items() if is_buffer(value)}


def pseudo_gradient(theta: Tensor, state: Mapping[str, Tensor], layout: FlatLayout, gamma: float) -> Tensor:
    """``(theta - theta_i) / gamma`` for the model ``state`` a node sends (its floating entries, ``layout``)."""
    return (theta - layout.flatten(state, theta.dtype).to(theta.device)) / gamma


def attack_context(
    rule: Aggregation, server_round: int, n: int, f: int, lr: float, theta: Tensor,
    order: Sequence[int], seed: int, rank: int, honest_loss: HonestLoss | None = None,
    screening_loss: HonestLoss | None = None, flipped: Tensor | None = None,
) -> AttackContext:
    """The context Byzantine node ``rank`` attacks with in round ``server_round``: the defended ``rule`` of the round
    (``rule.for_round``), ``n`` rows of which ``f`` Byzantine, the server step ``lr`` (``gamma_t * server_lr``)
    applied to the aggregate, the flat model ``theta``, the rows' ``order`` (:func:`attack_rows`), JUMP's honest losses, LF's
    flipped vector and randomness from ``(seed, round, rank, "attack")``."""
    return AttackContext(
        n=n, f=f, aggregator=rule.for_round(server_round), lr=lr, params=theta,
        honest_loss=honest_loss, screening_loss=screening_loss, flipped=flipped,
        generator=seeded_generator(seed, server_round, rank, "attack"),
        order=torch.tensor(list(order), device=theta.device),
    )
