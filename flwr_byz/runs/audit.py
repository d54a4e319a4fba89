"""`flwr-byz audit`: a user's own Flower app under a grid of attacks x f x seeds, through `flwr run`.

The app needs two lines: ``app = byzantine(app)`` in its client app and
``OmniscientAdversary(strategy)`` in its server app. Flower refuses ``--run-config`` keys an app
does not declare, so the audit runs a staged copy whose run config also declares the wrapper's keys
(:data:`flwr_byz.flower.byzantine.RUN_CONFIG`). Each run reads the hook's JSON log lines
(``flwr_byz.flower.adversary.EVENT``) back from `flwr run`'s output: the defence and the f it
tolerates, every evaluation of the app's own ``evaluate_fn`` (and federated evaluation, as
``federated-<metric>``) and every round's training and attack metrics. The runs are grids of the
sweep executor (``flower``, with the staged app as its target: :class:`UserApp`) into a results
store (``<out>/runs``, one file per run keyed by its settings and the app's source), so an
interrupted audit resumes where it stopped. The clean reference is attack ``none`` with no Byzantine
node, run first; the grid covers f = 1 .. the largest f the strategy tolerates.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import shutil
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from flwr_byz.attacks import ATTACKS
from flwr_byz.settings import ADVERSARY_KEYS as RUN_CONFIG
from flwr_byz.settings import settings_key
from flwr_byz.flower.adversary import EVENT
from flwr_byz.runs import executor, report, store
from flwr_byz.runs.grid import Sweep
from flwr_byz.runs.launcher import ANSI, FlowerLauncher, RunOutcome, tail
from flwr_byz.results import RunLog

FEDERATED = "federated-"
AUTO_METRICS = ("accuracy", FEDERATED + "accuracy")  # --metric auto: the first the baseline reports
DEFAULT_ATTACKS = ("none", "sf", "alie", "foe", "minmax", "minsum", "mimic", "jump")
ROUNDS_KEYS = ("num-server-rounds", "num-rounds", "rounds")
SOURCES = ("*.py", "pyproject.toml")
SKIPPED = (".git", "__pycache__", "*.egg-info", ".flwr*", ".venv", "results")  # not part of an app's code


def app_config(app_dir: Path) -> dict[str, Any]:
    """The app's ``[tool.flwr.app.config]``; ``ValueError`` if ``app_dir`` is not a Flower app."""
    pyproject = Path(app_dir) / "pyproject.toml"
    if not pyproject.is_file():
        raise ValueError(f"{app_dir} is not a Flower app: no pyproject.toml")
    app = tomllib.loads(pyproject.read_text()).get("tool", {}).get("flwr", {}).get("app")
    if app is None:
        raise ValueError(f"{pyproject} has no [tool.flwr.app] table: not a Flower app")
    return dict(app.get("config", {}))


