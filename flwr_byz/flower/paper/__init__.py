"""The paper's setting as a Flower app: Robust D-SGD workers (``client_app``) under an omniscient adversary
(``server_app``). Its pyproject, run configs and sweep specs live in ``simulations/paper`` and ship
inside this package as ``app/`` (:data:`APP_DIR`)."""

from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "app"
"""The paper app's folder (``flwr run`` target): its pyproject, ``configs/`` and ``sweeps/``."""
