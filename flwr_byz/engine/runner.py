"""One run in this process, written to the same results file (same rows, same columns) as the Flower path,
with optional checkpoints from which a killed run resumes bit for bit."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from flwr_byz.settings import RunSettings
from flwr_byz.results import RunLog, results_path, same_run
from flwr_byz.node_data import evaluated, test_set
from flwr_byz.engine.planning import planner
from flwr_byz.engine.simulation import Simulation

logger = logging.getLogger("flwr_byz.engine")


def checkpoint_path(settings: RunSettings) -> Path:
    """``<results file>.ckpt``: the run's last checkpoint, next to its results file."""
    path = results_path(settings)
    return path.with_name(path.name + ".ckpt")


def run(settings: RunSettings, nodes: int = 15, device: torch.device | str | None = None,
        checkpoint_every: int = 0) -> Path:
    """Run ``settings`` on ``nodes`` nodes (the last ``num-byzantine`` Byzantine) and publish its results file.

    Rows: round 0, every ``eval-every``-th round and the last, each with ``test-loss``, ``test-accuracy``,
    the round's ``train-loss``, ``robust-excluded``/``robust-received``, the attack's metrics with
    ``attack-seconds``, and ``elapsed`` seconds; then the footer. Progress goes to the
    ``flwr_byz.engine`` logger, one line per evaluated round.

    With ``checkpoint_every = K > 0`` the simulation's state (:meth:`Simulation.state_dict`) and the rows so
    far are saved atomically every K rounds to :func:`checkpoint_path`; a run started again with the same
    settings resumes from there and ends with the same rows as an uninterrupted run (``elapsed`` and
    ``attack-seconds`` aside). Planning adversaries (whose plans span rounds) are not checkpointed.
    """
    sim = Simulation(settings, nodes, device)
    stepper = planner(settings, sim)
    checkpoints = checkpoint_every > 0 and stepper is sim
    saved = _resume(settings, sim.device) if checkpoints else None
    rows: list[dict[str, Any]] = saved["rows"] if saved else []
    log = RunLog.of(settings)
    for row in rows:
        log.append(row)
    if saved:
        sim.load_state_dict(saved["simulation"])
        logger.info("[%s] resumed from the checkpoint of round %d", settings.name, sim.round)
    x, y = (t.to(sim.device) for t in test_set(settings))
    start = time.time() - (saved["elapsed"] if saved else 0.0)

    def evaluate(round_: int, metrics: dict[str, float]) -> None:
        sim.model.load_state_dict(sim.state)
        loss, accuracy = sim.task.evaluate(sim.model, x, y)
        row = {"round": round_, "test-loss": loss, "test-accuracy": accuracy, **metrics,
               "elapsed": round(time.time() - start, 3)}
        log.append(row)
        rows.append(row)
        logger.info("[%s] round %d/%d: test accuracy %.4f, test loss %.4f", settings.name, round_, settings.rounds,
                    accuracy, loss)

    if not saved:
        evaluate(0, {})
    while sim.round < settings.rounds:
        done = stepper.step()
        if evaluated(settings, done.round):
            evaluate(done.round, done.metrics)
        if checkpoints and done.round % checkpoint_every == 0 and done.round < settings.rounds:
            _save(settings, {"settings": settings.to_run_config(), "simulation": sim.state_dict(), "rows": rows,
                             "elapsed": time.time() - start})
    path = log.finish(seconds=round(time.time() - start, 3))
    checkpoint_path(settings).unlink(missing_ok=True)
    return path


def _save(settings: RunSettings, checkpoint: dict[str, Any]) -> None:
    """Write the checkpoint next to the results file, atomically (a kill mid-write keeps the previous one)."""
    path = checkpoint_path(settings)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def _resume(settings: RunSettings, device: torch.device) -> dict[str, Any] | None:
    """The run's checkpoint (its tensors on ``device``), if one exists for these settings."""
    path = checkpoint_path(settings)
    if not path.exists():
        return None
    saved: dict[str, Any] = torch.load(path, weights_only=False, map_location=device)
    if not same_run(saved.get("settings"), settings.to_run_config()):
        logger.warning("[%s] ignoring %s: it was saved with other settings", settings.name, path)
        return None
    return saved
