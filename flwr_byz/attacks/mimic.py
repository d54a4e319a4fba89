"""Mimic (Karimireddy et al. 2022): over-represent the most atypical honest worker."""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext
from flwr_byz.attacks.closed_form import standard_normal


class Mimic(Attack):
    """Copy the honest worker that carries most variance along the top principal direction.

    State across calls (``reset()`` clears it): step count ``t``, running mean
    ``mu`` of the honest means, unit direction ``z``.

    Warm-up, ``t < warmup``: one online power-iteration step on the centred
    honest vectors ``y_i = g_i - mu``,

        mu <- (t mu + gbar) / (t + 1)
        s  =  sum_i <y_i, z> y_i                      (= Y^T Y z)
        z  <- normalise((t z + s / ||s||) / (t + 1)),

    starting from a random unit ``z`` (drawn with ``ctx.generator``); the attack
    sends ``g_0`` meanwhile. Afterwards ``mu`` and ``z`` are frozen and the
    attack sends ``g_i*``, ``i* = argmax_i |<g_i - mu, z>|``.
    Metric ``mimic-target``: the copied honest index.
    """

    name = "mimic"

    def __init__(self, warmup: int = 1) -> None:
        super().__init__()
        if warmup < 1:
            raise ValueError(f"mimic: warmup must be >= 1 (z is estimated during it), got {warmup}")
        self.warmup = warmup
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self.mu: Tensor | None = None
        self.z: Tensor | None = None

    def state_dict(self) -> dict[str, Tensor]:
        if self.mu is None or self.z is None:
            return {"t": torch.tensor(self.t)}
        return {"t": torch.tensor(self.t), "mu": self.mu, "z": self.z}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.t = int(state["t"])
        self.mu, self.z = state.get("mu"), state.get("z")

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        if self.t < self.warmup:
            self._learn(honest, ctx.generator)
            target = 0
        else:
            assert self.mu is not None and self.z is not None
            target = int(((honest - self.mu) @ self.z).abs().argmax())
        self.t += 1
        self.metrics = {"mimic-target": float(target)}
        return honest[target].clone()

    def _learn(self, honest: Tensor, generator: torch.Generator | None) -> None:
        t = self.t
        gbar = honest.mean(0)
        if self.mu is None or self.z is None:
            self.mu = gbar
            z = standard_normal(honest, generator)
            self.z = z / z.norm()
        else:
            self.mu = (t * self.mu + gbar) / (t + 1)
        y = honest - self.mu
        s = y.T @ (y @ self.z)
        s_norm = s.norm()
        if s_norm > 0:
            z = (t * self.z + s / s_norm) / (t + 1)
            self.z = z / z.norm()
