"""Planning adversaries: JUMP with segment length ``tau > 1`` (paper, Algorithm 1) and Solve (P).

Both see the whole simulation (the omniscient adversary: the honest workers' models,
momenta, next batches, the reply order and the rule of every coming round) and plan
ahead on :class:`Rollout`, ``k`` copies of the run stepped together (the honest steps
as one ``vmap``, the rule on ``(k, n, d)`` stacks): the same maths as
:meth:`Simulation.step` on finite updates, to float rounding. The plan is then played
in the real simulation, so the realised trajectory is the planned one.

* JUMP-tau: every ``tau`` rounds, choose ``lambda_1..lambda_tau`` jointly to maximise
  ``sum_s L_H(theta_s)`` over the segment's iterates, the Byzantine vector of round ``s`` being
  ``lambda_s gbar_s`` (``gbar_s`` the honest mean of that round). Solvers (``attack-params = "solver=..."``):
  ``powell`` (the paper's: scipy's Powell from ``lambda = 1``) and ``global``: greedy
  lambdas (each maximising the next iterate's loss, the 1-D global search of JUMP-1),
  then cyclic coordinate ascent on the segment's total with the same 1-D search, a move
  kept only if it raises the total.
* Solve (P): the vectors ``a_1..a_T`` in ``R^d`` themselves, over the whole run: from the
  JUMP-T plan, block-coordinate ascent on each ``a_t`` (steps along coordinate and seeded
  random directions at shrinking radii), a move kept only if it raises the total. So its
  total loss is never below JUMP-T's. Only for small models (``d <= SOLVE_P_MAX_D``).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from flwr_byz.attacks.base import HonestLoss
from flwr_byz.attacks.base import relative_spread
from flwr_byz.attacks.line_search import SOLVERS, GlobalSearch
from flwr_byz.dsgd import reply_order
from flwr_byz.settings import RunSettings, parse_params
from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import get_task
from flwr_byz.node_data import honest_loss_oracle
from flwr_byz.engine.honest import batchable
from flwr_byz.engine.simulation import Round, Simulation

SOLVE_P_MAX_D = 64  # solve-p optimises T x d numbers: refused above this model size
Attack = Callable[[int, Tensor], Tensor]  # (round index in the window, honest (k, h, d)) -> Byzantine (k, d)


@dataclass(frozen=True)
class Ahead:
    """What the adversary knows of a coming round: its number, client step, reply order, rule, honest loss
    (the oracle of that round) and the honest batches."""

    t: int
    gamma: float
    order: Tensor
    rule: Callable[[Tensor], Tensor]
    loss: HonestLoss
    batch: tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Point:
    """A state of ``k`` rollouts: models ``(k, d)`` and momenta ``(k, h, d)`` (``None``: ``m_0 = 0``)."""

    theta: Tensor
    momenta: Tensor | None

    def repeat(self, k: int) -> Point:
        """``k`` copies of a single state."""
        return Point(self.theta.expand(k, -1), None if self.momenta is None else self.momenta.expand(k, -1, -1))


class Rollout:
    """The next ``rounds`` rounds of ``sim``, for ``k`` Byzantine plans at once."""

    def __init__(self, sim: Simulation, rounds: int) -> None:
        s = sim.settings
        self.sim, self.f = sim, sim.f
        shuffler = random.Random()
        shuffler.setstate(sim.shuffler.getstate())
        self.ahead: list[Ahead] = []
        for t in range(sim.round + 1, sim.round + rounds + 1):
            order = reply_order(shuffler, sim.h + sim.f)
            loss, _ = honest_loss_oracle(s, sim.h, t, sim.device)
            self.ahead.append(Ahead(t, s.lr_at(t), torch.tensor(order, device=sim.device), sim.rule.for_round(t),
                                    loss, sim.workers.batch(t)))
        self.start = Point(sim.theta[None], None if sim.momenta is None else sim.momenta[None])

    def __len__(self) -> int:
        return len(self.ahead)

    def honest(self, point: Point, j: int) -> tuple[Tensor, Tensor | None]:
        """The honest vectors ``(k, h, d)`` the server reads in round ``j`` from ``point``, and the new momenta."""
        a = self.ahead[j]
        wire, momenta, _ = self.sim.workers.batched(point.theta, point.momenta, a.t, a.gamma, a.batch)
        return wire, momenta

    def run(self, attack: Attack, point: Point, first: int = 0, last: int | None = None) -> tuple[Tensor, list[Point]]:
        """Rounds ``first..last-1`` of the window from ``point``: the honest loss after each ``(k, rounds)``
        (NaN as ``-inf``) and the points after each round."""
        settings, losses, points = self.sim.settings, [], []
        for j in range(first, len(self) if last is None else last):
            a = self.ahead[j]
            wire, momenta = self.honest(point, j)
            sent = point.theta - a.gamma * attack(j, wire)
            byzantine = ((point.theta - sent) / a.gamma)[:, None].expand(-1, self.f, -1)
            stack = torch.cat([wire, byzantine], dim=1)[:, a.order]
            point = Point(point.theta - settings.server_lr * a.gamma * a.rule(stack), momenta)
            points.append(point)
            losses.append(a.loss(point.theta).double().nan_to_num(nan=-math.inf))
        return torch.stack(losses, dim=1), points

    def jump(self, lams: Tensor, first: int = 0) -> Attack:
        """JUMP's vectors ``lambda gbar`` for plans ``lams (k, rounds)`` (column ``j - first`` in round ``j``)."""
        return lambda j, wire: lams[:, j - first, None].to(wire) * wire.mean(dim=1)

    def total(self, lams: np.ndarray, first: int, point: Point, last: int | None = None) -> np.ndarray:
        """Total honest loss of rounds ``first..last-1`` from ``point`` under each JUMP plan ``lams (k, rounds)``."""
        plans = torch.as_tensor(lams, dtype=torch.float64)
        return self.run(self.jump(plans, first), point.repeat(len(plans)), first, last)[0].sum(1).cpu().numpy()