def source_hash(app_dir: Path) -> str:
    """SHA-256 (12 hex digits) of the app's Python sources and pyproject: runs of edited code never mix."""
    digest = hashlib.sha256()
    def skipped(path: Path) -> bool:
        return any(fnmatch.fnmatch(part, pattern) for part in path.relative_to(app_dir).parts for pattern in SKIPPED)

    for path in sorted(p for pattern in SOURCES for p in Path(app_dir).rglob(pattern) if not skipped(p)):
        digest.update(str(path.relative_to(app_dir)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def stage(app_dir: Path, dest: Path) -> Path:
    """A copy of the app at ``dest`` whose run config also declares the wrapper's keys (``attack``,
    ``num-byzantine``, ``attack-params``, ``seed``: those the app lacks, at their defaults)."""
    config = app_config(app_dir)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(app_dir, dest, ignore=shutil.ignore_patterns(*SKIPPED))
    pyproject = tomllib.loads((dest / "pyproject.toml").read_text())
    pyproject["tool"]["flwr"]["app"]["config"] = {**RUN_CONFIG, **config}
    (dest / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    return dest


@dataclass(frozen=True)
class AuditRun:
    """One run of the audit: ``attack`` with ``f`` Byzantine nodes of ``nodes``, ``seed``, ``rounds``
    (``None``: the app's own) and the run-config passthrough, on the app ``app`` whose sources hash to ``source``;
    stored in the folder ``store``. Its identity is its :attr:`header`."""

    app: str
    source: str
    nodes: int
    attack: str
    f: int
    seed: int
    rounds: int | None = None
    run_config: tuple[tuple[str, Any], ...] = ()
    store: str = "."
    loss_key: str = ""

    @property
    def header(self) -> dict[str, Any]:
        loss = {"loss-key": self.loss_key} if self.loss_key else {}
        return {"app": self.app, "source": self.source, "num-supernodes": self.nodes, "attack": self.attack,
                "num-byzantine": self.f, "seed": self.seed, "rounds": self.rounds, "run-config": dict(self.run_config),
                **loss}

    @property
    def name(self) -> str:
        return f"{self.attack}_f{self.f}_s{self.seed}"

    @property
    def path(self) -> Path:
        return Path(self.store) / f"{self.name}_{settings_key(self.header)}.jsonl"

    def overrides(self, rounds_key: str | None) -> dict[str, Any]:
        """The ``--run-config`` of this run."""
        rounds = {rounds_key: self.rounds} if rounds_key and self.rounds is not None else {}
        loss = {"loss-key": self.loss_key} if self.loss_key else {}
        return {**dict(self.run_config), **rounds, "attack": self.attack, "num-byzantine": self.f, "seed": self.seed,
                **loss}


def events(output: str) -> Iterator[dict[str, Any]]:
    """The hook's events in a run's output."""
    for line in output.splitlines():
        _, mark, payload = ANSI.sub("", line).partition(EVENT)
        if mark:
            yield json.loads(payload)


PREFIXES = {"evaluate": "", "federated-evaluate": FEDERATED, "train": "train-"}


def column(prefix: str, key: str) -> str:
    """``prefix + key``, without repeating it: the app's ``train_loss`` is ``train-loss``, not ``train-train_loss``."""
    stem = prefix.rstrip("-")
    if stem and key.lower().startswith(stem) and key[len(stem):][:1] in ("_", "-"):
        key = key[len(stem) + 1:]
    return prefix + key


def rows(found: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per round: the app's ``evaluate_fn`` metrics, federated evaluation's as ``federated-<key>``, the
    round's training and attack metrics as ``train-<key>`` (``train-jump-lambda``, ...; :func:`column`) and ``time``
    (end of training). Non-finite values are kept as the strings ``nan``, ``inf``, ``-inf`` (a diverged run stays
    one)."""
    by_round: dict[int, dict[str, Any]] = {}
    for event in found:
        prefix = PREFIXES.get(event["event"])
        if prefix is None:
            continue
        row = by_round.setdefault(int(event["round"]), {"round": int(event["round"])})
        for key, value in event["metrics"].items():
            finite = not isinstance(value, float) or math.isfinite(value)
            row[column(prefix, key)] = value if finite else str(value)
        if event["event"] == "train":
            row["time"] = event["time"]
    return [by_round[r] for r in sorted(by_round)]


@dataclass(frozen=True)
class UserApp:
    """The ``flower`` executor's target for an audit: the user's staged app; a run's rows are the hook's events
    in its output (:func:`rows`), stored with the run's header and the defence the hook logged."""

    folder: Path
    rounds_key: str | None
    timeout: float

    def run_config(self, run: AuditRun) -> dict[str, Any]:
        return run.overrides(self.rounds_key)

    def collect(self, run: AuditRun, outcome: RunOutcome, seconds: float) -> str | None:
        found = list(events(outcome.output))
        table = rows(found)
        if not outcome.ok or not table:
            why = "" if found else ("no flwr-byz events in its output: wrap the ServerApp's strategy in "
                                    "flwr_byz.flower.OmniscientAdversary and run it with strategy.start() (or the "
                                    "app failed before the hook's first event: see its output below)\n")
            return f"{why}status {outcome.status}\n{tail(outcome.output)}"
        log = RunLog(run.path, run.header)
        for row in table:
            log.append(row)
        log.finish(seconds=round(seconds, 3), defence=next((e for e in found if e["event"] == "defence"), None))
        return None


def resolve_metric(baseline: list[dict[str, Any]], metric: str) -> str:
    """``metric``, checked against the baseline's rows; ``auto``: the first of :data:`AUTO_METRICS` they report."""
    if metric != "auto":
        report.value(baseline, metric)  # a metric the app does not report fails here, naming those it does
        return metric
    have = report.metrics_of(baseline)
    found = next((m for m in AUTO_METRICS if m in have), None)
    if found is None:
        raise ValueError(f"the app reports neither {' nor '.join(AUTO_METRICS)}: choose --metric <one of "
                         f"{', '.join(have) or 'none: the app reports no metrics'}>")
    return found


@dataclass
class Audit:
    """The audit of one app: its staged copy, the store and the settings shared by every run."""

    app_dir: Path
    out: Path
    nodes: int = 10
    rounds: int | None = None
    rounds_key: str | None = None
    run_config: dict[str, Any] = field(default_factory=dict)
    timeout: float = 3600
    echo: TextIO = sys.stdout
    loss_key: str | None = None

    def __post_init__(self) -> None:
        self.app_dir, self.out = Path(self.app_dir).resolve(), Path(self.out).resolve()
        if self.out.is_relative_to(self.app_dir):
            raise ValueError(f"--out {self.out} is inside the app's folder, which is staged and hashed: choose a "
                             "folder outside it")
        config = app_config(self.app_dir)
        owned = sorted(set(self.run_config) & set(RUN_CONFIG))
        if owned:
            raise ValueError(f"--run-config keys {owned} are the audit's: use --attacks, --f and --seeds "
                             "(attack-params would apply to every attack: run such a case with flwr run)")
        unknown = sorted(set(self.run_config) - set(config))
        if unknown:
            raise ValueError(f"--run-config keys {unknown} are not in the app's [tool.flwr.app.config] "
                             f"(it has {sorted(config)})")
        if self.rounds is not None and self.rounds_key is None:
            found = [key for key in ROUNDS_KEYS if key in config]
            if not found:
                raise ValueError(f"--rounds: the app's run config has none of {', '.join(ROUNDS_KEYS)}; name its "
                                 "rounds key with --rounds-key")
            self.rounds_key = found[0]
        if self.nodes < 2:
            raise ValueError(f"--num-supernodes must be at least 2, got {self.nodes}")
        self.runs_dir = self.out / "runs"
        self.source = source_hash(self.app_dir)
        self.name = self.app_dir.name

    def run_of(self, attack: str, f: int, seed: int, loss_key: str = "") -> AuditRun:
        needs_loss = attack != "none" and ATTACKS[attack].needs_loss
        return AuditRun(self.name, self.source, self.nodes, attack, f, seed, self.rounds,
                        tuple(sorted(self.run_config.items())), str(self.runs_dir), loss_key if needs_loss else "")

    def sweep(self, name: str, runs: list[AuditRun]) -> Sweep:
        """``runs`` as a grid of the ``flower`` executor on the staged app."""
        app = UserApp(self.out / "app", self.rounds_key, self.timeout)
        return Sweep(f"{self.name} {name}", "flower", None, 0, tuple(runs), app=app)

    def say(self, text: str) -> None:
        self.echo.write(text + "\n")
        self.echo.flush()

    def run(self, attacks: Sequence[str], fs: Sequence[int] | None, seeds: Sequence[int], metric: str = "auto",
            threshold: float = 0.5) -> tuple[Path, list[Path], list[AuditRun]]:
        """Baselines, then the grid (failed runs are run again; what happened: :attr:`outcome`); the report
        (``<out>/report``), its files and the runs that failed. ``metric`` ``auto``: the first of
        :data:`AUTO_METRICS` the baseline reports. The metric and JUMP's loss metric are resolved from the
        baseline, before any attacked run."""
        unknown = [a for a in attacks if a != "none" and a not in ATTACKS]
        if unknown or not seeds:
            raise ValueError(f"unknown attacks {unknown}; valid: none, {', '.join(ATTACKS)}" if unknown
                             else "--seeds: give at least one seed")
        if not 0 < threshold <= 1:
            raise ValueError(f"--threshold must be in (0, 1], got {threshold}")
        stage(self.app_dir, self.out / "app")
        with FlowerLauncher(self.out / ".flwr-home") as launcher:
            self.say(f"audit of {self.app_dir} on {self.nodes} nodes -> {self.out}")
            baselines = self.sweep("baselines", [self.run_of("none", 0, seed) for seed in seeds])
            outcome = executor.run_sweep(baselines, executor.plan(baselines, retry_failed=True), launcher=launcher)
            if outcome.failed:
                raise RuntimeError("the app failed without attack, so nothing else runs:\n"
                                   f"{store.error(outcome.failed[0])}")
            done = store.runs_of(baselines.runs)
            metric = resolve_metric(done[0][1], metric)
            loss_key = self.jump_loss_key(done[0][1], attacks)
            defence = done[0][2].get("defence")
            grid = self.grid(defence, fs)
            attacked = self.sweep("attacks", [self.run_of(a, f, s, loss_key) for f in grid for a in attacks
                                              if a != "none" for s in seeds])
            planned = executor.plan(attacked, retry_failed=True)
            self.say(f"metric {metric}; {defence['strategy']} tolerates f <= {defence['tolerated_f']}: auditing "
                     f"f = {', '.join(map(str, grid))}, {len(attacked.runs)} attacked runs "
                     f"({len(planned[1].skipped)} finished before)")
            self.outcome = executor.run_sweep(attacked, planned, launcher=launcher)
            failed = self.outcome.failed
        done += store.runs_of(attacked.runs)
        if not any(settings["attack"] != "none" for settings, _, _ in done):
            raise RuntimeError(f"every attacked run failed; the first one's error:\n{store.error(failed[0])}")
        path, paths = report.write_audit_report(done, self.out / "report", metric, threshold, title=self.name,
                                                failed=[r.name for r in failed])
        return path, paths, failed

    def jump_loss_key(self, baseline: list[dict[str, Any]], attacks: Sequence[str]) -> str:
        """The evaluate metric the loss-scoring attacks (JUMP) maximise: ``--loss-key``, else the one federated
        metric named ``*loss*`` of the baseline; empty when no such attack runs or the baseline has no
        federated evaluation (the hook then resolves it at the attack's first round)."""
        if not any(a != "none" and ATTACKS[a].needs_loss for a in attacks):
            return ""
        reported = [k[len(FEDERATED):] for k in report.metrics_of(baseline) if k.startswith(FEDERATED)]
        if self.loss_key:
            if reported and self.loss_key not in reported:
                raise ValueError(f"--loss-key {self.loss_key!r}: the app's evaluate handler reports "
                                 f"{', '.join(reported)}")
            return self.loss_key
        if not reported:
            self.say("the baseline has no federated evaluation: JUMP's loss metric is checked at its first round")
            return ""
        found = [k for k in reported if "loss" in k.lower()]
        if len(found) != 1:
            raise ValueError(f"JUMP maximises the loss your evaluate handler reports, and its metrics "
                             f"({', '.join(reported)}) hold {len(found)} names with 'loss': choose one with "
                             "--loss-key")
        return found[0]

    def grid(self, defence: dict[str, Any] | None, fs: Sequence[int] | None) -> list[int]:
        """The f values to audit: ``fs``, or 1 .. the tolerated f the hook logged; each checked against it."""
        if defence is None:
            raise ValueError("the app's ServerApp logged no defence: wrap its strategy in "
                             "flwr_byz.flower.OmniscientAdversary (a strategy flwr_byz does not know needs "
                             "OmniscientAdversary(strategy, defended=DefendedRule(spec, f)))")
        tolerated = int(defence["tolerated_f"])
        what = f"{defence['strategy']} ({defence['rule']}, f={defence['rule_f']}) on {defence['nodes']} nodes"
        if tolerated < 1:
            raise ValueError(f"{what} tolerates no Byzantine node: configure it for f >= 1 or use more nodes")
        too_many = [f for f in fs or () if not 1 <= f <= tolerated]
        if too_many:
            raise ValueError(f"--f {too_many}: {what} tolerates 1 <= f <= {tolerated}")
        return sorted(set(fs)) if fs else list(range(1, tolerated + 1))
