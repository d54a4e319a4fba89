"""Tasks: registry, paper architectures, losses, evaluation and the batched honest-loss oracle."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

import pytest
import torch
from torch import nn

from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import TASKS, LossSampling, get_task, honest_losses, loss_draws
from flwr_byz.tasks.models import Toy2d

Z = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
B = torch.tensor([0.8, 1.2])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names_and_errors() -> None:
    assert TASKS == ("toy2d", "mnist", "mnist-logreg", "fashion-mnist", "cifar10")
    with pytest.raises(ValueError, match="valid: toy2d, mnist, mnist-logreg, fashion-mnist, cifar10"):
        get_task("imagenet")
    with pytest.raises(ValueError, match=r"unknown parameters \['lrr'\].*batch_size"):
        get_task("mnist", lrr=0.1)


def test_overrides_do_not_leak_into_registry() -> None:
    assert get_task("mnist", lr=0.05, batch_size=8).defaults["lr"] == 0.05
    assert get_task("mnist").defaults == {
        "lr": 0.1, "lr_milestone": 0, "lr_gamma": 0.1, "batch_size": 32, "clip": 2.0, "l2": 1e-4, "rounds": 800,
        "momentum": 0.9,
    }  # fmt: skip


def test_paper_defaults() -> None:
    cifar = get_task("cifar10").defaults
    assert (cifar["batch_size"], cifar["clip"], cifar["l2"], cifar["rounds"]) == (64, 5.0, 1e-2, 1500)
    logreg = get_task("mnist-logreg").defaults
    assert (logreg["lr"], logreg["rounds"], logreg["l2"], logreg["momentum"]) == (0.7, 640, 0.0, 0.9)
    assert get_task("toy2d").defaults["lr"] == 1.2


def test_mnist_cnn_architecture() -> None:
    model = get_task("mnist").build_model()
    assert n_params(model) == 1_199_882
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (128, 9216), (128,), (10, 128), (10,)]
    dropouts = [(type(m), m.p) for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))]
    assert dropouts == [(nn.Dropout2d, 0.25), (nn.Dropout, 0.5)]  # channels after the pool, as in K22's code
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert n_params(get_task("fashion-mnist").build_model()) == 1_199_882


def test_cifar_cnn_architecture() -> None:
    model = get_task("cifar10").build_model()
    assert isinstance(model, nn.Sequential)
    # convs 1792 + 36928 + 73856 + 147584, BN affine 2 * (64 + 64 + 128 + 128), L 8192*128+128, L 1290
    assert n_params(model) == 1_310_922
    kinds = "".join({nn.Conv2d: "C", nn.ReLU: "R", nn.BatchNorm2d: "B", nn.MaxPool2d: "M", nn.Dropout: "D",
                     nn.Linear: "L", nn.Flatten: ""}[type(m)] for m in model)  # fmt: skip
    assert kinds == "CRBCRBMDCRBCRBMDLRDL"
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.25, 0.25, 0.25]
    layout = FlatLayout.of(model.state_dict())
    assert layout.numel == 1_310_922 + 2 * (64 + 64 + 128 + 128)  # + BN running mean and var
    model.eval()
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_logreg_and_toy_models() -> None:
    logreg = get_task("mnist-logreg").build_model()
    assert n_params(logreg) == 7_850
    assert logreg(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    toy = get_task("toy2d").build_model()
    assert isinstance(toy, Toy2d)
    assert torch.equal(toy.theta.detach(), torch.tensor([1.75, -0.2]))


def test_build_model_is_seeded() -> None:
    task = get_task("mnist-logreg")
    torch.manual_seed(3)
    a = task.build_model().state_dict()
    torch.manual_seed(3)
    b = task.build_model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_toy2d_data_and_analytic_gradient() -> None:
    task = get_task("toy2d")
    for split in ("train", "test"):
        x, y = task.load(split)
        assert torch.equal(x, Z) and torch.equal(y, B)
    model = task.build_model()
    assert isinstance(model, Toy2d)
    theta = model.theta.detach().clone()
    for i in range(2):
        loss = task.loss(model, Z[i : i + 1], B[i : i + 1])
        (grad,) = torch.autograd.grad(loss, [model.theta])
        e = math.exp(-float(((theta - Z[i]) ** 2).sum()))
        assert loss.item() == pytest.approx(1 - B[i].item() * e)
        # dL_i/dtheta = 2 b_i exp(-||theta - z_i||^2) (theta - z_i)
        torch.testing.assert_close(grad, 2 * B[i] * e * (theta - Z[i]))


def test_evaluate_loss_accuracy_and_mode() -> None:
    task = get_task("mnist-logreg")
    model = task.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x, y = torch.randn(50, 1, 28, 28), torch.arange(50) % 10
    model.train()
    loss, acc = task.evaluate(model, x, y, batch_size=7)
    assert loss == pytest.approx(math.log(10)) and acc == pytest.approx(0.1)  # ties: argmax is class 0
    assert model.training
    loss, acc = get_task("toy2d").evaluate(get_task("toy2d").build_model(), Z, B)
    assert math.isnan(acc) and loss > 0


def test_augment_flips_cifar_only() -> None:
    x = torch.randn(64, 3, 32, 32)
    x0 = x.clone()
    assert get_task("mnist").augment(x, torch.Generator().manual_seed(0)) is x
    cifar = get_task("cifar10")
    out = cifar.augment(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert torch.all(flipped ^ kept) and 10 < int(flipped.sum()) < 54
    assert torch.equal(out, cifar.augment(x, torch.Generator().manual_seed(0)))
    assert torch.equal(x, x0)


def _loop_losses(task_name: str, model: nn.Module, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list:
    task = get_task(task_name)
    layout = FlatLayout.of(model.state_dict())
    out = []
    for vec in flat:
        clone = task.build_model()
        state = model.state_dict()
        state.update(layout.unflatten(vec))
        clone.load_state_dict(state)
        clone.eval()
        with torch.no_grad():
            out.append(task.loss(clone, x, y).item())
    return out


@pytest.mark.parametrize(("name", "shape"), [
    ("mnist-logreg", (1, 28, 28)), ("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32)), ("toy2d", (2,)),
])
def test_batched_loss_matches_loop(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    task = get_task(name)
    model = task.build_model()
    x = torch.randn(10, *shape)
    y = torch.randint(0, 10, (10,)) if task.num_classes else torch.rand(10)
    model.train()
    with torch.no_grad():
        model(x)  # move BatchNorm statistics away from their init
    layout = FlatLayout.of(model.state_dict())
    flat = layout.flatten(model.state_dict()) + 0.05 * torch.randn(3, layout.numel)
    got = task.batched_loss(model, flat, x, y, batch_size=4)
    assert got.shape == (3,)
    torch.testing.assert_close(got.tolist(), _loop_losses(name, model, flat, x, y), rtol=1e-5, atol=1e-5)
    assert model.training


def test_batched_loss_toy2d_is_the_honest_loss_and_differentiable() -> None:
    task = get_task("toy2d")
    thetas = torch.tensor([[1.75, -0.2], [1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    got = task.batched_loss(task.build_model(), thetas, Z, B)
    d2 = ((thetas[:, None, :] - Z[None]) ** 2).sum(-1)
    want = (1 - B * torch.exp(-d2)).mean(-1)  # L_H = (L_1 + L_2) / 2
    torch.testing.assert_close(got, want)
    (g,) = torch.autograd.grad(got.sum(), thetas)
    (g_want,) = torch.autograd.grad(want.sum(), thetas)
    torch.testing.assert_close(g, g_want)


def test_bfloat16_screening_losses_are_close_and_rank_like_full_precision() -> None:
    torch.manual_seed(0)
    task = get_task("mnist")
    model = task.build_model()
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    layout = FlatLayout.of(model.state_dict())
    flat = layout.flatten(model.state_dict()) + torch.linspace(0, 0.2, 5)[:, None] * torch.randn(layout.numel)
    full = task.batched_loss(model, flat, x, y)
    low = task.batched_loss(model, flat, x, y, autocast=torch.bfloat16)
    assert low.dtype == full.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=1e-2, atol=1e-2)
    assert not torch.equal(low, full)  # it did run in reduced precision
    assert torch.equal(low.argsort(), full.argsort())


def test_honest_loss_samples_split_evenly_and_screen_on_a_prefix() -> None:
    # toy2d's criterion gets the targets: with y = example index it records which examples were drawn.
    x, y = torch.zeros(20, 2), torch.arange(20.0)
    parts = [np.arange(0, 8), np.arange(8, 12), np.arange(12, 20)]
    seen: list[list[int]] = []
    recording = dataclasses.replace(get_task("toy2d"), criterion=lambda out, b: seen.append(b.long().tolist()) or out.mean())
    theta = torch.zeros(1, 2)
    assert honest_losses(recording, x, y, parts, LossSampling(9, 9), seed=1, round_=5)[1] is None  # nothing cheaper
    assert honest_losses(recording, x, y, parts, LossSampling(9, 8), seed=1, round_=5)[1] is not None  # 2 < 3 each
    for round_, sampling in [(5, LossSampling(size=9, screen=3)), (5, LossSampling(9, 3)), (6, LossSampling(9))]:
        full, screen = honest_losses(recording, x, y, parts, sampling, seed=1, round_=round_)
        full(theta)
        if screen is not None:
            screen(theta)
    (everything, prefix, again, again_prefix, other), none = seen, screen
    assert [sum(i in p for i in everything[3 * w : 3 * w + 3]) for w, p in enumerate(parts)] == [3, 3, 3]
    assert len(set(everything)) == 9  # 3 distinct examples of each honest worker
    assert prefix == everything[0::3]  # screening: each worker's first draw
    assert (again, again_prefix) == (everything, prefix) and other != everything and none is None  # seeded by (seed, round)
    with pytest.raises(ValueError, match="0 <= screen <= size"):
        LossSampling(size=8, screen=9)


def test_loss_draws_are_seeded_permutations_and_a_limit_keeps_their_prefix() -> None:
    parts = [np.arange(0, 50), np.arange(50, 57), np.arange(57, 120)]
    whole = loss_draws(parts, seed=3, round_=4)
    assert [sorted(d.tolist()) for d in whole] == [p.tolist() for p in parts]  # each partition, permuted
    assert all(not torch.equal(d, torch.as_tensor(p)) for d, p in zip(whole, parts))
    for limit in (1, 5, 9, 100):
        assert [d.tolist() for d in loss_draws(parts, 3, 4, limit)] == [d[:limit].tolist() for d in whole]
    assert [d.tolist() for d in loss_draws(parts, 3, 5)] != [d.tolist() for d in whole]  # another round


def test_the_loss_along_a_subspace_is_the_loss_at_its_points_and_needs_linear_logits() -> None:
    task, gen = get_task("mnist-logreg"), torch.Generator().manual_seed(0)
    model = task.build_model()
    x, y = torch.rand(50, 1, 28, 28, generator=gen), torch.randint(10, (50,), generator=gen)
    origin, directions = torch.randn(7850, generator=gen), torch.randn(3, 7850, generator=gen)
    c = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.1, 0.0, 3.0]])
    along = task.loss_along(model, origin, directions, x, y)(c)
    torch.testing.assert_close(along, task.batched_loss(model, origin + c @ directions, x, y), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="logits linear in the parameters"):
        get_task("mnist").loss_along(get_task("mnist").build_model(), origin, directions, x, y)
