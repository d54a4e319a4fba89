"""JUMP's honest-loss oracle: ``L_H`` on a fresh sample of the honest partitions every round."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flwr_byz.attacks.base import HonestLoss
from flwr_byz.seeds import seeded_generator
from flwr_byz.tasks.task import Task


@dataclass(frozen=True)
class LossSampling:
    """How JUMP estimates ``L_H``: ``size`` examples, and a cheaper screening estimate on the
    first ``screen`` of them (0: none), its forward passes under ``torch.autocast(screen_dtype)``
    (``None``: full precision). Both are split evenly over the honest partitions."""

    size: int
    screen: int = 0
    screen_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.screen <= self.size:
            raise ValueError(f"need size >= 1 and 0 <= screen <= size, got size={self.size}, screen={self.screen}")


@dataclass(frozen=True, eq=False)
class SampleLoss:
    """``L_H`` on one sample ``(x, y)``: flat parameters ``(k, d) -> (k,)`` (:meth:`Task.batched_loss`)."""

    task: Task
    model: torch.nn.Module
    x: Tensor
    y: Tensor
    autocast: torch.dtype | None = None

    def __call__(self, flat: Tensor) -> Tensor:
        return self.task.batched_loss(self.model, flat, self.x, self.y, autocast=self.autocast)

    def along(self, origin: Tensor, directions: Tensor) -> Callable[[Tensor], Tensor] | None:
        """``c (k, p) -> L(origin + c @ directions)`` from the ``p + 1`` models' logits where the task's logits are
        linear in the parameters (:meth:`Task.loss_along`, full precision only), else ``None``."""
        if not self.task.logits_linear or self.autocast is not None:
            return None
        return self.task.loss_along(self.model, origin, directions, self.x, self.y)


def loss_draws(parts: Sequence[np.ndarray], seed: int, round_: int, limit: int | None = None) -> list[Tensor]:
    """Each honest partition's examples in the seeded order of round ``round_`` (``(seed, round, "jump-loss")``),
    the first ``limit`` of each (``None``: all): JUMP's samples are prefixes of these, the same for any ``limit``."""
    gen = seeded_generator(seed, round_, "jump-loss")
    return [torch.as_tensor(p)[torch.randperm(len(p), generator=gen)[:limit]] for p in parts]


def honest_losses(
    task: Task, x: Tensor, y: Tensor, parts: Sequence[np.ndarray], sampling: LossSampling, seed: int, round_: int,
    device: torch.device | str = "cpu",
) -> tuple[HonestLoss, HonestLoss | None]:
    """``(L_H, screening L_H or None)`` on flat parameters ``(k, d) -> (k,)`` in round ``round_``.

    ``L_H`` is the mean loss over ``size // h`` examples of each of the ``h`` honest partitions
    (the first of each :func:`loss_draws`: equal weight per worker, the adversary knows the
    data); the screening estimate uses the first
    ``screen // h`` of each worker's draw (at least one when ``screen > 0``; none when that is
    not fewer examples than ``L_H``'s).
    """
    h = len(parts)
    size, screen = max(1, sampling.size // h), max(1, sampling.screen // h)
    draws = loss_draws(parts, seed, round_, size)
    model = task.build_model().to(device)

    def loss_on(per_worker: int, autocast: torch.dtype | None = None) -> HonestLoss:
        idx = torch.cat([draw[:per_worker] for draw in draws])
        return SampleLoss(task, model, x[idx].to(device), y[idx].to(device), autocast)

    screening = loss_on(screen, sampling.screen_dtype) if sampling.screen and screen < size else None
    return loss_on(size), screening
