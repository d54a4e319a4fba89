"""The 2-D landscape study (paper, Section 4 and Appendix C.1) on the in-process engine.

Task ``toy2d``: ``n = 3`` nodes, ``f = 1`` Byzantine, the two honest losses
``L_i(theta) = 1 - b_i exp(-||theta - z_i||^2)``, ``gamma = 1.2``, ``T = 100`` rounds from
``theta_1 = (1.75, -0.2)``. Every rule of :data:`AGGREGATORS` meets every attack of
:data:`ATTACKS`; ``none`` is the rule with ``f = 0`` on the honest vectors alone (with
``f = 1`` and a silent Byzantine node the two honest replies are too few for any rule and
the model would never move). A run's row: ``total_loss = sum_{t=2}^{T+1} L_H(theta_t)``,
``final_loss = L_H(theta_{T+1})`` and the smallest distance of ``theta_2..theta_{T+1}`` to the
global minimum ``(1, 0)``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flwr_byz.settings import RunSettings
from flwr_byz.engine import Simulation
from flwr_byz.engine.planning import planner
from flwr_byz.tasks import get_task

logger = logging.getLogger("flwr_byz.toy2d")

AGGREGATORS: dict[str, str] = {"cm": "", "tm": "", "gm": "", "krum": "neighbors=n-f-1"}
ATTACKS = ("none", "sf", "foe", "alie", "mimic", "minmax", "minsum", "jump-1", "jump-10", "jump-100",
           "jump-1-powell", "solve-p")
GLOBAL_MIN = (1.0, 0.0)
COLUMNS = ("aggregator", "attack", "total_loss", "final_loss", "min_distance_to_global_min", "final_theta_x",
           "final_theta_y", "seconds")


@dataclass(frozen=True)
class Trajectory:
    """One run: ``theta_1..theta_{T+1}`` ``(T+1, 2)`` and the honest loss at each."""

    aggregator: str
    attack: str
    thetas: np.ndarray
    losses: np.ndarray
    seconds: float

    def row(self) -> dict[str, object]:
        distance = np.linalg.norm(self.thetas[1:] - np.array(GLOBAL_MIN), axis=1).min()
        return {"aggregator": self.aggregator, "attack": self.attack, "total_loss": float(self.losses[1:].sum()),
                "final_loss": float(self.losses[-1]), "min_distance_to_global_min": float(distance),
                "final_theta_x": float(self.thetas[-1, 0]), "final_theta_y": float(self.thetas[-1, 1]),
                "seconds": round(self.seconds, 2)}


def settings_for(aggregator: str, attack: str, rounds: int = 100) -> RunSettings:
    """The run of ``attack`` (``jump-<tau>``, ``jump-<tau>-powell``, ``solve-p`` or a library name) against
    ``aggregator`` on the 2-D problem."""
    if aggregator not in AGGREGATORS or attack not in ATTACKS:
        raise ValueError(f"unknown aggregator {aggregator!r} or attack {attack!r}; valid: {', '.join(AGGREGATORS)}"
                         f" and {', '.join(ATTACKS)}")
    base = RunSettings(task="toy2d", aggregation=aggregator, aggregation_params=AGGREGATORS[aggregator],
                       num_byzantine=1, rounds=rounds, seed=1)
    if attack == "none":
        return dataclasses.replace(base, aggregation_f=0)
    if attack.startswith("jump-"):
        tau, _, solver = attack.removeprefix("jump-").partition("-")
        return dataclasses.replace(base, attack="jump", jump_tau=int(tau), attack_params=f"solver={solver}" if solver else "")
    return dataclasses.replace(base, attack=attack)


def trajectory(aggregator: str, attack: str, rounds: int = 100) -> Trajectory:
    """Run one cell of the study and record its iterates."""
    settings = settings_for(aggregator, attack, rounds)
    start = time.perf_counter()
    sim = Simulation(settings, nodes=3, device="cpu")
    stepper = planner(settings, sim)
    thetas = [sim.theta]
    for _ in range(rounds):
        stepper.step()
        thetas.append(sim.theta)
    stacked = torch.stack(thetas)
    losses = honest_loss(stacked)
    return Trajectory(aggregator, attack, stacked.double().numpy(), losses, time.perf_counter() - start)


def honest_loss(thetas: torch.Tensor | np.ndarray) -> np.ndarray:
    """``L_H`` of points ``(k, 2)``: the mean of the two honest losses (exact, every point)."""
    z, b = (t.double() for t in get_task("toy2d").load("train"))
    sq = ((torch.as_tensor(thetas).double()[:, None] - z) ** 2).sum(-1)
    return (1 - b * torch.exp(-sq)).mean(-1).numpy()


def study(out: Path, aggregators: tuple[str, ...] = tuple(AGGREGATORS), attacks: tuple[str, ...] = ATTACKS,
          rounds: int = 100) -> tuple[Path, list[Trajectory]]:
    """Every cell, ``out/toy2d.csv`` and the figures beside it; the CSV's path and the trajectories."""
    for aggregator in aggregators:  # every name is checked before anything runs
        for attack in attacks:
            settings_for(aggregator, attack, rounds)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for aggregator in aggregators:
        for attack in attacks:
            runs.append(trajectory(aggregator, attack, rounds))
            row = runs[-1].row()
            logger.info("%-5s %-14s total loss %8.3f  final loss %.3f  closest to (1, 0) %.3f  (%.1f s)", aggregator,
                        attack, row["total_loss"], row["final_loss"], row["min_distance_to_global_min"],
                        row["seconds"])
    path = out / "toy2d.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(run.row() for run in runs)
    plot(runs, out)
    return path, runs


