"""What every simulated honest node shares, whatever runs it (Flower nodes or the in-process engine):
the honest partitions of a run, the test set it is evaluated on and JUMP's honest-loss oracle."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from flwr_byz.attacks.base import HonestLoss
from flwr_byz.settings import RunSettings
from flwr_byz.tasks.honest_loss import honest_losses
from flwr_byz.tasks.partition import partition
from flwr_byz.tasks.task import Task, get_task


@lru_cache(maxsize=4)
def honest_partitions(settings: RunSettings, num_honest: int) -> tuple[Task, Tensor, Tensor, tuple]:
    """Task, full training set and the index arrays of the ``num_honest`` honest partitions.

    Cached per process: every node of a simulation shares one copy.
    """
    task = get_task(settings.task)
    x, y = task.load("train", settings.data_dir or None)
    if settings.task == "toy2d":
        if num_honest != len(x):
            raise ValueError(f"toy2d has exactly {len(x)} honest workers, got n - f = {num_honest}")
        parts = tuple(torch.arange(len(x)).reshape(num_honest, -1).numpy())
    else:
        parts = tuple(partition(y.numpy(), num_honest, settings.alpha_or_iid, settings.seed,
                                     scheme=settings.partition))
    return task, x, y, parts


def test_set(settings: RunSettings) -> tuple[Tensor, Tensor]:
    """The run's evaluation data: the test split, or ``eval-size`` examples of it drawn with the run's seed."""
    x, y = get_task(settings.task).load("test", settings.data_dir or None)
    if settings.eval_size:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(settings.seed))[: settings.eval_size]
        x, y = x[keep], y[keep]
    return x, y


def evaluated(settings: RunSettings, round_: int) -> bool:
    """Whether round ``round_`` is evaluated: round 0, every ``eval-every``-th and the last."""
    return round_ % settings.eval_every == 0 or round_ == settings.rounds


def honest_loss_oracle(settings: RunSettings, h: int, round_: int,
                       on: torch.device | str = "cpu") -> tuple[HonestLoss, HonestLoss | None]:
    """JUMP's ``(L_H, screening L_H)`` in round ``round_`` over the ``h`` honest partitions, on device ``on``
    (:func:`flwr_byz.tasks.honest_losses`, sampled as the settings say)."""
    task, x, y, parts = honest_partitions(settings, h)
    return honest_losses(task, x, y, parts, settings.loss_sampling(), settings.seed, round_, on)
