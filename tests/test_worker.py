"""The honest D-SGD worker step: batches, L2, clipping, momentum, purity, and the lr schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import Task, WorkerConfig, get_task, lr_at, sample_batch, worker_step


def half_mse(out: Tensor, y: Tensor) -> Tensor:
    return ((out.squeeze(-1) - y) ** 2).mean() / 2


def linear() -> nn.Module:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    return model


LIN = Task("linear", "toy2d", linear, num_classes=0, criterion=half_mse)
X, Y = torch.eye(2), torch.zeros(2)  # residuals w.x - y = (1, 2): grad = mean_j r_j x_j = (0.5, 1.0)


def test_sample_batch_is_pure() -> None:
    a = sample_batch(100, 32, seed=1, node=7, round=3)
    assert a.dtype == torch.int64 and len(a) == 32 and len(set(a.tolist())) == 32 and 0 <= a.min() <= a.max() < 100
    assert torch.equal(a, sample_batch(100, 32, seed=1, node=7, round=3))
    for other in [(2, 7, 3), (1, 8, 3), (1, 7, 4)]:
        assert not torch.equal(a, sample_batch(100, 32, *other))
    assert sorted(sample_batch(5, 32, 0, 0, 1).tolist()) == [0, 1, 2, 3, 4]  # whole partition when small
    with pytest.raises(ValueError):
        sample_batch(0, 32, 0, 0, 1)


def test_gradient_l2_clip_momentum_by_hand() -> None:
    plain = worker_step(LIN, linear(), X, Y, None, WorkerConfig(batch_size=2), 0, 0, 1).momentum
    torch.testing.assert_close(plain, torch.tensor([0.5, 1.0]))
    cfg = WorkerConfig(batch_size=2, l2=0.1)
    g = torch.tensor([0.6, 1.2])  # + l2 * theta = + 0.1 * (1, 2)
    torch.testing.assert_close(worker_step(LIN, linear(), X, Y, None, cfg, 0, 0, 1).momentum, g)
    clipped = worker_step(LIN, linear(), X, Y, None, WorkerConfig(2, l2=0.1, clip=0.5), 0, 0, 1).momentum
    assert clipped.norm().item() == pytest.approx(0.5)
    torch.testing.assert_close(clipped, g * 0.5 / math.sqrt(1.8))
    unclipped = worker_step(LIN, linear(), X, Y, None, WorkerConfig(2, l2=0.1, clip=10.0), 0, 0, 1).momentum
    torch.testing.assert_close(unclipped, g)
    beta = WorkerConfig(2, l2=0.1, momentum=0.9)
    m1 = worker_step(LIN, linear(), X, Y, None, beta, 0, 0, 1).momentum
    torch.testing.assert_close(m1, 0.1 * g)  # m_0 = 0
    m_prev = torch.tensor([1.0, -1.0])
    m2 = worker_step(LIN, linear(), X, Y, m_prev, beta, 0, 0, 2).momentum
    torch.testing.assert_close(m2, 0.9 * m_prev + 0.1 * g)
    assert m2.dtype == torch.float32 and not m2.requires_grad


def test_non_trainable_entries_get_zero() -> None:
    def make() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))

    model = make()
    model[2].bias.requires_grad_(False)
    task = Task("bn", "toy2d", make, num_classes=0, criterion=half_mse)
    x, y = torch.randn(8, 3), torch.randn(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = worker_step(task, model, x, y, None, WorkerConfig(batch_size=8, l2=0.5), 0, 0, 1).momentum
    layout = FlatLayout.of(model.state_dict())
    parts = layout.unflatten(m)
    assert layout.names[-1] == "2.bias" and m.shape == (layout.numel,)
    for name in ("1.running_mean", "1.running_var", "2.bias"):
        assert torch.all(parts[name] == 0)
    assert torch.all(parts["0.weight"] != 0) and torch.all(parts["2.weight"] != 0)
    after = model.state_dict()
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])  # BN statistics move
    assert all(torch.equal(after[k], before[k]) for k in ("0.weight", "1.weight", "2.weight", "2.bias"))


def test_toy2d_step_is_the_exact_local_gradient() -> None:
    task = get_task("toy2d")
    x, y = task.load("train")
    theta, cfg = torch.tensor([1.75, -0.2]), WorkerConfig.for_task(task)
    for i in range(2):
        g = worker_step(task, task.build_model(), x[i : i + 1], y[i : i + 1], None, cfg, 0, i, 1).momentum
        e = math.exp(-float(((theta - x[i]) ** 2).sum()))
        torch.testing.assert_close(g, 2 * y[i] * e * (theta - x[i]))


def test_cnn_step_is_pure_and_flips_labels_by_input() -> None:
    task = get_task("cifar10")
    torch.manual_seed(0)
    model = task.build_model()
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))
    x0 = x.clone()
    cfg = WorkerConfig.for_task(task, batch_size=4)
    assert cfg == WorkerConfig(batch_size=4, l2=1e-2, clip=5.0, momentum=0.9)
    rng = torch.get_rng_state()
    a = worker_step(task, copy.deepcopy(model), x, y, None, cfg, 1, 2, 3).momentum
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    torch.manual_seed(123)  # dropout masks do not depend on the global RNG
    b = worker_step(task, copy.deepcopy(model), x, y, None, cfg, 1, 2, 3).momentum
    assert torch.equal(a, b) and torch.equal(x, x0)
    assert a.norm().item() == pytest.approx(0.1 * 5.0, rel=1e-5)  # clipped to C, then (1 - beta)
    assert not torch.equal(a, worker_step(task, copy.deepcopy(model), x, y, None, cfg, 1, 2, 4).momentum)
    flipped = worker_step(task, copy.deepcopy(model), x, 9 - y, None, cfg, 1, 2, 3).momentum  # LF: same step, labels 9 - y
    assert not torch.equal(a, flipped)


def test_lr_schedule() -> None:
    assert lr_at(5, 0.1) == 0.1
    cifar = get_task("cifar10").defaults
    schedule = [lr_at(t, cifar["lr"], cifar["lr_milestone"], cifar["lr_gamma"]) for t in (1, 1000, 1001, 1500)]
    assert schedule == pytest.approx([0.25, 0.25, 0.025, 0.025])  # paper Table 2
    with pytest.raises(ValueError):
        lr_at(0, 0.1)
