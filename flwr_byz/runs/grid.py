"""Sweep specs: a TOML grid of runs, expanded to the settings of every run.

::

    name = "smoke"
    executor = "engine"        # or "flower" (`flwr run` per run, one at a time)
    honest = 12                # honest nodes; a run has honest + num-byzantine nodes (the paper: n - f = 12)
    checkpoint-every = 0       # engine runs save a checkpoint every K rounds (0: never)
    warm-up = false            # each engine worker first runs 2 untimed rounds (for runs whose seconds matter)

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

A spec is named by its path or, for the packaged ones (``simulations/paper/sweeps``), by its name
(``smoke``). Overrides (``flwr-byz sweep --set``) replace grid keys and the lists (axes) of the include
entries that have the same key: ``--set "seed=[1,2]"`` reduces the baselines' seeds too, while an include's
scalar (``aggregation = "mean"``) stays. Every run is checked (``RunSettings.from_run_config``, the rule for
its n, what planning attacks need) when the spec is loaded, so a typo fails before anything runs, naming
the run. :func:`sweep_of` builds the same checked sweep from run configs in memory (``flwr-byz stress``).
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr_byz.engine.planning import check_planning
from flwr_byz.flower.paper import APP_DIR
from flwr_byz.settings import RunSettings

EXECUTORS = ("engine", "flower")
TOP_KEYS = {"name", "executor", "honest", "checkpoint-every", "warm-up", "grid", "exclude", "include"}
SPECS = APP_DIR / "sweeps"


@dataclass(frozen=True)
class Sweep:
    """A grid of runs: its name, executor (``engine``: Ray tasks; ``flower``: `flwr run` of ``app``), honest
    nodes per run, checkpoint period and runs. ``runs`` are simulated runs (``RunSettings``), or the audit's
    runs of a user's app, which name their own nodes (``honest`` None). ``app``: the Flower app of the
    ``flower`` executor (None: the paper's). ``warm_up``: each engine worker first runs two untimed rounds
    (a process's first run pays one-off costs; for runs whose seconds are compared)."""

    name: str
    executor: str
    honest: int | None
    checkpoint_every: int
    runs: tuple[Any, ...]
    app: Any = None
    warm_up: bool = False

    def nodes(self, run: Any) -> int:
        """``n`` of a run: the honest nodes plus its Byzantine ones (an audit's run: its own)."""
        return run.nodes if self.honest is None else self.honest + run.num_byzantine


def with_executor(sweep: Sweep, executor: str) -> Sweep:
    """The same runs on another executor (planning runs need the engine)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    planning = sorted({s.attack for s in sweep.runs if s.planning})
    if planning and executor == "flower":
        raise ValueError(f"{', '.join(planning)} plan ahead on the whole simulation state: add --executor engine "
                         "(or use executor = \"engine\" in a spec)")
    return dataclasses.replace(sweep, executor=executor)


def sweep_of(name: str, executor: str, honest: int, configs: list[dict[str, Any]], checkpoint_every: int = 0,
             warm_up: bool = False) -> Sweep:
    """The sweep of run configs, each checked (its settings, the rule for its n, what a planning attack needs);
    a run spelt twice (alpha 1 and 1.0) runs once. ``ValueError`` names the run that is wrong."""
    runs: dict[str, RunSettings] = {}  # by results key
    for config in configs:
        try:
            settings = RunSettings.from_run_config(config)
            settings.aggregator().check(honest + settings.num_byzantine)  # the rule can aggregate this n
            check_planning(settings)
        except ValueError as err:
            raise ValueError(f"run {config}: {err}") from err
        runs.setdefault(settings.key, settings)
    return with_executor(Sweep(name, "engine", honest, checkpoint_every, tuple(runs.values()), warm_up=warm_up),
                         executor)


def spec_path(spec: Path | str) -> Path:
    """The spec file of a path, or of the name of a packaged spec (``smoke``: ``<APP_DIR>/sweeps/smoke.toml``)."""
    path = Path(spec)
    if path.suffix == ".toml" or len(path.parts) > 1 or path.exists():
        return path
    named = SPECS / f"{spec}.toml"
    if not named.is_file():
        names = sorted(p.stem for p in SPECS.glob("*.toml"))
        raise ValueError(f"no sweep spec named {str(spec)!r}: give a path or one of {', '.join(names)}")
    return named


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


def load(spec: Path | str, results_dir: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Sweep:
    """The sweep of a TOML spec (a path or a packaged spec's name); ``overrides`` replace grid keys (a list makes
    an axis) and the include entries' lists of the same keys; every run's results go to ``results_dir``
    (default: the spec's ``results-dir`` grid key, else the usual results folder)."""
    path = spec_path(spec)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"sweep spec {path}: {err}") from err
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise ValueError(f"sweep spec {path}: unknown keys {sorted(unknown)}; valid: {sorted(TOP_KEYS)}")
    executor, warm_up = spec.get("executor", "engine"), spec.get("warm-up", False)
    honest, every = spec.get("honest", 12), spec.get("checkpoint-every", 0)
    if not (isinstance(honest, int) and honest >= 1 and isinstance(every, int) and every >= 0
            and isinstance(warm_up, bool)):
        raise ValueError(f"sweep spec {path}: need honest >= 1 and checkpoint-every >= 0 (integers), warm-up a "
                         "boolean")
    grid = spec.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"sweep spec {path}: needs a [grid] table of run-config keys")
    overrides = overrides or {}
    grid = {**grid, **overrides}
    include = [{k: overrides.get(k, v) if isinstance(v, list) else v for k, v in extra.items()}
               for extra in spec.get("include", [])]
    exclude = spec.get("exclude", [])
    unknown = sorted({k for rule in exclude for k in rule} - set(grid))
    if unknown:
        raise ValueError(f"sweep spec {path}: exclude keys {unknown} are not grid keys, so they exclude nothing")
    configs = expand(grid, exclude, include)
    if results_dir is not None:
        configs = [{**config, "results-dir": str(Path(results_dir).resolve())} for config in configs]
    try:
        return sweep_of(str(spec.get("name", path.stem)), executor, honest, configs, every, warm_up)
    except ValueError as err:
        raise ValueError(f"sweep spec {path}: {err}") from err
