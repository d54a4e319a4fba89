"""ROP, the relocated orthogonal perturbation (Özfatura et al., IEEE TIFS 2024), against centered clipping."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext
from flwr_byz.attacks.closed_form import ALittleIsEnough
from flwr_byz.attacks.mpaf import check_state, current_model


class RelocatedOrthogonalPerturbation(Attack):
    """ROP, relocated orthogonal perturbation (Özfatura, Özfatura, Küpçü & Gündüz, "Byzantines can also learn
    from history: fall of centered clipping in federated learning", IEEE TIFS 2024). Centered clipping (CC) clips
    every reply around a reference point, the previous round's aggregate ``v`` (the server's momentum); ROP places
    the Byzantine vector next to that reference and perturbs it orthogonally to the direction the model is moving
    in, so that clipping does not shrink it and its push is hard to see in the momentum. With ``gbar`` the honest
    mean,

        ``location = pi * v + (1 - pi) * gbar``                  (relocation; ``pi = 1``: onto CC's reference)
        ``u = lamb * v + (1 - lamb) * gbar``                     (the reference direction)
        ``p = 1 - (<1, u> / ||u||^2) * u``                       (the all-ones vector's part orthogonal to ``u``)
        ``r = sin(angle) * p / ||p|| + cos(angle) * u / ||u||``
        ``a = location + z * r / ||r||``.

    ``angle = 90`` (degrees) is the orthogonal perturbation. ``z`` is ALIE's default ``Phi^{-1}((h - s) / h)``,
    ``s = floor(n/2 + 1) - f``, unless given: the perturbation's signed length, as in the authors' code (ALIE's
    default is negative when ``h - s < h / 2``, e.g. ``n = 6, f = 1``, which turns ``r`` around). In round 1
    there is no previous aggregate: ``v = 0`` and ``u = gbar``, as in the authors' code.

    The previous aggregate is read from the history of global models, ``v = (theta_{t-1} - theta_t) / lr_{t-1}``
    (the server's step ``theta_t = theta_{t-1} - lr_{t-1} * F``), so the attack keeps the last model and step
    (:meth:`state_dict`); ROP's code receives ``v`` from the server instead. A degenerate direction (``u = 0``,
    ``p = 0`` or ``r = 0``) contributes nothing. Metrics: ``rop-z`` and ``rop-reference-norm`` (``||v||``).

    Defaults: ``pi = 1``, ``angle = 90``, ``lamb = 0.9``. The authors' library (FL-Byzantine-Library) had
    ``pi = 0, angle = 90, lamb = 0.9`` in its first argument parser and has ``pi = 1, angle = 270, lamb = 0.9``
    now (270 degrees is also orthogonal, the opposite side); ``pi = 1`` is the relocation that names the attack.
    This project's ``cc`` is the stateless form that clips around the coordinate-wise median (or mean, zero) of
    the round, not the previous aggregate; the attack still relocates to the previous aggregate as published.
    """

    name = "rop"

    def __init__(self, z: float | None = None, pi: float = 1.0, angle: float = 90.0, lamb: float = 0.9) -> None:
        super().__init__()
        if z is not None and not math.isfinite(z):
            raise ValueError(f"rop: z (the perturbation's signed length) must be finite, got {z}")
        if not 0 <= pi <= 1:
            raise ValueError(f"rop: pi (relocation: 0 at the honest mean, 1 at the previous aggregate) must be in "
                             f"[0, 1], got {pi}")
        if not math.isfinite(angle):
            raise ValueError(f"rop: angle (degrees from the reference direction) must be finite, got {angle}")
        if not 0 <= lamb <= 1:
            raise ValueError(f"rop: lamb (the reference direction's weight on the previous aggregate) must be in "
                             f"[0, 1], got {lamb}")
        self.z, self.pi, self.angle, self.lamb = z, float(pi), float(angle), float(lamb)
        self.reset()

    def reset(self) -> None:
        self.previous: Tensor | None = None
        self.previous_lr: float | None = None

    def state_dict(self) -> dict[str, Tensor]:
        if self.previous is None:
            return {}
        return {"previous": self.previous, "previous-lr": torch.tensor(self.previous_lr, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        check_state(self.name, state, {"previous", "previous-lr"})
        self.reset()
        if state:
            self.previous, self.previous_lr = state["previous"], float(state["previous-lr"])

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        theta = current_model(self.name, honest, ctx)
        z = ALittleIsEnough.default_z(ctx.n, ctx.f) if self.z is None else self.z
        gbar = honest.mean(0)
        if self.previous is None or self.previous_lr is None:
            v, u = torch.zeros_like(gbar), gbar
        else:
            v = (self.previous.to(theta) - theta) / self.previous_lr
            u = self.lamb * v + (1 - self.lamb) * gbar
        location = self.pi * v + (1 - self.pi) * gbar
        u_norm = float(u.norm())
        u = u / u_norm if u_norm > 0 else torch.zeros_like(u)
        p = torch.ones_like(gbar)
        p = p - (p @ u) * u
        p_norm = float(p.norm())
        p = p / p_norm if p_norm > 0 else torch.zeros_like(p)
        radians = math.radians(self.angle)
        r = math.sin(radians) * p + math.cos(radians) * u
        r_norm = float(r.norm())
        self.previous, self.previous_lr = theta.clone(), float(ctx.lr)
        self.metrics = {"rop-z": z, "rop-reference-norm": float(v.norm())}
        return location + (z / r_norm) * r if r_norm > 0 else location
