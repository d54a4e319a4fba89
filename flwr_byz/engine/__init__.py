"""The in-process engine: Robust D-SGD of one ``RunSettings`` without Flower's message round trip.

Same tasks, honest step, aggregation, attacks and results file as the Flower path (``flwr run
simulations/paper``), plus the planning adversaries only this process's view allows
(``jump-tau > 1``, ``solve-p``). Imports no Flower module.
"""

from flwr_byz.engine.honest import HonestReplies, HonestWorkers, batchable
from flwr_byz.engine.runner import run
from flwr_byz.engine.simulation import Round, Simulation

__all__ = ["HonestReplies", "HonestWorkers", "Round", "Simulation", "batchable", "run"]
