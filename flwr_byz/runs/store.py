"""The results store: a folder of runs, each keyed by the hash of its full settings.

* finished: ``<name>_<key>.jsonl`` (settings, rows, footer with timing and versions), published
  atomically by :class:`~flwr_byz.results.RunLog`;
* failed: ``<name>_<key>.failed.json`` (settings and the error), written atomically, and for runs through
  `flwr run` ``<name>_<key>.log`` (the whole output); both removed when the run later finishes;
* in progress or killed: ``.jsonl.partial`` and, for checkpointed engine runs, ``.jsonl.ckpt``.

A run is *finished* when its results file is complete with equal settings, *failed* when only its failure
record exists, else *pending*. A run is a simulated one (``RunSettings``, its file in its ``results-dir``) or
any object with a ``path`` and a ``header`` (the audit's runs of a user's app).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from flwr_byz.settings import RunSettings, settings_key
from flwr_byz.results import finished, results_path

FAILED = ".failed.json"
STORE_FILE = "store.json"
Run = tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]  # settings, rows, footer of a finished run


def claim(folder: Path | str, honest: int) -> None:
    """Mark ``folder`` as a store of runs with ``honest`` honest nodes, or raise ``ValueError`` if it already holds
    runs with another number (the node count is not part of a run's settings, so mixing would go unnoticed)."""
    path = Path(folder) / STORE_FILE
    if path.exists():
        held = json.loads(path.read_text()).get("honest")
        if held != honest:
            raise ValueError(f"{folder} holds runs with {held} honest nodes per run, this sweep has {honest}: "
                             "use another --out")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"honest": honest}))
    os.replace(tmp, path)


def location(run: Any) -> tuple[Path, dict[str, Any]]:
    """Where a run's results file lies and the settings stored in it: a simulated run (``RunSettings``) or any
    run with a ``path`` and a ``header`` (an audit's)."""
    if isinstance(run, RunSettings):
        return results_path(run), run.to_run_config()
    return run.path, run.header


def label(run: Any) -> str:
    """A run's full name: ``<name>_<key>``, its results file's name without the suffix."""
    return location(run)[0].name.removesuffix(".jsonl")


def failure_path(run: Any) -> Path:
    """Where the failure of a run is recorded (``<name>_<key>.failed.json``)."""
    return location(run)[0].with_name(label(run) + FAILED)


def log_path(run: Any) -> Path:
    """Where the whole output of a failed run is kept (``<name>_<key>.log``)."""
    return location(run)[0].with_name(label(run) + ".log")


def status(run: Any) -> str:
    """``"finished"``, ``"failed"`` or ``"pending"``."""
    if finished(*location(run)):
        return "finished"
    return "failed" if failure_path(run).exists() else "pending"


def record_failure(run: Any, error: str, log: str | None = None) -> Path:
    """Record that the run failed with ``error`` (atomically) and keep its whole output ``log`` (if any) in
    :func:`log_path`; the record's path."""
    if log is not None:
        log_path(run).parent.mkdir(parents=True, exist_ok=True)
        log_path(run).write_text(log)
    path = failure_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": location(run)[1], "error": error}, indent=1))
    os.replace(tmp, path)
    return path


def error(run: Any) -> str:
    """The recorded error of a failed run."""
    return str(json.loads(failure_path(run).read_text())["error"])


def clear_failure(run: Any) -> None:
    failure_path(run).unlink(missing_ok=True)
    log_path(run).unlink(missing_ok=True)


def read(path: Path) -> Run | None:
    """``(settings, rows, footer)`` of a finished results file, else None."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if len(lines) >= 2 and "settings" in lines[0] and lines[-1].get("complete") is True:
        return lines[0]["settings"], lines[1:-1], lines[-1]
    return None


def runs_of(runs: Any) -> list[Run]:
    """``(settings, rows, footer)`` of those of ``runs`` that finished."""
    return [read(location(run)[0]) for run in runs if status(run) == "finished"]


def finished_runs(folder: Path | str) -> list[Run]:
    """``(settings, rows, footer)`` of every finished results file in ``folder`` (partial files are skipped)."""
    return [run for run in map(read, sorted(Path(folder).glob("*.jsonl"))) if run is not None]


def export(folder: Path | str, out: Path | str) -> tuple[Path, int]:
    """One tidy CSV of the finished runs in ``folder`` (simulated runs or an audit's): a row per run and evaluated
    round, the run's key and settings, then the round's metrics (columns: the union over runs, empty where a run has
    none). Returns the path and the number of runs."""
    runs = finished_runs(folder)
    if not runs:
        raise ValueError(f"no finished runs (complete *.jsonl results files) in {folder}")
    records = []
    for settings, rows, _ in runs:
        key = settings_key(settings)
        for row in rows:
            records.append({"run": key, **settings, **row})
    columns = list(dict.fromkeys(k for record in records for k in record))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    return out, len(runs)
