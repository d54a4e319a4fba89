"""JUMP's efficiency-power trade-off (paper, Appendix A and Figure 4) from the stored runs of its sweep.

``flwr-byz tradeoff`` runs the packaged spec :data:`SPEC` (``simulations/paper/sweeps/appendix-a-tradeoff.toml``:
``mnist-logreg``, Table 3's task, under JUMP-tau for each tau and, per seed, under SF) through the sweep
executor, then :func:`write` reads the finished runs: per aggregation and tau, the maximal test accuracy under
JUMP-tau (lower is a stronger attack) and the runtime ratio of the JUMP-tau run to the SF run of the same seed
and settings (whole runs' seconds from their results files, evaluation included, measured where they ran).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from flwr_byz.runs.report import interval, pyplot, save_figure, value
from flwr_byz.runs.store import Run

SPEC = "appendix-a-tradeoff"


def _pair(settings: dict[str, Any]) -> str:
    """What a JUMP run and its SF run share: every setting but the attack's and where they are stored."""
    return repr(sorted((k, v) for k, v in settings.items()
                       if not k.startswith(("attack", "jump-")) and k != "results-dir"))


def rows_of(runs: list[Run]) -> list[dict[str, Any]]:
    """A row per JUMP run that has an SF run of the same settings: its maximal test accuracy, seconds, the SF
    run's seconds and their ratio; by aggregation, seed and tau."""
    sf = {_pair(s): float(footer["seconds"]) for s, _, footer in runs if s["attack"] == "sf"}
    out = []
    for settings, rows, footer in runs:
        if settings["attack"] != "jump" or _pair(settings) not in sf:
            continue
        seconds, sf_seconds = float(footer["seconds"]), sf[_pair(settings)]
        out.append({"aggregation": settings["aggregation"], "tau": settings["jump-tau"], "seed": settings["seed"],
                    "max_accuracy": value(rows, "test-accuracy", "max"), "seconds": seconds,
                    "sf_seconds": sf_seconds, "runtime_ratio": seconds / sf_seconds})
    return sorted(out, key=lambda r: (r["aggregation"], r["seed"], r["tau"]))


def write(out: Path, runs: list[Run]) -> tuple[Path, list[dict[str, Any]]]:
    """``out/tradeoff.csv`` (a row per JUMP run), ``out/tradeoff_summary.csv`` (mean and 95% Student-t
    interval over seeds) and ``out/tradeoff.png`` of the finished ``runs``; the first's path and the summary."""
    rows = rows_of(runs)
    if not rows:
        raise ValueError("no finished JUMP run with a finished SF run of the same settings: nothing to compare")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tradeoff.csv"
    summary = summarise(rows)
    for table, name in ((rows, path), (summary, out / "tradeoff_summary.csv")):
        with name.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    plot(summary, out / "tradeoff.png")
    return path, summary


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (aggregation, tau): mean and 95% half-width of the maximal accuracy and the runtime ratio."""
    out = []
    for key in sorted(dict.fromkeys((r["aggregation"], r["tau"]) for r in rows)):
        group = [r for r in rows if (r["aggregation"], r["tau"]) == key]
        accuracy = interval([float(r["max_accuracy"]) for r in group])
        ratio = interval([float(r["runtime_ratio"]) for r in group])
        out.append({"aggregation": key[0], "tau": key[1], "seeds": len(group), "max_accuracy": accuracy[0],
                    "max_accuracy_ci95": accuracy[1], "runtime_ratio": ratio[0], "runtime_ratio_ci95": ratio[1]})
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> Path:
    """Figure 4's layout: per aggregation, maximal accuracy (left axis) and runtime ratio to SF (right) vs tau."""
    plt = pyplot()
    aggregations = list(dict.fromkeys(r["aggregation"] for r in summary))
    fig, axes = plt.subplots(1, len(aggregations), figsize=(5.5 * len(aggregations), 4), squeeze=False)
    for ax, aggregation in zip(axes[0], aggregations):
        group = [r for r in summary if r["aggregation"] == aggregation]
        taus = [r["tau"] for r in group]
        ax.errorbar(taus, [100 * r["max_accuracy"] for r in group], [100 * r["max_accuracy_ci95"] for r in group],
                    color="tab:blue", marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(taus, [str(t) for t in taus])
        ax.set_xlabel("segment length tau")
        ax.set_ylabel("maximal accuracy under JUMP (%)", color="tab:blue")
        right = ax.twinx()
        right.errorbar(taus, [r["runtime_ratio"] for r in group], [r["runtime_ratio_ci95"] for r in group],
                       color="tab:red", marker="s", capsize=3)
        right.set_ylabel("runtime ratio to SF", color="tab:red")
        ax.set_title(f"{aggregation}, mnist-logreg")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