def plan_powell(rollout: Rollout, start: float = 1.0, maxfev: int | None = None) -> tuple[np.ndarray, float]:
    """The paper's solver: scipy's Powell on the window's total loss from ``lambda = start``, unbounded; the
    lambdas and their total."""

    def negated(x: np.ndarray) -> float:
        return float(np.clip(-rollout.total(np.atleast_1d(x)[None], 0, rollout.start)[0], -1e300, 1e300))

    res = minimize(negated, x0=np.full(len(rollout), start), method="Powell", options={"maxfev": maxfev})
    return np.atleast_1d(res.x).astype(np.float64), -float(res.fun)


def plan_global(rollout: Rollout, search: GlobalSearch, sweeps: int = 1) -> tuple[np.ndarray, float]:
    """Greedy lambdas, then ``sweeps`` cycles of coordinate ascent on the window's total (module docstring); the
    lambdas and their total. ``losses`` and ``points`` follow the current plan round by round."""
    lams, point, points = np.zeros(len(rollout)), rollout.start, [rollout.start]
    losses = torch.zeros(len(rollout), dtype=torch.float64)
    for j in range(len(rollout)):  # greedy: lambda_j maximises the loss right after round j
        lams[j], _ = search(lambda c, j=j, at=point: rollout.total(c[:, None], j, at, j + 1),
                            relative_spread(rollout.honest(point, j)[0][0]))
        after, (point,) = rollout.run(rollout.jump(torch.tensor([[lams[j]]]), j), point, j, j + 1)
        losses[j] = after[0, 0]
        points.append(point)
    for _ in range(sweeps):
        for j in range(len(rollout)):
            def rest(c: np.ndarray, j: int = j) -> np.ndarray:
                plans = np.repeat(lams[None, j:], len(c), axis=0)
                plans[:, 0] = c
                return rollout.total(plans, j, points[j])

            cand, value = search(rest, relative_spread(rollout.honest(points[j], j)[0][0]))
            if value > float(losses[j:].sum()):
                lams[j] = cand
                after, points[j + 1:] = rollout.run(rollout.jump(torch.as_tensor(lams[j:])[None], j), points[j], j)
                losses[j:] = after[0]
    return lams, float(losses.sum())


