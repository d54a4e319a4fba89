"""Per-run results files: one JSON object per line, a header line then one line per evaluated round."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..config import RunSettings


def results_dir(settings: RunSettings) -> Path:
    """``results-dir`` of the run, else ``$FLWR_BYZ_RESULTS``, else ``~/flwr-byz-results``."""
    raw = settings.results_dir or os.environ.get("FLWR_BYZ_RESULTS") or "~/flwr-byz-results"
    return Path(raw).expanduser().resolve()


def results_path(settings: RunSettings) -> Path:
    """Where the run described by ``settings`` writes its results."""
    return results_dir(settings) / f"{settings.name}.jsonl"


class RunLog:
    """Append-only JSON-lines log of one run; starts with ``{"settings": ...}``."""

    def __init__(self, path: Path, settings: RunSettings) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            out.write(json.dumps({"settings": settings.to_run_config()}) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_run(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Settings and round rows of a results file."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or "settings" not in lines[0]:
        raise ValueError(f"{path} is not a flwr-byz results file (no settings header)")
    return lines[0]["settings"], lines[1:]
