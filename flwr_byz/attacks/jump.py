"""JUMP (the paper's section 3), greedy segment length tau = 1, run online."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor

from .base import Attack, AttackContext
from .line_search import SOLVERS
from .span import span_aggregation


class JumpObjective:
    """``phi(lambda) = L_H(theta - lr * F(g_1, ..., g_h, lambda gbar, ..., lambda gbar))``, batched over lambdas.

    ``k`` lambdas give ``k`` aggregates ``(k, d)``: in the span of the honest vectors
    when ``span_aggregation`` supports the aggregator (no ``(k, n, d)`` stack, see
    ``span``), else by one call of the batched rule on the candidate stacks
    ``(k, n, d)`` (honest rows, then ``f`` copies of ``lambda * gbar``, in ``ctx.order``), ``k``
    chunked so a stack holds at most ``max_batch_elems`` entries. Equal aggregates
    (saturated rules: far lambdas often give the same one) are scored once, by one
    call of ``honest_loss`` on ``(k', d)`` parameters. NaN losses count as ``-inf``.
    ``spread = max_i ||g_i - gbar|| / ||gbar||`` tells solvers where the copies sit
    among the honest vectors. ``evals`` counts scored lambdas, ``losses`` the
    distinct aggregates whose loss was evaluated, ``calls`` the batched calls.
    """

    def __init__(self, honest: Tensor, ctx: AttackContext, max_batch_elems: int) -> None:
        aggregator, params, loss = ctx.aggregator, ctx.params, ctx.honest_loss
        if aggregator is None or params is None or loss is None:
            missing = [k for k in ("aggregator", "params", "honest_loss") if getattr(ctx, k) is None]
            raise ValueError(f"jump: ctx needs {', '.join(missing)} (it scores the honest loss after the update)")
        if params.shape != honest.shape[1:]:
            raise ValueError(f"jump: ctx.params has shape {tuple(params.shape)}, expected ({honest.shape[1]},)")
        self.aggregator, self.params, self.loss = aggregator, params, loss
        self.honest, self.gbar, self.f, self.lr, self.order = honest, honest.mean(0), ctx.f, ctx.lr, ctx.order
        self.span = span_aggregation(aggregator, honest, ctx.f)
        self.chunk = max(1, max_batch_elems // (ctx.n * honest.shape[1]))
        radius, norm = float((honest - self.gbar).norm(dim=1).max()), float(self.gbar.norm())
        self.spread = radius / norm if norm > 0 else math.inf
        self.evals = 0
        self.losses = 0
        self.calls = 0

    def __call__(self, lams: np.ndarray) -> np.ndarray:
        lams = np.asarray(lams, dtype=np.float64)
        out = np.concatenate([self._score(lams[i : i + self.chunk]) for i in range(0, len(lams), self.chunk)])
        self.evals += len(lams)
        return out

    def _aggregate(self, lam: Tensor) -> Tensor:
        if self.span is not None:
            return self.span(lam)
        (h, d), k = self.honest.shape, len(lam)
        byz = (lam.to(self.gbar)[:, None] * self.gbar).unsqueeze(1).expand(k, self.f, d)
        stack = torch.cat([self.honest.expand(k, h, d), byz], dim=1)
        return self.aggregator(stack if self.order is None else stack[:, self.order])

    def _score(self, lams: np.ndarray) -> np.ndarray:
        lam = torch.as_tensor(lams, device=self.honest.device)
        with torch.no_grad():
            aggregates, inverse = torch.unique(self._aggregate(lam), dim=0, return_inverse=True)
            loss = self.loss(self.params - self.lr * aggregates)
        if loss.shape != (len(aggregates),):
            raise ValueError(
                f"jump: honest_loss must map (k, d) -> (k,), got {tuple(loss.shape)} for k={len(aggregates)}"
            )
        self.calls += 1
        self.losses += len(aggregates)
        values: np.ndarray = loss[inverse].double().cpu().numpy()
        return np.nan_to_num(values, nan=-np.inf, posinf=np.inf, neginf=-np.inf)


class Jump(Attack):
    """JUMP, tau = 1: ``a = lambda* gbar``, ``lambda* = argmax_lambda phi(lambda)`` (see ``JumpObjective``).

    The f Byzantine vectors are colinear with the honest mean: positive lambdas
    resist or overshoot descent (a "jump" over a minimum), negative ones push
    uphill. Solvers (``line_search``): ``"global"`` (default: batched grid and
    refinement, ``GlobalSearch``) or ``"powell"`` (the paper's: Powell from
    ``start = 1``, unbounded); ``solver_params`` are the chosen solver's fields.
    ``max_batch_elems`` bounds the entries of one ``(k, n, d)`` candidate stack.
    Metrics: ``jump-lambda``, ``jump-loss`` (predicted honest loss after the
    update), ``jump-evals`` (lambdas scored), ``jump-losses`` (distinct aggregates whose
    loss was evaluated), ``jump-calls`` (batched calls).
    """

    name = "jump"

    def __init__(self, solver: str = "global", max_batch_elems: int = 2**24, **solver_params: object) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"jump: unknown solver {solver!r}; valid: {sorted(SOLVERS)}")
        cls = SOLVERS[solver]
        valid = {fld.name for fld in dataclasses.fields(cls)}
        unknown = set(solver_params) - valid
        if unknown:
            raise ValueError(
                f"jump: unknown parameters {sorted(unknown)} for solver {solver!r}; "
                f"valid: solver, max_batch_elems, {', '.join(sorted(valid))}"
            )
        if max_batch_elems < 1:
            raise ValueError(f"jump: max_batch_elems must be >= 1, got {max_batch_elems}")
        self.solver = cls(**solver_params)  # type: ignore[arg-type]
        self.max_batch_elems = max_batch_elems

    def _attack(self, honest: Tensor, ctx: AttackContext) -> Tensor:
        phi = JumpObjective(honest, ctx, self.max_batch_elems)
        lam, loss = self.solver(phi, phi.spread)
        self.metrics = {
            "jump-lambda": lam,
            "jump-loss": loss,
            "jump-evals": float(phi.evals),
            "jump-losses": float(phi.losses),
            "jump-calls": float(phi.calls),
        }
        return lam * phi.gbar
