"""Learning tasks: a model, its data, its loss, and the paper's D-SGD hyper-parameters."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import datasets, models

CLOSED_FORM_BATCH = 4096  # examples per product of Task.batched_loss when the task has batched_logits


@dataclass(frozen=True)
class Task:
    """A learning task.

    ``defaults`` holds the paper's hyper-parameters, the one source every entry point
    (the Flower app, ``flwr-byz stress``, benchmarks) falls back to: ``lr``, ``lr_milestone``
    and ``lr_gamma`` (the schedule of :func:`flwr_byz.tasks.worker.lr_at`), ``batch_size``,
    ``clip`` (``C``, 0 for no clipping), ``l2``, ``rounds`` (``T``) and ``momentum`` (``beta``).
    ``num_classes`` is 0 for a task that is not a classifier (toy2d). ``batched_logits``, for
    cross-entropy classifiers whose logits of many parameter vectors have a closed batched
    form (logistic regression), maps state entries with a leading ``k`` and images to
    ``(N, k, classes)`` logits, so :meth:`batched_loss` runs all models in one product.
    ``jump_sample`` is JUMP's default ``(honest-loss sample, screening sample)`` in examples
    per round (``flwr_byz.tasks.LossSampling``), sized to the model's forward cost.
    ``logits_linear``: the logits are linear in the parameters (a model without hidden layers, logistic regression),
    so the loss anywhere in a subspace follows from the logits of its basis (:meth:`loss_along`).
    """

    name: str
    dataset: str
    make_model: Callable[[], nn.Module]
    num_classes: int
    defaults: dict[str, Any] = field(default_factory=dict)
    criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    hflip: bool = False
    batched_logits: Callable[[dict[str, Tensor], Tensor], Tensor] | None = None
    jump_sample: tuple[int, int] = (1024, 0)
    logits_linear: bool = False

    def build_model(self) -> nn.Module:
        """A fresh model, initialised from torch's global RNG (seed it for determinism)."""
        return self.make_model()

    def load(self, split: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
        """The full ``split`` as ``(x, y)`` tensors; shared and cached, treat them as read-only."""
        return datasets.load(self.dataset, split, data_dir)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Mean loss of ``model`` on the batch ``(x, y)``, in the model's current mode."""
        return self.criterion(model(x), y)

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Training augmentation: each image flipped horizontally w.p. 1/2 if ``hflip``, else ``x``."""
        if not self.hflip:
            return x
        flip = torch.rand(len(x), generator=generator).to(x.device) < 0.5
        return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> tuple[float, float]:
        """``(mean loss, accuracy)`` on ``(x, y)`` in eval mode (accuracy is NaN for non-classifiers)."""
        was_training = model.training
        model.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out = model(x[i : i + batch_size])
                yb = y[i : i + batch_size]
                total += self.criterion(out, yb).item() * len(yb)
                if self.num_classes:
                    correct += int((out.argmax(-1) == yb).sum())
        model.train(was_training)
        return total / len(x), (correct / len(x) if self.num_classes else math.nan)

    def _closed_form(self, entries: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Mean cross entropy ``(k,)`` from :attr:`batched_logits`."""
        assert self.batched_logits is not None
        return _cross_entropy(self.batched_logits(entries, x), y)

    def loss_along(self, model: nn.Module, origin: Tensor, directions: Tensor, x: Tensor,
                   y: Tensor) -> Callable[[Tensor], Tensor]:
        """``c (k, p) -> (L(origin + c_1 @ directions), ..., L(origin + c_k @ directions))`` on ``(x, y)``, for a
        task with :attr:`logits_linear`: ``z(origin + c D) = z(origin) + sum_i c_i z(D_i)``, so the ``p + 1``
        models ``origin, D_1, ..., D_p`` (flat, ``(d,)`` and ``(p, d)``) run once and each ``c`` costs ``N p``
        multiply-adds per class instead of a forward pass (in the logits' dtype)."""
        if not self.logits_linear or self.batched_logits is None:
            raise ValueError(f"task {self.name!r}: the loss along a subspace needs logits linear in the parameters")
        flat = torch.cat([origin[None], directions.to(origin)])
        with torch.no_grad():
            logits = self.batched_logits(FlatLayout.of(model.state_dict()).unflatten(flat), x)  # (N, p + 1, C)
        base, basis = logits[:, 0], logits[:, 1:].movedim(1, 0).flatten(1)  # (N, C), (p, N C)

        def loss(c: Tensor) -> Tensor:
            combined = (c.to(basis) @ basis).view(len(c), *base.shape) + base  # (k, N, C)
            return _cross_entropy(combined.transpose(0, 1), y)

        return loss

    def batched_loss(self, model: nn.Module, flat: Tensor, x: Tensor, y: Tensor, batch_size: int | None = None,
                     autocast: torch.dtype | None = None) -> Tensor:
        """Eval-mode losses ``(L(theta_1), ..., L(theta_k))`` on ``(x, y)`` of ``flat`` ``(k, d)``.

        ``theta_j`` fills the floating entries of ``model.state_dict()`` (``FlatLayout``
        order, BatchNorm statistics included); integer buffers come from ``model``.
        ``L`` is the mean of ``criterion`` over the examples, ``batch_size`` at a time
        (default: 64 on CPUs, where small batches stay in cache; 1024 on accelerators).
        Where the task has :attr:`batched_logits`, all ``k`` models run in one product over up to
        ``CLOSED_FORM_BATCH`` examples at a time (default; the logits are only ``(N, k, classes)``:
        on MNIST logistic regression 1,024 examples in one product cost a third of 16 products of 64).
        Otherwise the models run one after another (``functional_call``; a ``vmap`` over
        the ``k`` models turns convolutions into grouped ones, about 2.5x slower per model
        on CPU), image batches and convolution kernels in channels-last layout (another
        1.2-1.4x on CPU). ``autocast`` (e.g. ``torch.bfloat16``) runs the forward passes under
        ``torch.autocast``: about 2x faster again on CPUs with bf16 units, ~1e-4 off.
        Differentiable in ``flat``.
        """
        entries = FlatLayout.of(model.state_dict()).unflatten(flat)
        closed_form = self.batched_logits is not None
        states = [] if closed_form else [_candidate(entries, j) for j in range(len(flat))]
        batch_size = batch_size or (CLOSED_FORM_BATCH if closed_form else 64 if flat.device.type == "cpu" else 1024)
        was_training = model.training
        model.eval()
        total = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
        for i in range(0, len(x), batch_size):
            xb, yb = _channels_last(x[i : i + batch_size]), y[i : i + batch_size]
            with torch.autocast(flat.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                if closed_form:
                    losses = self._closed_form(entries, xb, yb)
                else:
                    losses = torch.stack([self.criterion(functional_call(model, state, (xb,)), yb) for state in states])
            total = total + losses.to(total) * len(yb)
        model.train(was_training)
        return total / len(x)


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross entropy ``(k,)`` of logits ``(N, k, classes)`` for targets ``y`` ``(N,)``."""
    picked = logits.gather(-1, y.view(-1, 1, 1).expand(-1, logits.shape[1], 1)).squeeze(-1)
    return (logits.logsumexp(-1) - picked).mean(0)


def _channels_last(t: Tensor) -> Tensor:
    """``t`` in channels-last layout if it is a 4-D (image batch or convolution kernel) tensor."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _candidate(entries: dict[str, Tensor], j: int) -> dict[str, Tensor]:
    """The state of model ``j`` from entries with a leading ``k``, kernels channels-last."""
    return {name: _channels_last(value[j]) for name, value in entries.items()}


def paper(lr: float, batch_size: int, clip: float, l2: float, rounds: int, momentum: float,
          lr_milestone: int = 0, lr_gamma: float = 0.1) -> dict[str, Any]:
    """A task's D-SGD hyper-parameters (``clip = 0``: no clipping; ``lr_milestone = 0``: constant step)."""
    return {"lr": lr, "lr_milestone": lr_milestone, "lr_gamma": lr_gamma, "batch_size": batch_size, "clip": clip,
            "l2": l2, "rounds": rounds, "momentum": momentum}


_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        # The 2D problem of the paper's section 4: exact gradients, gamma = 1.2, T = 100.
        Task("toy2d", "toy2d", models.Toy2d, num_classes=0, criterion=models.toy_loss,
             defaults=paper(lr=1.2, batch_size=1, clip=0.0, l2=0.0, rounds=100, momentum=0.0)),
        # Table 2, MNIST.
        Task("mnist", "mnist", models.mnist_cnn, num_classes=10, jump_sample=(256, 64),
             defaults=paper(lr=0.1, batch_size=32, clip=2.0, l2=1e-4, rounds=800, momentum=0.9)),
        # Table 3: the efficiency-power study (no L2).
        Task("mnist-logreg", "mnist", models.mnist_logreg, num_classes=10, batched_logits=models.linear_logits,
             logits_linear=True,
             defaults=paper(lr=0.7, batch_size=32, clip=2.0, l2=0.0, rounds=640, momentum=0.9)),
        Task("fashion-mnist", "fashion-mnist", models.mnist_cnn, num_classes=10, jump_sample=(256, 64),
             defaults=paper(lr=0.1, batch_size=32, clip=2.0, l2=1e-4, rounds=800, momentum=0.9)),
        # Table 2, CIFAR-10: gamma = 0.25 for t <= 1000, then 0.025.
        Task("cifar10", "cifar10", models.cifar_cnn, num_classes=10, hflip=True, jump_sample=(256, 32),
             defaults=paper(lr=0.25, lr_milestone=1000, lr_gamma=0.1, batch_size=64, clip=5.0, l2=1e-2,
                            rounds=1500, momentum=0.9)),
    )
}
TASKS: tuple[str, ...] = tuple(_TASKS)


def get_task(name: str, **params: Any) -> Task:
    """Task ``name`` (one of :data:`TASKS`) with ``params`` overriding its ``defaults``."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    task = _TASKS[name]
    unknown = sorted(set(params) - set(task.defaults))
    if unknown:
        raise ValueError(f"unknown parameters {unknown} for task {name!r}; valid: {', '.join(task.defaults)}")
    return dataclasses.replace(task, defaults={**task.defaults, **params})


def prepare(name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False) -> str:
    """Make the data of task ``name`` available locally; a one-line summary (see ``datasets.prepare``)."""
    return datasets.prepare(get_task(name).dataset, data_dir, download)


def flip_labels(y: Tensor, num_classes: int = 10) -> Tensor:
    """LF's labels (paper, Table 5): ``num_classes - 1 - y``, i.e. ``9 - y`` for the paper's 10-class tasks."""
    return num_classes - 1 - y
