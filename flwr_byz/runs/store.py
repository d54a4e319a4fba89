"""The results store: a folder of runs, each keyed by the hash of its full settings.

* finished: ``<name>_<key>.jsonl`` (settings, rows, footer with timing and versions), published
  atomically by :class:`~flwr_byz.results.RunLog`;
* failed: ``<name>_<key>.failed.json`` (settings and the error), written atomically, removed when the
  run later finishes;
* in progress or killed: ``.jsonl.partial`` and, for checkpointed engine runs, ``.jsonl.ckpt``.

A run is *finished* when its results file is complete with equal settings, *failed* when only its failure
record exists, else *pending*.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from flwr_byz.settings import RunSettings, settings_key
from flwr_byz.results import is_complete, results_path

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


def failure_path(settings: RunSettings) -> Path:
    return failure_of(results_path(settings))


def failure_of(results: Path) -> Path:
    """Where the failure of the run stored at ``results`` is recorded."""
    return results.with_name(results.name.removesuffix(".jsonl") + FAILED)


def status(settings: RunSettings) -> str:
    """``"finished"``, ``"failed"`` or ``"pending"``."""
    if is_complete(settings):
        return "finished"
    return "failed" if failure_path(settings).exists() else "pending"


def record_failure(settings: RunSettings, error: str) -> Path:
    """Record that the run failed with ``error`` (atomically); the record's path."""
    return write_failure(failure_path(settings), settings.to_run_config(), error)


def write_failure(path: Path, header: dict[str, Any], error: str) -> Path:
    """Write the failure record ``{"settings": header, "error": error}`` to ``path`` atomically; ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": header, "error": error}, indent=1))
    os.replace(tmp, path)
    return path


def clear_failure(settings: RunSettings) -> None:
    failure_path(settings).unlink(missing_ok=True)


def finished_runs(folder: Path | str) -> list[Run]:
    """``(settings, rows, footer)`` of every finished results file in ``folder`` (partial files are skipped)."""
    runs = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(lines) >= 2 and "settings" in lines[0] and lines[-1].get("complete") is True:
            runs.append((lines[0]["settings"], lines[1:-1], lines[-1]))
    return runs


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
