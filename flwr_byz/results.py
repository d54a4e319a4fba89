"""Per-run results files: JSON lines, a settings header, one line per evaluated round, a completion footer.

A run's file is named by its display name and the hash of its full settings
(``RunSettings.key``), so runs that differ in any setting never share a file. Rows go
to ``<file>.partial``; only a finished run renames it to ``<file>`` (atomically), after
writing the footer. A killed run leaves only the partial file: never mistaken for a
finished one, and starting a run never touches a finished file.
"""

from __future__ import annotations

import json
import math
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from flwr_byz.settings import RunSettings

PARTIAL = ".partial"


def results_dir(settings: RunSettings) -> Path:
    """``results-dir`` of the run, else ``$FLWR_BYZ_RESULTS``, else ``~/flwr-byz-results``."""
    raw = settings.results_dir or os.environ.get("FLWR_BYZ_RESULTS") or "~/flwr-byz-results"
    return Path(raw).expanduser().resolve()


def results_path(settings: RunSettings) -> Path:
    """Where the finished run described by ``settings`` is stored."""
    return results_dir(settings) / f"{settings.name}_{settings.key}.jsonl"


class RunLog:
    """JSON-lines log of one run being written to ``path``: ``{"settings": header}``, rows, then ``finish()``."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.partial = self.path.with_name(self.path.name + PARTIAL)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        with self.partial.open("w") as out:
            out.write(json.dumps({"settings": header}) + "\n")

    @classmethod
    def of(cls, settings: RunSettings) -> RunLog:
        """The log of the simulated run ``settings`` (at :func:`results_path`)."""
        return cls(results_path(settings), settings.to_run_config())

    def append(self, row: dict[str, Any]) -> None:
        with self.partial.open("a") as out:
            out.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")

    def finish(self, **summary: Any) -> Path:
        """Write the footer ``{"complete": true, ..., "versions": {...}}`` and publish the file; its final path."""
        self.append({"complete": True, **summary, "versions": versions()})
        os.replace(self.partial, self.path)
        return self.path


def versions() -> dict[str, str]:
    """Versions of the packages a run's numbers depend on (read from the installed metadata)."""
    out = {}
    for package in ("flwr-byz", "flwr", "torch", "numpy", "scipy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_run(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Settings and round rows of a results file (finished or partial)."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or "settings" not in lines[0]:
        raise ValueError(f"{path} is not a flwr-byz results file (no settings header)")
    return lines[0]["settings"], [row for row in lines[1:] if "complete" not in row]


def is_wall_time(key: str) -> bool:
    """Whether a row's ``key`` is a wall time (``elapsed``, ``attack-seconds``, ``jump-*-seconds``, ...): the
    values two runs of the same settings need not share."""
    return key == "elapsed" or key.endswith("-seconds")


def without_wall_times(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` less its wall times (:func:`is_wall_time`): what a rerun or a resumed run must reproduce."""
    return {k: v for k, v in row.items() if not is_wall_time(k)}


def is_complete(settings: RunSettings) -> bool:
    """Whether the run of these settings finished (footer written, stored settings equal but for results-dir)."""
    return finished(results_path(settings), settings.to_run_config())


def finished(path: Path, header: dict[str, Any]) -> bool:
    """Whether ``path`` holds a finished run (footer written) with settings ``header`` (but for results-dir)."""
    try:
        lines = path.read_text().splitlines()
        stored, footer = json.loads(lines[0]), json.loads(lines[-1])
    except (OSError, IndexError, json.JSONDecodeError):
        return False
    return same_run(stored.get("settings"), header) and footer.get("complete") is True


def same_run(stored: Any, header: dict[str, Any]) -> bool:
    """Whether stored settings describe the run of settings ``header`` (where the store lies aside: a moved
    store keeps its runs)."""
    def placeless(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k != "results-dir"}

    return isinstance(stored, dict) and placeless(stored) == placeless(header)
