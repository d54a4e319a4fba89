"""PoisonedFL (Xie, Fang & Gong, CVPR 2025): model poisoning with multi-round consistency."""

from __future__ import annotations

import math

import torch
from scipy.stats import binom
from torch import Tensor

from flwr_byz.attacks.base import Attack, AttackContext
from flwr_byz.attacks.closed_form import standard_normal
from flwr_byz.attacks.mpaf import check_state, current_model


class PoisonedFL(Attack):
    """PoisonedFL (Xie, Fang & Gong, CVPR 2025): every round the fake clients push the global model along the same
    random sign vector ``s``, so that their effect adds up across rounds instead of cancelling. It needs no honest
    update: only the history of global models ``w_1, w_2, ...`` (``ctx.params`` of each round).

    In model space (what a client adds to the model), round ``t``'s malicious update is

        ``delta_t = lambda_t * (k_t / ||k_t||) * s``,   ``lambda_t = c * ||g||``,
        ``k_t = | g - (||g|| / ||delta_{t-1}||) * delta_{t-1} |``,   ``g = w_t - w_{t-1}``,

    with ``s`` in ``{-1, +1}^d`` drawn once (the signs of ``N(0, I_d)`` from ``ctx.generator`` in the first round:
    seeded by the run's seed), ``g`` the last round's global update and ``delta_{t-1}`` the attack's own update of
    that round (its contribution is removed from ``g`` before ``g``'s per-coordinate magnitudes are reused;
    ``k_t = |g|`` when ``delta_{t-1} = 0``). Round 1 has no global update and sends zero.

    Every ``period`` rounds (rounds ``1 + period``, ``1 + 2 period``, ...) a binomial test asks whether the model
    moved along ``s`` over the window: ``X`` counts the coordinates where the sign of ``w_t - w_start`` equals ``s``
    (a coordinate that did not move counts with the sign of ``w_t``, as in the authors' code). Without an attack
    ``X ~ Binomial(d, 1/2)``; if ``X`` is below the ``1 - alpha`` quantile the attack is making no progress, and
    the scale ``c`` is multiplied by ``decay`` (halved by default) unless that takes it below ``min_scale``. The
    window then restarts at ``w_t``.

    The vector sent, in this project's gradient convention (``theta <- theta - lr * F(g)``), is
    ``a = -delta_t / lr`` (``lr = ctx.lr``, the round's ``gamma_t * server_lr``): if the rule returns ``a``, the
    server moves the model to ``theta - lr * a = theta + delta_t``, the paper's update.

    State (:meth:`state_dict`): ``s``, the last model and update, the window's start model, the round count and
    ``c``. Metrics: ``poisonedfl-scale`` (``c``), ``poisonedfl-lambda`` (``lambda_t``),
    ``poisonedfl-aligned`` (the fraction of coordinates that moved along ``s`` in the current window) and
    ``poisonedfl-decayed`` (1 in a round whose test lowered ``c``).

    Defaults and assumptions: ``scale = 10`` is the authors' code's default ``c``; ``alpha = 0.01`` their test
    (the 99% quantile); ``period = 50``. The authors' code multiplies ``c`` by 0.7, never below 0.5, and takes the
    window's start one round later than here (49 updates per window); this class halves ``c`` (``decay = 0.5``,
    as issue 24 states the paper's rule; pass ``decay=0.7`` for the code's) with the code's floor
    ``min_scale = 0.5``, over windows of exactly ``period`` updates.
    """

    name = "poisonedfl"

    def __init__(self, scale: float = 10.0, period: int = 50, alpha: float = 0.01, decay: float = 0.5,
                 min_scale: float = 0.5) -> None:
        super().__init__()
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"poisonedfl: scale (the initial c) must be finite and positive, got {scale}")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"poisonedfl: period (rounds between binomial tests) must be an integer >= 1, "
                             f"got {period!r}")
        if not 0 < alpha < 1:
            raise ValueError(f"poisonedfl: alpha (the binomial test's level) must be in (0, 1), got {alpha}")
        if not 0 < decay < 1:
            raise ValueError(f"poisonedfl: decay (the factor that lowers c) must be in (0, 1), got {decay}")
        if not (math.isfinite(min_scale) and min_scale >= 0):
            raise ValueError(f"poisonedfl: min_scale (c's floor) must be finite and >= 0, got {min_scale}")
        self.initial_scale, self.period, self.alpha = float(scale), period, float(alpha)
        self.decay, self.min_scale = float(decay), float(min_scale)
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self.scale = self.initial_scale
        self.sign: Tensor | None = None
        self.previous: Tensor | None = None
        self.sent: Tensor | None = None
        self.start: Tensor | None = None

    def state_dict(self) -> dict[str, Tensor]:
        if self.sign is None:
            return {}
        assert self.previous is not None and self.sent is not None and self.start is not None
        return {"t": torch.tensor(self.t), "scale": torch.tensor(self.scale, dtype=torch.float64),
                "sign": self.sign, "previous": self.previous, "sent": self.sent, "start": self.start}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        keys = {"t", "scale", "sign", "previous", "sent", "start"}
        check_state(self.name, state, keys)
        self.reset()
        if not state:
            return
        if set(state) != keys:
            raise ValueError(f"{self.name}: state misses {sorted(keys - set(state))}")
        self.t, self.scale = int(state["t"]), float(state["scale"])
        self.sign, self.previous, self.sent, self.start = state["sign"], state["previous"], state["sent"], state["start"]

    def threshold(self, d: int) -> float:
        """The ``1 - alpha`` quantile of ``Binomial(d, 1/2)``: the fewest coordinates moved along ``s`` that count as
        progress (``d = 139960, alpha = 0.01``: 70415, the authors' ``k_99``)."""
        return float(binom.ppf(1 - self.alpha, d, 0.5))

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        theta = current_model(self.name, honest, ctx)
        if self.sign is None:
            drawn = standard_normal(honest, ctx.generator).sign()
            self.sign, self.start = torch.where(drawn == 0, 1.0, drawn).to(theta), theta.clone()
        assert self.start is not None
        sign = self.sign.to(theta)
        if sign.shape != theta.shape:
            raise ValueError(f"poisonedfl: the stored sign vector has shape {tuple(sign.shape)}, the model "
                             f"{tuple(theta.shape)}: reset() the attack for another model")
        self.t += 1
        window = theta - self.start.to(theta)
        aligned = int((torch.where(window == 0, theta, window).sign() == sign).sum())
        decayed = False
        if self.t > 1 and (self.t - 1) % self.period == 0:
            if aligned < self.threshold(theta.numel()) and self.scale * self.decay >= self.min_scale:
                self.scale *= self.decay
                decayed = True
            self.start = theta.clone()
        update, lam = torch.zeros_like(theta), 0.0
        if self.previous is not None and self.sent is not None:
            g = theta - self.previous.to(theta)
            sent = self.sent.to(theta)
            g_norm, sent_norm = float(g.norm()), float(sent.norm())
            k = (g - (g_norm / sent_norm) * sent).abs() if sent_norm > 0 else g.abs()
            k_norm = float(k.norm())
            lam = self.scale * g_norm
            if k_norm > 0 and lam > 0:
                update = (lam / k_norm) * k * sign
        self.previous, self.sent = theta.clone(), update
        self.metrics = {"poisonedfl-scale": self.scale, "poisonedfl-lambda": lam,
                        "poisonedfl-aligned": aligned / theta.numel(), "poisonedfl-decayed": float(decayed)}
        return update / -ctx.lr
