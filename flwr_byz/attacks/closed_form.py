"""Attacks with a closed form in the honest vectors: SF, FOE, ALIE, LF, Gaussian, Inf.

``gbar`` is the mean honest vector and ``std`` their coordinate-wise standard
deviation (unbiased, as ``torch.std`` and the paper's code base compute it).
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm
from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext


def standard_normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``N(0, I_d)`` for ``d = like.shape[-1]``, drawn on ``generator``'s device, returned on ``like``'s."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape[-1], generator=generator, dtype=like.dtype, device=device).to(like.device)


class SignFlip(Attack):
    """Sign flipping (Allen-Zhu et al. 2021): ``a = -gbar``."""

    name = "sf"

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        return -honest.mean(0)


class FallOfEmpires(Attack):
    """Fall of empires (Xie et al. 2020): ``a = gbar + eps * (-gbar) = (1 - eps) * gbar``."""

    name = "foe"

    def __init__(self, eps: float = 1.1) -> None:
        super().__init__()
        if not math.isfinite(eps):
            raise ValueError(f"foe: eps must be finite, got {eps}")
        self.eps = eps

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        return (1.0 - self.eps) * honest.mean(0)


class ALittleIsEnough(Attack):
    """A little is enough (Baruch et al. 2019): ``a = gbar - z * std``.

    By default ``z = Phi^{-1}((h - s) / h)`` with ``s = floor(n/2 + 1) - f``: the
    largest ``z`` with ``Phi(z) < (h - s)/h`` (Phi the standard normal CDF), i.e.
    the shift that keeps ``a`` inside the bulk of the honest vectors.
    E.g. ``n = 15, f = 3``: ``h = 12, s = 5, z = Phi^{-1}(7/12) = 0.2104``.
    """

    name = "alie"

    def __init__(self, z: float | None = None) -> None:
        super().__init__()
        if z is not None and not math.isfinite(z):
            raise ValueError(f"alie: z must be finite, got {z}")
        self.z = z

    @staticmethod
    def default_z(n: int, f: int) -> float:
        """``Phi^{-1}((h - s)/h)``, ``h = n - f``, ``s = floor(n/2 + 1) - f``; needs ``0 < s < h``."""
        h, s = n - f, math.floor(n / 2 + 1) - f
        if not 0 < s < h:
            raise ValueError(f"alie: default z needs 0 < s < h, got s={s}, h={h} (n={n}, f={f}); pass z")
        return float(norm.ppf((h - s) / h))

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        if ctx.h < 2:
            raise ValueError("alie: the coordinate-wise std needs at least 2 honest vectors")
        z = self.default_z(ctx.n, ctx.f) if self.z is None else self.z
        self.metrics = {"alie-z": z}
        return honest.mean(0) - z * honest.std(0)


class LabelFlip(Attack):
    """Label flipping: ``a`` = the honest pipeline's vector on labels ``9 - y``.

    Attacks see no data: the caller computes that vector and passes it as
    ``ctx.flipped``; this attack only checks and returns it.
    """

    name = "lf"

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        if ctx.flipped is None:
            raise ValueError("lf: ctx.flipped is missing (the honest pipeline's vector on flipped labels 9 - y)")
        if ctx.flipped.shape != honest.shape[1:]:
            raise ValueError(f"lf: ctx.flipped has shape {tuple(ctx.flipped.shape)}, expected ({honest.shape[1]},)")
        return ctx.flipped.to(dtype=honest.dtype, device=honest.device, copy=True)


class Gaussian(Attack):
    """Noise around the mean: ``a = gbar + sigma * xi``, ``xi ~ N(0, I_d)`` drawn from ``ctx.generator``."""

    name = "gaussian"

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"gaussian: sigma must be finite and >= 0, got {sigma}")
        self.sigma = sigma

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        return honest.mean(0) + self.sigma * standard_normal(honest, ctx.generator)


class Inf(Attack):
    """Every entry ``+inf``: checks that a defence validates its inputs."""

    name = "inf"

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        return torch.full_like(honest[0], math.inf)
