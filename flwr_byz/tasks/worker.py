"""The honest worker of Robust D-SGD with local momentum, as a pure function.

Both the Flower client and the in-process engine call :func:`worker_step`, so the
two cannot drift apart. Round ``t`` of honest node ``i`` (paper, Table 2;
Karimireddy et al., 2021; Farhadkhani et al., 2022):

    g_t = grad L_i(theta_t; batch_t) + l2 * theta_t
    g_t <- g_t * min(1, C / ||g_t||)                   (clipping, if C is set)
    m_t = beta * m_{t-1} + (1 - beta) * g_t,  m_0 = 0

and the node sends ``m_t``; the Flower client returns ``theta_t - gamma_t * m_t`` on
the trainable entries (and its model's updated BatchNorm statistics on the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from flwr_byz.flat import FlatLayout
from flwr_byz.seeds import derived_seed, seeded_generator

if TYPE_CHECKING:
    from flwr_byz.tasks.task import Task


def lr_at(round: int, lr: float, milestone: int = 0, gamma: float = 0.1) -> float:
    """Step size ``gamma_t`` of (1-based) round ``t``: ``lr``, times ``gamma`` after round ``milestone``
    (``milestone = 0``: constant). CIFAR-10 (Table 2): ``lr_at(t, 0.25, 1000)`` is 0.25 for t <= 1000, then 0.025."""
    if round < 1:
        raise ValueError(f"rounds start at 1, got {round}")
    return lr * gamma if milestone and round > milestone else lr


def sample_batch(num_examples: int, batch_size: int, seed: int, node: int, round: int) -> Tensor:
    """``min(batch_size, num_examples)`` distinct indices in ``[0, num_examples)``.

    A pure function of ``(seed, node, round)``: the same triple gives the same batch.
    """
    if num_examples < 1 or batch_size < 1:
        raise ValueError(f"need num_examples >= 1 and batch_size >= 1, got {num_examples}, {batch_size}")
    gen = seeded_generator(seed, node, round, "batch")
    return torch.randperm(num_examples, generator=gen)[:batch_size]


@dataclass(frozen=True)
class WorkerStep:
    """Result of :func:`worker_step`: new momentum ``m_t`` (flat float32), batch loss, batch size."""

    momentum: Tensor
    loss: float
    batch_size: int


@dataclass(frozen=True)
class WorkerConfig:
    """Hyper-parameters of the honest step: batch size ``b``, ``l2``, clip ``C``, momentum ``beta``."""

    batch_size: int
    l2: float = 0.0
    clip: float | None = None
    momentum: float = 0.0

    @classmethod
    def for_task(cls, task: Task, **overrides: float | int | None) -> WorkerConfig:
        """The task's paper defaults (clip 0 = none), with ``overrides``."""
        d = {k: task.defaults[k] for k in ("batch_size", "l2", "clip", "momentum")}
        d["clip"] = d["clip"] or None
        return cls(**{**d, **overrides})  # type: ignore[arg-type]


def worker_step(
    task: Task,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    momentum: Tensor | None,
    cfg: WorkerConfig,
    seed: int,
    node: int,
    round: int,
) -> WorkerStep:
    """One honest step on local data ``(x, y)``: the new momentum ``m_t`` (flat, float32), the loss
    of the batch before the step and the batch size.

    ``momentum`` is ``m_{t-1}`` (``None`` for ``m_0 = 0``). The flat vectors follow
    ``FlatLayout.of(model.state_dict())``; entries that are not trainable parameters
    (BatchNorm running statistics) get gradient 0. The batch, its augmentation and
    the dropout masks depend only on ``(seed, node, round)``; the caller's RNG is left
    alone. The model is put in train mode and its BatchNorm statistics move with the
    forward pass; nothing else is changed. Label flipping calls this with transformed
    labels, e.g. ``num_classes - 1 - y``.
    """
    idx = sample_batch(len(x), cfg.batch_size, seed, node, round).to(x.device)
    xb = task.augment(x[idx], seeded_generator(seed, node, round, "augment"))
    model.train()
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(derived_seed(seed, node, round, "dropout"))  # dropout masks, without touching the caller's RNG
        loss = task.loss(model, xb, y[idx])
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    state = model.state_dict()
    layout = FlatLayout.of(state)
    parts = {k: torch.zeros_like(v) for k, v in state.items() if k in layout.names}
    with torch.no_grad():
        for (k, p), grad in zip(params.items(), grads):
            parts[k] = (grad if grad is not None else torch.zeros_like(p)) + cfg.l2 * p
        g = layout.flatten(parts, torch.float32)
        if cfg.clip is not None:
            g = g * min(1.0, cfg.clip / max(g.norm().item(), 1e-12))
        m = (1 - cfg.momentum) * g if momentum is None else cfg.momentum * momentum.to(g) + (1 - cfg.momentum) * g
    return WorkerStep(m, loss.item(), len(idx))


def stepped(model: nn.Module, theta: dict[str, Tensor], momentum: Tensor, gamma: float) -> dict[str, Tensor]:
    """The state an honest node sends: ``theta - gamma * m`` on the trainable entries of ``model``, its
    other entries (BatchNorm statistics after :func:`worker_step`'s forward pass) as they are now."""
    layout = FlatLayout.of(theta)
    moved = layout.unflatten(layout.flatten(theta) - gamma * momentum.to(next(iter(theta.values())).device))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: moved[k] if k in trainable else v for k, v in model.state_dict().items()}
