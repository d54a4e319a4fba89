"""Models of the paper (Appendix B, Tables 2-3) and its 2-D toy problem (Section 4).

Notation of the paper: ``C(c)`` 3x3 convolution with ``c`` output channels, ``R`` ReLU,
``B`` batch norm, ``M`` 2x2 max-pool, ``D(p)`` dropout, ``L(o)`` linear layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

TOY_INIT = (1.75, -0.2)


def mnist_cnn() -> nn.Module:
    """``(1,28,28)-C(32)-R-C(64)-M-D(0.25)-L(128)-R-D(0.5)-L(10)``, unpadded convs (1,199,882 params).

    As in the code the paper's MNIST setup comes from (Karimireddy et al. 2022), the first dropout drops whole
    channels (``Dropout2d``), the second single features.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.MaxPool2d(2), nn.Dropout2d(0.25),
        nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10),
    )  # fmt: skip


def cifar_cnn() -> nn.Module:
    """``(3,32x32)-C(64)-R-B-C(64)-R-B-M-D(0.25)-C(128)-R-B-C(128)-R-B-M-D(0.25)-L(128)-R-D(0.25)-L(10)``.

    Convs are 3x3 with padding 1, so the two pools leave ``128 x 8 x 8`` features.
    """

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c_out)]

    return nn.Sequential(
        *block(3, 64), *block(64, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
        *block(64, 128), *block(128, 128), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(128 * 8 * 8, 128), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(128, 10),
    )  # fmt: skip


def mnist_logreg() -> nn.Module:
    """``(1,28,28)-L(10)``: multinomial logistic regression (7,850 params)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def linear_logits(entries: dict[str, Tensor], x: Tensor) -> Tensor:
    """Logits ``(N, k, 10)`` of ``k`` logistic models (``mnist_logreg`` state entries with a
    leading ``k``) on images ``x``: one matrix product instead of ``k`` vmapped forwards."""
    weight, bias = entries["1.weight"], entries["1.bias"]
    k, classes, features = weight.shape
    return (x.flatten(1) @ weight.reshape(k * classes, features).T).view(-1, k, classes) + bias


class Toy2d(nn.Module):
    """The 2-D toy problem: one parameter ``theta`` in R^2, initialised to (1.75, -0.2).

    ``forward(z)`` maps points ``z`` of shape ``(B, 2)`` to ``exp(-||theta - z||^2)``,
    so that with weights ``b`` the loss ``mean(1 - b * forward(z))`` (:func:`toy_loss`)
    is the paper's ``L_i(theta) = 1 - b_i exp(-||theta - z_i||^2)`` on a single point.
    """

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(TOY_INIT))

    def forward(self, z: Tensor) -> Tensor:
        return torch.exp(-((self.theta - z) ** 2).sum(-1))


def toy_loss(out: Tensor, b: Tensor) -> Tensor:
    """``mean_j (1 - b_j * out_j)`` with ``out_j = exp(-||theta - z_j||^2)``."""
    return (1 - b * out).mean()