class JumpPlanner:
    """JUMP-tau in ``sim``: a plan of ``tau`` lambdas (the last segment: the rounds left) at the start of each
    segment, played round by round. Metrics: ``jump-lambda``, ``jump-tau``, ``jump-plan-loss`` (the planned
    total of the segment) and ``attack-seconds`` (the segment's planning time, per round)."""

    def __init__(self, sim: Simulation, tau: int, solver: str, **params: object) -> None:
        self.sim, self.tau, self.params = sim, tau, params
        self.search = GlobalSearch(**params) if solver == "global" else None  # type: ignore[arg-type]
        self.queue: list[float] = []
        self.metrics: dict[str, float] = {}

    def plan(self, rollout: Rollout) -> tuple[np.ndarray, float]:
        """The segment's lambdas and their planned total."""
        if self.search is not None:
            return plan_global(rollout, self.search)
        return plan_powell(rollout, **self.params)  # type: ignore[arg-type]

    def step(self) -> Round:
        if not self.queue:
            start = time.perf_counter()
            rollout = Rollout(self.sim, min(self.tau, self.sim.settings.rounds - self.sim.round))
            lams, total = self.plan(rollout)
            self.queue = lams.tolist()
            self.metrics = {"jump-tau": float(self.tau), "jump-plan-loss": total,
                            "attack-seconds": (time.perf_counter() - start) / len(lams)}
        lam = self.queue.pop(0)
        return self.sim.step(lambda honest: (lam * honest.mean(0), {"jump-lambda": lam, **self.metrics}))


