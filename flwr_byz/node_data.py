"""What every simulated honest node shares, whatever runs it (Flower nodes or the in-process engine):
the honest partitions of a run, the test set it is evaluated on and JUMP's honest-loss oracle; and what the
server holds for FLTrust: the root set held out of them and its own update on it."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from flwr_byz.attacks.base import HonestLoss
from flwr_byz.settings import RunSettings
from flwr_byz.tasks.honest_loss import honest_losses
from flwr_byz.seeds import seeded_generator
from flwr_byz.tasks.partition import partition
from flwr_byz.tasks.task import Task, get_task
from flwr_byz.tasks.worker import stepped, worker_step

SERVER = -1  # the server's node index in the seeds of its own step (nodes are 0, 1, ...)


@lru_cache(maxsize=4)
def honest_partitions(settings: RunSettings, num_honest: int) -> tuple[Task, Tensor, Tensor, tuple]:
    """Task, full training set and the index arrays of the ``num_honest`` honest partitions (of the training
    examples outside the root set, :func:`root_indices`, if the run has one).

    Cached per process: every node of a simulation shares one copy.
    """
    task = get_task(settings.task)
    x, y = task.load("train", settings.data_dir or None)
    if settings.task == "toy2d":
        if num_honest != len(x):
            raise ValueError(f"toy2d has exactly {len(x)} honest workers, got n - f = {num_honest}")
        parts = tuple(torch.arange(len(x)).reshape(num_honest, -1).numpy())
    else:
        pool = np.setdiff1d(np.arange(len(y)), root_indices(y, settings.root_size, settings.seed))
        parts = tuple(pool[p] for p in partition(y.numpy()[pool], num_honest, settings.alpha_or_iid, settings.seed,
                                                 scheme=settings.partition))
    return task, x, y, parts


def root_indices(y: Tensor, size: int, seed: int) -> np.ndarray:
    """The server's root set: ``size`` training indices, class-balanced (``size // C`` of each of the ``C``
    classes, one more for the first ``size mod C``), drawn by a permutation seeded by ``(seed, "root")``."""
    if size == 0:
        return np.empty(0, dtype=np.int64)
    classes = torch.unique(y)
    gen = seeded_generator(seed, "root")
    picked = []
    for c, label in enumerate(classes.tolist()):
        members = torch.nonzero(y == label).flatten()
        take = size // len(classes) + (c < size % len(classes))
        picked.append(members[torch.randperm(len(members), generator=gen)[:take]])
    return np.sort(torch.cat(picked).numpy())


class TrustedUpdate:
    """The server's own step on its root set (FLTrust's ``g_0``): :func:`~flwr_byz.tasks.worker_step` with the
    run's honest hyper-parameters and a momentum of its own across rounds, as an honest node on the root data
    would (node index :data:`SERVER` in the seeds). Calling it with the global model's state, the round and the
    client step returns the state that step reaches (a node's reply): the pseudo-gradient is ``g_0``."""

    def __init__(self, settings: RunSettings, on: torch.device | str = "cpu") -> None:
        task = get_task(settings.task)
        x, y = task.load("train", settings.data_dir or None)
        idx = torch.as_tensor(root_indices(y, settings.root_size, settings.seed))
        self.task, self.x, self.y = task, x[idx].to(on), y[idx].to(on)
        self.model = task.build_model().to(on)
        self.settings, self.momentum = settings, None

    def __call__(self, state: dict[str, Tensor], round_: int, gamma: float) -> dict[str, Tensor]:
        self.model.load_state_dict(state)
        result = worker_step(self.task, self.model, self.x, self.y, self.momentum, self.settings.worker(),
                             self.settings.seed, SERVER, round_)
        self.momentum = result.momentum
        return stepped(self.model, state, result.momentum, gamma)


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
