"""What every attack sees (``AttackContext``) and what every attack is (``Attack``).

Vectors are in gradient sign convention: the server applies
``theta' = theta - lr * F(g_1, ..., g_n)`` to the honest vectors ``g_1..g_h`` and
the ``f`` Byzantine vectors, all equal to the attack's output ``a``.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from flwr_byz.attack_traits import TRAITS

Aggregator = Callable[[Tensor], Tensor]
"""Robust rule ``(n, d) -> (d,)``, batched ``(k, n, d) -> (k, d)``."""

HonestLoss = Callable[[Tensor], Tensor]
"""Honest loss ``L_H`` of flat parameter vectors, batched ``(k, d) -> (k,)``."""


@dataclass
class AttackContext:
    """The omniscient adversary's view of one round.

    Attributes:
        n: total number of vectors the server aggregates.
        f: number of Byzantine vectors among them; ``h = n - f`` are honest.
        aggregator: the defended rule ``F`` (needed by JUMP).
        lr: server step applied to the aggregate.
        params: current model ``theta`` as a flat ``(d,)`` tensor (JUMP).
        honest_loss: ``L_H`` on flat parameters ``(k, d) -> (k,)`` (JUMP).
        screening_loss: a cheaper estimate of ``L_H`` (a sub-sample, reduced precision) that JUMP
            ranks its candidates with before rescoring the best few with ``honest_loss``.
        flipped: the honest pipeline's vector on flipped labels ``9 - y`` (LF).
        generator: randomness for stochastic attacks (Gaussian, Mimic's start).
        order: ``(n,)`` row order in which the defence sees the stack ``[honest, Byzantine x f]``
            (``None``: that order); matters to order-dependent rules (bucketing) and weighted ones (``weights``
            follow the rows the rule receives).
    """

    n: int
    f: int
    aggregator: Aggregator | None = None
    lr: float = 1.0
    params: Tensor | None = None
    honest_loss: HonestLoss | None = None
    screening_loss: HonestLoss | None = None
    flipped: Tensor | None = None
    generator: torch.Generator | None = None
    order: Tensor | None = None

    def __post_init__(self) -> None:
        if self.f < 0 or self.n - self.f < 1:
            raise ValueError(f"need 0 <= f < n, got n={self.n}, f={self.f}")
        if self.order is not None and sorted(self.order.tolist()) != list(range(self.n)):
            raise ValueError(f"order must be a permutation of range(n={self.n}), got {self.order.tolist()}")

    @property
    def h(self) -> int:
        """Number of honest vectors ``n - f``."""
        return self.n - self.f


def relative_spread(honest: Tensor) -> float:
    """``max_i ||g_i - gbar|| / ||gbar||`` of honest vectors ``(h, d)``: the copies ``lambda gbar`` sit among
    them for ``|lambda - 1| <= spread`` (``inf`` when ``gbar = 0``)."""
    gbar = honest.mean(0)
    norm = float(gbar.norm())
    return float((honest - gbar).norm(dim=1).max()) / norm if norm > 0 else math.inf


class Attack(ABC):
    """A Byzantine strategy: ``attack(honest, ctx) -> a``, sent by all ``f`` Byzantine nodes.

    ``honest`` is the ``(h, d)`` stack of honest vectors; the result is a ``(d,)``
    tensor of the same dtype and device; ``honest`` is never modified.
    ``metrics`` holds scalars describing the last call, at least ``honest-spread`` (:func:`relative_spread`
    of the honest vectors: where SF, MinSum and JUMP's copies ``lambda gbar`` sit among them). ``shared``: every
    Byzantine node would compute the same vector (deterministic in the honest vectors and
    the context), so a simulation computes it once per round; attacks with per-node
    randomness, data or state set it to False. ``needs_loss``: the attack scores candidates with
    ``ctx.honest_loss`` (JUMP), so whoever runs it must provide that oracle. ``needs_flipped``: it sends
    ``ctx.flipped``, the honest pipeline's vector on flipped labels (LF), which whoever runs it computes.
    An attack whose ``name`` is in :data:`flwr_byz.attack_traits.TRAITS` (every registered one) takes these three
    traits from that table, the one place they are written (readable without torch); a class that states one of
    them otherwise fails when it is defined. State carried across rounds: :meth:`state_dict`.
    """

    name: ClassVar[str]
    shared: ClassVar[bool] = True
    needs_loss: ClassVar[bool] = False
    needs_flipped: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        listed = TRAITS.get(getattr(cls, "name", ""))
        if listed is None:
            return  # an attack outside the table states its own traits
        for trait, value in dataclasses.asdict(listed).items():
            stated = vars(cls).get(trait, value)
            if stated != value:
                raise TypeError(f"{cls.__name__} sets {trait} = {stated}, but flwr_byz.attack_traits.TRAITS"
                                f"[{cls.name!r}] has {trait} = {value}: change the table, the one place traits live")
            setattr(cls, trait, value)

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def __call__(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        if honest.ndim != 2 or honest.shape[0] != ctx.h:
            raise ValueError(
                f"{self.name}: expected the (h, d) = ({ctx.h}, d) honest vectors, got shape {tuple(honest.shape)}"
            )
        self.metrics = {}
        vector = self._attack(honest, ctx)
        self.metrics["honest-spread"] = relative_spread(honest)
        return vector

    @abstractmethod
    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        """The Byzantine vector for validated inputs."""

    def check_rule(self, aggregator: Aggregator) -> None:
        """Raise ``ValueError`` if the attack has nothing to send against ``aggregator`` (e.g. Fang against a rule
        it has no variant for); run settings call it before training. Most attacks attack any rule."""

    def reset(self) -> None:
        """Forget state carried across rounds (no-op for stateless attacks)."""

    def state_dict(self) -> dict[str, Tensor]:
        """State carried across rounds, as tensors (empty for stateless attacks).

        A Flower node keeps it in ``context.state`` between rounds, since a node's
        calls may run in different worker processes.
        """
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{self.name} is stateless, got state keys {sorted(state)}")
