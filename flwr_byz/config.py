"""Settings of one simulated run, read from Flower's run config (``[tool.flwr.app.config]``).

Keys are the field names in kebab case (``num-byzantine``); the defaults are the
paper's MNIST setting (Table 2) with NNM + CM, f = 3 and alpha = 0.1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .aggregation import get_aggregator
from .attacks import ATTACKS
from .tasks import TASKS, WorkerConfig


@dataclass(frozen=True)
class RunSettings:
    """One experiment: task, defence, attack, heterogeneity and honest D-SGD hyper-parameters.

    ``alpha <= 0`` means IID data; ``clip <= 0`` no clipping; ``lr-milestone = 0`` a
    constant step, otherwise ``lr * lr-gamma`` from round ``lr-milestone + 1`` on;
    ``eval-size = 0`` the whole test set; empty ``results-dir`` / ``data-dir`` the defaults.
    """

    task: str = "mnist"
    aggregation: str = "nnm+cm"
    num_byzantine: int = 3
    attack: str = "none"
    alpha: float = 0.1
    seed: int = 1
    rounds: int = 800
    lr: float = 0.1
    lr_milestone: int = 0
    lr_gamma: float = 0.1
    batch_size: int = 32
    clip: float = 2.0
    l2: float = 1e-4
    momentum: float = 0.9
    server_lr: float = 1.0
    eval_every: int = 10
    eval_size: int = 0
    jump_solver: str = "global"
    jump_loss_size: int = 1024
    results_dir: str = ""
    data_dir: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.attack != "none" and self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; valid: none, {', '.join(ATTACKS)}")
        get_aggregator(self.aggregation, self.num_byzantine)  # unknown names fail here, naming the valid ones
        for name in ("rounds", "batch_size", "eval_every", "jump_loss_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Settings from a run config; unknown keys raise ``ValueError`` listing the valid ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in fields:
                valid = ", ".join(f.replace("_", "-") for f in fields)
                raise ValueError(f"unknown run-config key {key!r}; valid keys: {valid}")
            kind = type(fields[name].default)
            values[name] = kind(value)
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The settings as run-config items (kebab-case keys)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    @property
    def alpha_or_iid(self) -> float | None:
        """Dirichlet concentration, or None for IID."""
        return self.alpha if self.alpha > 0 else None

    def lr_at(self, round: int) -> float:
        """Client step ``gamma_t`` of round ``t`` (1-based)."""
        decayed = self.lr_milestone and round > self.lr_milestone
        return self.lr * self.lr_gamma if decayed else self.lr

    def worker(self) -> WorkerConfig:
        """Hyper-parameters of the honest worker step."""
        return WorkerConfig(
            batch_size=self.batch_size, l2=self.l2, clip=self.clip if self.clip > 0 else None,
            momentum=self.momentum,
        )

    @property
    def name(self) -> str:
        """Short run name: task, defence, attack, f, alpha, seed."""
        alpha = f"a{self.alpha:g}" if self.alpha > 0 else "iid"
        return f"{self.task}_{self.aggregation}_{self.attack}_f{self.num_byzantine}_{alpha}_s{self.seed}"
