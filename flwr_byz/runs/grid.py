"""Sweep specs: a TOML grid of runs, expanded to the settings of every run.

::

    name = "smoke"
    executor = "engine"        # or "flower" (`flwr run` per run, one at a time)
    honest = 12                # honest nodes; a run has honest + num-byzantine nodes (the paper: n - f = 12)
    checkpoint-every = 0       # engine runs save a checkpoint every K rounds (0: never)

    [grid]                     # run-config keys (see simulations/paper/pyproject.toml)
    task = "mnist-logreg"
    aggregation = ["nnm+cm", "nnm+gm"]      # a list is an axis of the cross product
    attack = ["sf", "jump"]
    seed = [1, 2]
    rounds = 20

    [[exclude]]                # drop the grid's runs that match every key given
    aggregation = "nnm+gm"
    attack = "sf"

    [[include]]                # extra runs: the grid's scalar keys (not its lists), overridden by these
    attack = "none"            # (lists expand too)
    aggregation = "mean"
    num-byzantine = 0
    seed = [1, 2]

Every run is checked (``RunSettings.from_run_config``) when the spec is loaded, so a typo fails
before anything runs, naming the run.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr_byz.settings import RunSettings

EXECUTORS = ("engine", "flower")
TOP_KEYS = {"name", "executor", "honest", "checkpoint-every", "grid", "exclude", "include"}


@dataclass(frozen=True)
class Sweep:
    """A loaded spec: its name, executor, honest nodes per run, checkpoint period and every run's settings."""

    name: str
    executor: str
    honest: int
    checkpoint_every: int
    runs: tuple[RunSettings, ...]

    def nodes(self, settings: RunSettings) -> int:
        """``n`` of a run: the honest nodes plus its Byzantine ones."""
        return self.honest + settings.num_byzantine


def with_executor(sweep: Sweep, executor: str) -> Sweep:
    """The same runs on another executor (planning runs need the engine)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    planning = sorted({s.attack for s in sweep.runs if s.planning})
    if planning and executor == "flower":
        raise ValueError(f"{', '.join(planning)} plan on the whole simulation state: use executor = \"engine\"")
    return dataclasses.replace(sweep, executor=executor)


def expand(grid: dict[str, Any], exclude: list[dict[str, Any]] = (), include: list[dict[str, Any]] = ()
           ) -> list[dict[str, Any]]:
    """Run configs of a grid: the cross product of its list values (in the order written), minus the runs matching
    every key of some ``exclude`` entry, plus each ``include`` entry over the grid's scalars (duplicates once)."""
    def product(config: dict[str, Any]) -> list[dict[str, Any]]:
        axes = [v if isinstance(v, list) else [v] for v in config.values()]
        if any(not axis for axis in axes):
            empty = [k for k, axis in zip(config, axes, strict=True) if not axis]
            raise ValueError(f"sweep: empty list for {', '.join(empty)}")
        return [dict(zip(config, values, strict=True)) for values in itertools.product(*axes)]

    runs = [run for run in product(grid) if not any(_matches(run, rule) for rule in exclude)]
    scalars = {k: v for k, v in grid.items() if not isinstance(v, list)}
    for extra in include:
        runs += product({**scalars, **extra})
    unique: dict[str, dict[str, Any]] = {}
    for run in runs:
        unique.setdefault(repr(sorted(run.items())), run)
    return list(unique.values())


def _matches(run: dict[str, Any], rule: dict[str, Any]) -> bool:
    return all(k in run and (run[k] in v if isinstance(v, list) else run[k] == v) for k, v in rule.items())


def toml_value(text: str) -> Any:
    """A command-line value as TOML reads it (``100``, ``[1, 2]``, ``0.5``), else the text itself (``sf``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load(path: Path | str, results_dir: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Sweep:
    """The sweep of a TOML spec; ``overrides`` replace grid keys (a list makes an axis); every run's results go
    to ``results_dir`` (default: the spec's ``results-dir`` grid key, else the usual results folder)."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"sweep spec {path}: {err}") from err
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise ValueError(f"sweep spec {path}: unknown keys {sorted(unknown)}; valid: {sorted(TOP_KEYS)}")
    executor = spec.get("executor", "engine")
    honest, every = spec.get("honest", 12), spec.get("checkpoint-every", 0)
    if not (isinstance(honest, int) and honest >= 1 and isinstance(every, int) and every >= 0):
        raise ValueError(f"sweep spec {path}: need honest >= 1 and checkpoint-every >= 0 (integers)")
    grid = spec.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"sweep spec {path}: needs a [grid] table of run-config keys")
    grid = {**grid, **(overrides or {})}
    exclude = spec.get("exclude", [])
    unknown = sorted({k for rule in exclude for k in rule} - set(grid))
    if unknown:
        raise ValueError(f"sweep spec {path}: exclude keys {unknown} are not grid keys, so they exclude nothing")
    runs: dict[str, RunSettings] = {}  # by results key: a run spelt twice (alpha 1 and 1.0) runs once
    for config in expand(grid, exclude, spec.get("include", [])):
        if results_dir is not None:
            config = {**config, "results-dir": str(Path(results_dir).resolve())}
        try:
            settings = RunSettings.from_run_config(config)
            settings.aggregator().check(honest + settings.num_byzantine)  # the rule can aggregate this n
        except ValueError as err:
            raise ValueError(f"sweep spec {path}, run {config}: {err}") from err
        runs.setdefault(settings.key, settings)
    try:
        sweep = Sweep(str(spec.get("name", path.stem)), "engine", honest, every, tuple(runs.values()))
        return with_executor(sweep, executor)
    except ValueError as err:
        raise ValueError(f"sweep spec {path}: {err}") from err
