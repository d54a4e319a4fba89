"""MPAF (Cao & Gong, CVPR Workshops 2022): fake clients that drag the global model towards a base model."""

from __future__ import annotations

import math

from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext


def current_model(name: str, honest: Tensor, ctx: AttackContext) -> Tensor:
    """``ctx.params`` (the flat global model ``theta``) in the honest vectors' dtype and device, checked: the
    attacks that follow the history of global models (MPAF, PoisonedFL, ROP) need it, and a positive ``ctx.lr``."""
    if ctx.params is None:
        raise ValueError(f"{name}: ctx.params (the current global model, flat) is missing; this attack follows "
                         "the history of global models")
    if ctx.params.shape != honest.shape[1:]:
        raise ValueError(f"{name}: ctx.params has shape {tuple(ctx.params.shape)}, expected ({honest.shape[1]},)")
    if not (math.isfinite(ctx.lr) and ctx.lr > 0):
        raise ValueError(f"{name}: the server step ctx.lr must be finite and positive, got {ctx.lr}")
    return ctx.params.to(dtype=honest.dtype, device=honest.device)


def check_state(name: str, state: dict[str, Tensor], keys: set[str]) -> None:
    """A state dict of attack ``name`` holds only ``keys``."""
    unknown = sorted(set(state) - keys)
    if unknown:
        raise ValueError(f"{name}: unknown state keys {unknown}; valid: {sorted(keys)}")


class MPAF(Attack):
    """MPAF, model poisoning with fake clients (Cao & Gong, CVPR Workshops 2022): every fake client sends the
    model update ``lambda * (w_base - w_t)``, which pulls the global model ``w_t`` towards a base model
    ``w_base`` of low accuracy, amplified by ``lambda`` (``scale``; the paper's default ``1e6``). It needs no
    honest update.

    The base model is the first global model the attack sees (``w_init``, the randomly initialised model when it
    attacks from round 1; the paper's example of a base model is a randomly initialised one), kept across rounds
    (:meth:`state_dict`). In this project's gradient convention the server applies ``theta - lr * F(g)``, so the
    attack sends the pseudo-gradient

        ``a = scale * (theta - w_base) / lr``,   ``lr = ctx.lr`` (the round's ``gamma_t * server_lr``),

    whose server step ``lr * a`` is exactly the paper's update: FedAvg over the fake clients alone would move
    ``theta`` to ``theta + scale * (w_base - theta)`` (with ``scale = 1``, to ``w_base``). A Byzantine node sends
    the model ``theta - gamma_t * a = theta + (scale / server_lr) * (w_base - theta)``: the paper's fake local
    model whenever ``server_lr = 1`` (the default). Round 1 sends zero (``theta = w_base``).

    Metrics: ``mpaf-scale`` (``lambda``) and ``mpaf-distance`` (``||theta - w_base||``).
    """

    name = "mpaf"

    def __init__(self, scale: float = 1e6) -> None:
        super().__init__()
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"mpaf: scale (the paper's lambda) must be finite and positive, got {scale}")
        self.scale = float(scale)
        self.reset()

    def reset(self) -> None:
        self.base: Tensor | None = None

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.base is None else {"base": self.base}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        check_state(self.name, state, {"base"})
        self.base = state.get("base")

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        theta = current_model(self.name, honest, ctx)
        if self.base is None:
            self.base = theta.clone()
        elif self.base.shape != theta.shape:
            raise ValueError(f"mpaf: the stored base model has shape {tuple(self.base.shape)}, the model "
                             f"{tuple(theta.shape)}: reset() the attack for another model")
        pull = theta - self.base.to(theta)
        self.metrics = {"mpaf-scale": self.scale, "mpaf-distance": float(pull.norm())}
        return (self.scale / ctx.lr) * pull

