"""One run in this process, written to the same results file (same rows, same columns) as the Flower path."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..config import RunSettings
from ..experiments.results import RunLog
from ..tasks.nodes import evaluated, test_set
from .planning import planner
from .simulation import Simulation

logger = logging.getLogger("flwr_byz.engine")


def run(settings: RunSettings, nodes: int = 15, device: torch.device | str | None = None) -> Path:
    """Run ``settings`` on ``nodes`` nodes (the last ``num-byzantine`` Byzantine) and publish its results file.

    Rows: round 0, every ``eval-every``-th round and the last, each with ``test-loss``, ``test-accuracy``,
    the round's ``train-loss``, ``robust-excluded``/``robust-received``, the attack's metrics with
    ``attack-seconds``, and ``elapsed`` seconds; then the footer. Progress goes to the
    ``flwr_byz.engine`` logger, one line per evaluated round.
    """
    sim = Simulation(settings, nodes, device)
    stepper = planner(settings, sim)
    x, y = (t.to(sim.device) for t in test_set(settings))
    log = RunLog(settings)
    start = time.time()

    def evaluate(round_: int, metrics: dict[str, float]) -> None:
        sim.model.load_state_dict(sim.state)
        loss, accuracy = sim.task.evaluate(sim.model, x, y)
        log.append({"round": round_, "test-loss": loss, "test-accuracy": accuracy, **metrics,
                    "elapsed": round(time.time() - start, 3)})
        logger.info("[%s] round %d/%d: test accuracy %.4f, test loss %.4f", settings.name, round_, settings.rounds,
                    accuracy, loss)

    evaluate(0, {})
    for _ in range(settings.rounds):
        done = stepper.step()
        if evaluated(settings, done.round):
            evaluate(done.round, done.metrics)
    return log.finish(seconds=round(time.time() - start, 3))
