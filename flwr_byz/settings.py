"""Settings of one simulated run, read from Flower's run config (``[tool.flwr.app.config]``).

Keys are the field names in kebab case (``num-byzantine``). The D-SGD hyper-parameters
(``lr``, ``lr-milestone``, ``lr-gamma``, ``batch-size``, ``clip``, ``l2``, ``rounds``,
``momentum``) default to ``"auto"``: the task's paper values (``Task.defaults``, the one
source of them). Every value is checked when the settings are built, so a typo or an
impossible value fails before training starts, naming the valid choices.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from flwr_byz.adversary_config import ADVERSARY_KEYS, Adversary, parse_params
from flwr_byz.aggregation import Aggregation, get_aggregator
from flwr_byz.attacks import ATTACKS, Attack
from flwr_byz.tasks import TASKS, LossSampling, WorkerConfig, get_task, lr_at
from flwr_byz.tasks.partition import SCHEMES as PARTITION_SCHEMES

AUTO = "auto"
ROOT_SIZE = 100  # FLTrust's root set: 100 class-balanced training examples (Cao et al., 2021)
PLANNED_ATTACKS = ("solve-p",)  # attacks that only the in-process engine can run (flwr_byz.engine.planning)
SCREEN_PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
__all__ = ["ADVERSARY_KEYS", "AUTO", "Adversary", "PLANNED_ATTACKS", "RunSettings", "SCREEN_PRECISIONS",
           "parse_params", "settings_key"]  # the Adversary schema lives in flwr_byz.adversary_config


NEUTRAL = {"fraction-train": 1.0, "root-size": 0}
"""Settings added after results were stored, at the value that reproduces those runs: left out of the key
at that value, so stored runs keep their keys (and sweeps resume them)."""


def settings_key(settings: Mapping[str, Any]) -> str:
    """SHA-256 (12 hex digits) of a run's stored settings but ``results-dir`` (and :data:`NEUTRAL` values):
    the key of its results file."""
    config = {k: v for k, v in settings.items() if k != "results-dir" and NEUTRAL.get(k, object()) != v}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunSettings:
    """One experiment: task, defence, attack, heterogeneity and honest D-SGD hyper-parameters.

    ``num-byzantine`` is the number of Byzantine nodes in the run (the last partition ids);
    ``fraction-train`` the fraction of the nodes the strategy samples each round (1: all, the paper's
    setting; below 1 only on the Flower path, seeded by ``(seed, round)``); ``aggregation-f`` the f the
    defence assumes (``auto``: ``num-byzantine``, times ``fraction-train`` rounded up when sampling: the
    expected number of Byzantine nodes in a sample).
    ``aggregation-params`` / ``attack-params``: ``"key=value, ..."`` for the rule's stages / the attack.
    ``alpha <= 0`` means IID data, ``partition`` how the Dirichlet(``alpha``) label skew is drawn
    (``per-class`` or ``per-worker``, :func:`flwr_byz.tasks.partition`); ``clip = 0`` no clipping; ``lr-milestone = 0`` a constant
    step, otherwise ``lr * lr-gamma`` from round ``lr-milestone + 1`` on; ``eval-size = 0``
    the whole test set; empty ``results-dir`` / ``data-dir`` the defaults. JUMP scores its
    candidates on ``jump-screen-size`` honest examples (0: no screening) in
    ``jump-screen-precision`` and its best few on ``jump-loss-size`` (``auto``: the task's
    ``jump_sample``). ``root-size`` class-balanced training examples are held out of the honest partitions as
    the server's root set, on which it computes its own update of each round (rules that score replies against
    it, FLTrust; ``auto``: 100 for those rules, else 0). ``jump-tau > 1`` plans JUMP's lambdas ``tau`` rounds ahead and attack ``solve-p``
    optimises the Byzantine vectors over the whole run (paper, Algorithm 1 and problem (P)): both need the
    in-process engine (``flwr_byz.engine``). Fields left ``None`` (run config ``"auto"``) are resolved at construction.
    """

    task: str = "mnist"
    """The learning task: ``mnist`` (the paper's CNN), ``mnist-logreg``, ``fashion-mnist``, ``cifar10`` or ``toy2d``
    (its paper hyper-parameters: the task table below)."""
    aggregation: str = "nnm+cm"
    """The defence's spec: a rule, optionally after pre-aggregators joined with ``+`` (``"nnm+gm"``,
    ``"bucketing+nnm+krum"``; the rules reference)."""
    aggregation_f: int | None = None
    """The f the defence assumes (``auto``: ``num-byzantine``; with ``fraction-train < 1``, ``num-byzantine`` times
    it, rounded up: the expected number of Byzantine nodes in a sample). A run attacked by more nodes than the rule
    tolerates stops before round 1."""
    aggregation_params: str = ""
    """Parameters of the defence's stages, ``"key=value, ..."``: ``"nu=0.2, start=median"`` (GM), ``"s=2"``
    (bucketing). A key no stage accepts is an error."""
    num_byzantine: int = 3
    """Byzantine nodes in the run: the last ``num-byzantine`` partition ids (n is the number of nodes)."""
    fraction_train: float = 1.0
    """Fraction of the nodes the strategy samples each round (1: all, the paper's setting; below 1 only on the
    Flower path, seeded by ``(seed, round)``)."""
    attack: str = "none"
    """The attack: ``none``, a name of the attacks reference, or ``solve-p`` (engine only)."""
    attack_params: str = ""
    """The attack's parameters, ``"key=value, ..."``: ``"eps=1.5"`` (FOE), ``"z=1.0"`` (ALIE),
    ``"solver=powell"`` (JUMP's solver: ``global``, the default, or ``powell``, the paper's)."""
    jump_tau: int = 1
    """JUMP's segment length: ``> 1`` plans the lambdas ``tau`` rounds ahead (the paper's JUMP-tau; engine only)."""
    jump_loss_size: int | None = None
    """Honest examples JUMP's best candidates (and the reported ``jump-loss``) are scored on (``auto``: the task's
    JUMP sample)."""
    jump_screen_size: int | None = None
    """Honest examples every JUMP candidate is screened on first (0: no screening; ``auto``: the task's JUMP sample)."""
    jump_screen_precision: str = "float32"
    """Precision of JUMP's screening passes: ``float32`` or ``bfloat16`` (faster on CPUs with bf16 units)."""
    alpha: float = 0.1
    """Heterogeneity: the Dirichlet(``alpha``) label skew of the honest nodes' data (``<= 0``: IID)."""
    partition: str = "per-worker"
    """How the label skew is drawn: ``per-worker`` (each worker's class mix, Hsu et al.) or ``per-class`` (each
    class's split over the workers, Lin et al.)."""
    seed: int = 1
    """Seed of the model, the partition, the batches, the attack's randomness and the reply order."""
    rounds: int | None = None
    """Training rounds T (``auto``: the task's)."""
    lr: float | None = None
    """The honest workers' learning rate gamma (``auto``: the task's)."""
    lr_milestone: int | None = None
    """Round after which the learning rate is multiplied by ``lr-gamma`` (0: a constant step; ``auto``: the task's)."""
    lr_gamma: float | None = None
    """The factor applied to the learning rate after ``lr-milestone`` (``auto``: the task's)."""
    batch_size: int | None = None
    """Examples per honest stochastic gradient (``auto``: the task's)."""
    clip: float | None = None
    """Norm each honest stochastic gradient is clipped to before momentum (0: no clipping; ``auto``: the task's)."""
    l2: float | None = None
    """L2 regularisation added to the honest gradients (``auto``: the task's)."""
    momentum: float | None = None
    """Local momentum beta of the honest workers, ``m <- beta m + (1 - beta) g`` (``auto``: the task's)."""
    server_lr: float = 1.0
    """The server's step on the aggregate, as a multiple of the learning rate."""
    root_size: int | None = None
    """Class-balanced training examples held out of the honest partitions as the server's root set, on which it
    computes its own update each round for rules that score replies against it (FLTrust); ``auto``: 100 for those
    rules, else 0."""
    eval_every: int = 10
    """Evaluate the global model on the test set every this many rounds (and at the last)."""
    eval_size: int = 0
    """Test examples each evaluation uses (0: the whole test set)."""
    results_dir: str = ""
    """Folder of the run's results file (empty: ``~/flwr-byz-results``; sweeps set it to their store)."""
    data_dir: str = ""
    """Folder of the offline datasets (empty: ``$FLWR_BYZ_DATA``, else ``~/.cache/flwr-byz``)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        task = get_task(self.task)
        for name, value in task.defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.jump_loss_size is None:
            object.__setattr__(self, "jump_loss_size", task.jump_sample[0])
        if self.jump_screen_size is None:
            object.__setattr__(self, "jump_screen_size", min(task.jump_sample[1], self.jump_loss_size))
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction-train must be in (0, 1], got {self.fraction_train}")
        if self.aggregation_f is None:
            object.__setattr__(self, "aggregation_f", math.ceil(self.num_byzantine * self.fraction_train - 1e-9))
        if self.num_byzantine < 0:
            raise ValueError(f"num-byzantine must be >= 0, got {self.num_byzantine}")
        if self.attack != "none" and self.attack not in ATTACKS and self.attack not in PLANNED_ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; valid: none, {', '.join([*ATTACKS, *PLANNED_ATTACKS])}")
        if self.partition not in PARTITION_SCHEMES:
            raise ValueError(f"unknown partition {self.partition!r}; valid: {', '.join(PARTITION_SCHEMES)}")
        if self.jump_tau < 1:
            raise ValueError(f"jump-tau must be at least 1, got {self.jump_tau}")
        needs_root = self.aggregator().needs_reference  # unknown names and parameters a stage rejects fail here
        if self.root_size is None:
            object.__setattr__(self, "root_size", ROOT_SIZE if needs_root else 0)
        if needs_root and (self.root_size < 1 or self.task == "toy2d"):
            raise ValueError(f"{self.aggregation!r} scores the replies against the server's update on its root set: "
                             f"set root-size > 0 (auto: {ROOT_SIZE}) on a task with training data (not toy2d)")
        if self.root_size < 0:
            raise ValueError(f"root-size must be >= 0, got {self.root_size}")
        if self.attack != "none" and not self.planning:  # planners check their own parameters
            self.make_attack().check_rule(self.aggregator())
        self.loss_sampling()
        for name in ("rounds", "batch_size", "eval_every", "jump_loss_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "server_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lr_milestone < 0 or not self.lr_gamma > 0 or self.clip < 0 or self.l2 < 0 or self.eval_size < 0:
            raise ValueError("need lr-milestone >= 0, lr-gamma > 0, clip >= 0, l2 >= 0 and eval-size >= 0")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    # --------------------------------------------------------------- run config
    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Settings from a run config; unknown keys or values of the wrong type raise ``ValueError``."""
        hints = _field_types()
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in hints:
                valid = ", ".join(f.name.replace("_", "-") for f in dataclasses.fields(cls))
                raise ValueError(f"unknown run-config key {key!r}; valid keys: {valid}")
            values[name] = _coerce(key, value, hints[name])
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The (resolved) settings as run-config items (kebab-case keys)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    @property
    def key(self) -> str:
        """A hash of every setting that shapes the results (all but ``results-dir``): a run's identity."""
        return settings_key(self.to_run_config())

    # --------------------------------------------------------------- what the settings build
    @property
    def aggregation_kwargs(self) -> dict[str, Any]:
        """``aggregation-params`` as keyword arguments of ``get_aggregator``."""
        return parse_params(self.aggregation_params, "aggregation-params")

    def aggregator(self) -> Aggregation:
        """The defended rule ``get_aggregator(aggregation, aggregation-f, **aggregation-params)``."""
        return get_aggregator(self.aggregation, self.aggregation_f, **self.aggregation_kwargs)

    def check_nodes(self, nodes: int) -> None:
        """Raise ``ValueError`` unless the rule can aggregate what the server receives each round from ``nodes``
        nodes: every reply, or only the honest ones when the Byzantine nodes stay silent (``attack = "none"``),
        where a rule that needs more would keep the initial model all run long."""
        rule = self.aggregator()
        rule.check(nodes)
        if self.num_byzantine and not self.adversary.attacking:
            try:
                rule.check(nodes - self.num_byzantine)
            except ValueError as error:
                raise ValueError(f"{error}. With attack='none' the {self.num_byzantine} Byzantine nodes stay silent "
                                 f"and the server receives {nodes - self.num_byzantine} replies a round: for a "
                                 "no-attack baseline of this rule, set num-byzantine=0 and aggregation-f="
                                 f"{self.aggregation_f} on {nodes} honest nodes") from None

    @property
    def adversary(self) -> Adversary:
        """The run's :class:`Adversary` (its keys are the Byzantine ClientApp's whole run-config schema)."""
        return Adversary(self.attack, self.num_byzantine, self.attack_params, self.seed)

    def make_attack(self) -> Attack:
        """The attack ``get_attack(attack, **attack-params)``."""
        return self.adversary.make_attack()

    @property
    def planning(self) -> bool:
        """Whether the attack plans ahead (``jump`` with ``jump-tau > 1``, ``solve-p``): engine only."""
        return self.attack in PLANNED_ATTACKS or (self.attack == "jump" and self.jump_tau > 1)

    def loss_sampling(self) -> LossSampling:
        """JUMP's honest-loss samples: ``jump-loss-size`` examples, screening on ``jump-screen-size``
        of them in ``jump-screen-precision``."""
        if self.jump_screen_precision not in SCREEN_PRECISIONS:
            raise ValueError(f"unknown jump-screen-precision {self.jump_screen_precision!r}; "
                             f"valid: {', '.join(SCREEN_PRECISIONS)}")
        return LossSampling(self.jump_loss_size, self.jump_screen_size, SCREEN_PRECISIONS[self.jump_screen_precision])

    @property
    def alpha_or_iid(self) -> float | None:
        """Dirichlet concentration, or None for IID."""
        return self.alpha if self.alpha > 0 else None

    def lr_at(self, round: int) -> float:
        """Client step ``gamma_t`` of round ``t`` (1-based)."""
        return lr_at(round, self.lr, self.lr_milestone, self.lr_gamma)

    def worker(self) -> WorkerConfig:
        """Hyper-parameters of the honest worker step."""
        return WorkerConfig(
            batch_size=self.batch_size, l2=self.l2, clip=self.clip if self.clip > 0 else None,
            momentum=self.momentum,
        )

    @property
    def name(self) -> str:
        """Short display name: task, defence, attack, f, alpha, seed (not an identity: see :attr:`key`)."""
        alpha = f"a{self.alpha:g}" if self.alpha > 0 else "iid"
        return f"{self.task}_{self.aggregation}_{self.attack}_f{self.num_byzantine}_{alpha}_s{self.seed}"


@functools.cache
def _field_types() -> dict[str, Any]:
    """The resolved type hints of :class:`RunSettings` (resolving them costs more than parsing a config)."""
    return typing.get_type_hints(RunSettings)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type; ``"auto"`` is ``None`` where the field allows it."""
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    if value == AUTO and type(None) in typing.get_args(hint):
        return None
    kind = kinds[0]
    try:
        out = kind(value)
    except (TypeError, ValueError):
        out = None
    if out is None or isinstance(value, bool) or (kind is int and float(value) != out):
        auto = " or 'auto'" if type(None) in typing.get_args(hint) else ""
        raise ValueError(f"run-config key {key!r} needs {'an' if kind is int else 'a'} {kind.__name__}{auto}, "
                         f"got {value!r}")
    return out