def plot(runs: list[Trajectory], out: Path) -> list[Path]:
    """``toy2d_trajectories.png`` (iterates over the loss contours) and ``toy2d_loss.png`` (loss per step),
    one panel per aggregator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggregators = list(dict.fromkeys(run.aggregator for run in runs))
    attacks = list(dict.fromkeys(run.attack for run in runs))
    colors = dict(zip(attacks, [*plt.get_cmap("tab10").colors, "black", "magenta", *plt.get_cmap("Dark2").colors]))
    grid = np.linspace(-2.5, 2.5, 201)
    gx, gy = np.meshgrid(grid, grid)
    contour = honest_loss(torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1))).reshape(gx.shape)
    paths = []
    for name, draw in (("trajectories", _trajectories), ("loss", _losses)):
        cols = min(2, len(aggregators))
        rows = -(-len(aggregators) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 5 * rows), squeeze=False)
        for ax, aggregator in zip(axes.flat, aggregators):
            if name == "trajectories":
                ax.contourf(gx, gy, contour, levels=30, cmap="viridis", alpha=0.8)
            for run in runs:
                if run.aggregator == aggregator:
                    draw(ax, run, colors[run.attack])
            ax.set_title(aggregator)
        for ax in list(axes.flat)[len(aggregators):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", title="attack")
        fig.tight_layout(rect=(0, 0, 0.86, 1))
        paths.append(out / f"toy2d_{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _trajectories(ax, run: Trajectory, color) -> None:
    ax.plot(run.thetas[:, 0], run.thetas[:, 1], ".-", color=color, label=run.attack, linewidth=1, markersize=3)
    ax.plot(*GLOBAL_MIN, "r*", markersize=12)
    ax.set_xlim(-2.5, 2.5)
    ax.set_ylim(-2.5, 2.5)
    ax.set_xlabel("theta[0]")
    ax.set_ylabel("theta[1]")


def _losses(ax, run: Trajectory, color) -> None:
    ax.plot(np.arange(1, len(run.losses) + 1), run.losses, color=color, label=run.attack, linewidth=1.3)
    ax.set_xlabel("step t")
    ax.set_ylabel("honest loss L_H(theta_t)")
    ax.grid(alpha=0.3)
