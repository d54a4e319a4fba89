"""The honest workers of a run, in this process: :func:`~flwr_byz.tasks.worker_step` for every node, and what
each node sends (its model after the step) as the server reads it, a pseudo-gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from flwr_byz.flat import FlatLayout
from flwr_byz.seeds import seeded_generator
from flwr_byz.tasks import Task, WorkerConfig, sample_batch, stepped, worker_step


@dataclass(frozen=True)
class HonestReplies:
    """One round of the ``h`` honest nodes: the pseudo-gradients ``(theta - theta_i) / gamma`` the server
    computes from their replies ``(h, d)``, their new momenta, batch losses and sizes, and the integer
    buffers of their replies (BatchNorm's ``num_batches_tracked``; empty for most models)."""

    wire: Tensor
    momenta: Tensor
    losses: list[float]
    sizes: list[int]
    buffers: list[dict[str, Tensor]]


def batchable(model: nn.Module) -> bool:
    """Whether the honest steps of all workers can run as one ``vmap``: no dropout (its masks are seeded per
    node and drawn inside the model), no BatchNorm (statistics move in the forward pass), only trainable
    floating entries."""
    stochastic = any(isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)) for m in model.modules())
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return not stochastic and set(model.state_dict()) == names


class HonestWorkers:
    """The ``h`` honest nodes of a run: shards ``(x_i, y_i)`` of the training set, on ``device``.

    :meth:`step` is what the Flower clients compute, node after node (:func:`worker_step`, then the model
    :func:`stepped` sends), or, for a :func:`batchable` model whose batches have one size, all nodes in one
    ``vmap`` of the same maths (gradient, L2, clipping, momentum), to float rounding. :meth:`batched` steps
    ``k`` models at once the same way (planning adversaries).
    """

    def __init__(self, task: Task, shards: list[tuple[Tensor, Tensor]], cfg: WorkerConfig, seed: int,
                 model: nn.Module) -> None:
        self.task, self.shards, self.cfg, self.seed, self.model = task, shards, cfg, seed, model
        self.layout = FlatLayout.of(model.state_dict())
        sizes = {min(cfg.batch_size, len(x)) for x, _ in shards}
        self.vectorised = batchable(model) and len(sizes) == 1

    @property
    def h(self) -> int:
        return len(self.shards)

    def step(self, state: dict[str, Tensor], momenta: Tensor | None, round_: int, gamma: float) -> HonestReplies:
        """Round ``round_`` from the global model ``state`` with momenta ``(h, d)`` (``None``: ``m_0 = 0``)."""
        theta = self.layout.flatten(state)
        if self.vectorised:
            wire, momenta, losses = self.batched(theta[None], None if momenta is None else momenta[None], round_,
                                                 gamma)
            size = min(self.cfg.batch_size, len(self.shards[0][0]))
            return HonestReplies(wire[0], momenta[0], losses[0].tolist(), [size] * self.h, [{}] * self.h)
        wires, moms, losses, sizes, buffers = [], [], [], [], []
        for i, (x, y) in enumerate(self.shards):
            self.model.load_state_dict(state)
            result = worker_step(self.task, self.model, x, y, None if momenta is None else momenta[i], self.cfg,
                                 self.seed, i, round_)
            sent = stepped(self.model, state, result.momentum, gamma)
            wires.append((theta - self.layout.flatten(sent, theta.dtype)) / gamma)
            moms.append(result.momentum)
            losses.append(result.loss)
            sizes.append(result.batch_size)
            buffers.append({k: v.clone() for k, v in sent.items() if k not in self.layout.names})  # not views
        return HonestReplies(torch.stack(wires), torch.stack(moms), losses, sizes, buffers)

    def batch(self, round_: int) -> tuple[Tensor, Tensor]:
        """The ``h`` batches ``(h, b, ...)`` of round ``round_`` (:func:`worker_step`'s, augmented)."""
        xs, ys = [], []
        for i, (x, y) in enumerate(self.shards):
            idx = sample_batch(len(x), self.cfg.batch_size, self.seed, i, round_).to(x.device)
            xs.append(self.task.augment(x[idx], seeded_generator(self.seed, i, round_, "augment")))
            ys.append(y[idx])
        return torch.stack(xs), torch.stack(ys)

    def batched(self, theta: Tensor, momenta: Tensor | None, round_: int, gamma: float,
                batch: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Round ``round_`` of ``k`` runs at once: models ``theta (k, d)``, momenta ``(k, h, d)`` (or ``None``)
        to ``(wire (k, h, d), momenta (k, h, d), batch losses (k, h))``; needs :attr:`vectorised`."""
        cfg, layout = self.cfg, self.layout
        xb, yb = batch if batch is not None else self.batch(round_)

        def loss(flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return self.task.criterion(functional_call(self.model, layout.unflatten(flat), (x,)), y)

        grads, losses = vmap(vmap(grad_and_value(loss), in_dims=(None, 0, 0)), in_dims=(0, None, None))(theta, xb, yb)
        g = grads + cfg.l2 * theta[:, None]
        if cfg.clip is not None:
            g = g * (cfg.clip / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
        m = (1 - cfg.momentum) * g if momenta is None else cfg.momentum * momenta + (1 - cfg.momentum) * g
        sent = theta[:, None] - gamma * m  # the model each node sends, as the server reads it back
        return (theta[:, None] - sent) / gamma, m, losses.detach()