class SolveP:
    """Solve (P) in ``sim``: the Byzantine vectors of every round, planned at the first round (module
    docstring); ``sweeps`` passes of block-coordinate ascent over rounds, ``directions`` seeded random unit
    directions besides the coordinate ones, radii ``scale * 4^-i`` for ``i < radii``. Metrics:
    ``solve-p-loss`` (the planned total), ``solve-p-gain`` (over the JUMP-T plan it starts from),
    ``attack-seconds`` (planning time per round)."""

    def __init__(self, sim: Simulation, sweeps: int = 2, directions: int = 8, radii: int = 5) -> None:
        self.sim, self.sweeps, self.directions, self.radii = sim, sweeps, directions, radii
        self.vectors: list[Tensor] = []
        self.metrics: dict[str, float] = {}

    def plan(self, rollout: Rollout) -> tuple[Tensor, float, float]:
        """The vectors ``(rounds, d)``, their total loss and the JUMP-T plan's."""
        lams, _ = plan_global(rollout, GlobalSearch())
        losses, points = rollout.run(rollout.jump(torch.as_tensor(lams)[None]), rollout.start)
        points = [rollout.start, *points]
        vectors = torch.stack([lams[j] * rollout.honest(points[j], j)[0][0].mean(0) for j in range(len(rollout))])
        best = start = float(losses.sum())
        d = vectors.shape[1]
        gen = torch.Generator().manual_seed(self.sim.settings.seed)
        for _ in range(self.sweeps):
            for j in range(len(rollout)):
                units = torch.cat([torch.eye(d), -torch.eye(d), _unit(torch.randn(self.directions, d, generator=gen))])
                scale = max(float(vectors[j].norm()), float(rollout.honest(points[j], j)[0][0].mean(0).norm()), 1e-12)
                steps = torch.cat([units * scale * 4.0**-i for i in range(self.radii)]).to(vectors)
                cands = vectors[j] + steps

                def attack(i: int, wire: Tensor, j: int = j, cands: Tensor = cands) -> Tensor:
                    return cands if i == j else vectors[i].expand(len(cands), -1)

                totals = rollout.run(attack, points[j].repeat(len(cands)), j)[0].sum(1)
                done = float(losses[0, :j].sum())
                k = int(totals.argmax())
                if done + float(totals[k]) > best:  # rounds before j are unchanged: replay from j only
                    vectors[j] = cands[k]
                    after, points[j + 1:] = rollout.run(lambda i, wire: vectors[i][None], points[j], j)
                    losses = torch.cat([losses[:, :j], after], dim=1)
                    best = float(losses.sum())
        return vectors, best, start

    def step(self) -> Round:
        if not self.vectors and self.sim.round == 0:
            start = time.perf_counter()
            rollout = Rollout(self.sim, self.sim.settings.rounds)
            vectors, total, jump = self.plan(rollout)
            self.vectors = list(vectors)
            self.metrics = {"solve-p-loss": total, "solve-p-gain": total - jump,
                            "attack-seconds": (time.perf_counter() - start) / len(vectors)}
        vector = self.vectors.pop(0)
        return self.sim.step(lambda honest: (vector.to(honest), dict(self.metrics)))


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def check_planning(settings: RunSettings) -> None:
    """Refuse at once what the planning adversaries cannot do: a task whose honest step cannot be batched
    (dropout, BatchNorm), and ``solve-p`` on a model with more than ``SOLVE_P_MAX_D`` parameters."""
    if not settings.planning:
        return
    model = get_task(settings.task).build_model()
    what = "solve-p" if settings.attack == "solve-p" else f"jump with jump-tau={settings.jump_tau}"
    if not batchable(model):
        raise ValueError(f"{what} plans on batched copies of the run, which need an honest step without dropout or "
                         f"BatchNorm; task {settings.task!r} has them: use mnist-logreg or toy2d")
    if settings.num_byzantine < 1:
        raise ValueError(f"{what} needs Byzantine nodes to plan for: set num-byzantine >= 1")
    if settings.attack == "solve-p" and settings.attack_params:
        raise ValueError(f"solve-p takes no attack-params, got {settings.attack_params!r}")
    if settings.attack == "jump":
        solver, params = planner_params(settings)
        valid = {f.name for f in dataclasses.fields(GlobalSearch)} if solver == "global" else {"start", "maxfev"}
        unknown = set(params) - valid
        if unknown:
            raise ValueError(f"attack-params {sorted(unknown)} are not parameters of the jump-tau planner with "
                             f"solver={solver}; valid: solver, {', '.join(sorted(valid))}")
    d = FlatLayout.of(model.state_dict()).numel
    if settings.attack == "solve-p" and d > SOLVE_P_MAX_D:
        raise ValueError(f"solve-p optimises every Byzantine vector directly (d = {d} numbers per round): only "
                         f"for models with d <= SOLVE_P_MAX_D = {SOLVE_P_MAX_D} (e.g. task toy2d); for larger "
                         "models use attack jump with jump-tau")


def planner(settings: RunSettings, sim: Simulation) -> Simulation | JumpPlanner | SolveP:
    """What steps the run: the planning adversary the settings ask for, else ``sim`` itself (the attack runs
    round by round)."""
    check_planning(settings)
    if not settings.planning:
        return sim
    if not sim.workers.vectorised:
        raise ValueError(f"attack {settings.attack!r} plans on batched copies of the run, which need equal honest "
                         "batch sizes: every honest partition must hold at least batch-size examples")
    if settings.attack == "solve-p":
        return SolveP(sim)
    solver, params = planner_params(settings)
    return JumpPlanner(sim, settings.jump_tau, solver, **params)


def planner_params(settings: RunSettings) -> tuple[str, dict[str, object]]:
    """JUMP-tau's solver (``attack-params`` key ``solver``, default ``global``) and its other parameters."""
    params = parse_params(settings.attack_params, "attack-params")
    solver = str(params.pop("solver", "global"))
    if solver not in SOLVERS:
        raise ValueError(f"unknown JUMP solver {solver!r}; valid: {', '.join(SOLVERS)}")
    return solver, params
