"""The paper's tables and figures from a folder of finished runs.

* Table (Tables 1, 6, 7): a row per setting (task, aggregation, f, alpha, momentum, and any other setting
  that varies), a column per attack, cells ``mean +- h`` of the test accuracy in percent over seeds, ``h`` the
  half-width of the 95% Student-t interval; the strongest attack of a row (lowest mean) in bold, and
  ``Superiority`` = the best other attack's mean minus JUMP's (positive: JUMP is stronger). The accuracy of a
  run is its maximum over the evaluated rounds (the paper's) or its final one.
* Curves (Figure 3): test accuracy against round, mean and 95% band over seeds, one panel per f.
* Breakdown: accuracy against f, one line per attack.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from scipy import stats

from flwr_byz.runs.store import Run

ATTACK_ORDER = ("none", "alie", "foe", "lf", "mimic", "minmax", "minsum", "sf", "gaussian", "inf", "jump", "solve-p")
ROW_KEYS = ("task", "aggregation", "num-byzantine", "alpha", "momentum")
IGNORED = {"attack", "seed", "results-dir"}  # never split rows
METRICS = ("max", "final")


def interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    sem = statistics.stdev(values) / len(values) ** 0.5
    return mean, float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * sem)


def accuracy(rows: list[dict[str, Any]], metric: str) -> float:
    """A run's test accuracy in percent: the maximum over evaluated rounds, or the last."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    values = [r["test-accuracy"] for r in rows if r.get("test-accuracy") is not None]
    if not values:
        raise ValueError("these tables compare test accuracy, and a run has none (toy2d reports only test loss)")
    return 100 * (max(values) if metric == "max" else values[-1])


def row_keys(runs: list[Run]) -> list[str]:
    """The settings that tell rows apart: the paper's keys, then any other that varies across the runs and is not
    determined by them (``aggregation-f``, ``auto`` = f, is not)."""
    def determined(key: str) -> bool:
        values: dict[tuple, str] = {}
        return all(values.setdefault(tuple(repr(r[0].get(k)) for k in ROW_KEYS), repr(r[0].get(key)))
                   == repr(r[0].get(key)) for r in runs)

    varying = [k for k in runs[0][0] if k not in IGNORED and k not in ROW_KEYS
               and len({repr(r[0].get(k)) for r in runs}) > 1 and not determined(k)]
    return [*ROW_KEYS, *varying]


def attacks_of(runs: list[Run]) -> list[str]:
    names = {r[0]["attack"] for r in runs}
    return [a for a in ATTACK_ORDER if a in names] + sorted(names - set(ATTACK_ORDER))


def table(runs: list[Run], metric: str = "max") -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """``(row keys, attacks, rows)``; a row holds its keys' values, ``cells[attack] = (mean, half-width, seeds)``,
    ``strongest`` (the attack with the lowest mean, ``none`` excluded) and ``superiority`` (or ``None``)."""
    keys, attacks = row_keys(runs), attacks_of(runs)
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for settings, rows, _ in runs:
        groups[tuple(settings.get(k) for k in keys)][settings["attack"]].append(accuracy(rows, metric))
    out = []
    for values, by_attack in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        cells = {a: (*interval(v), len(v)) for a, v in by_attack.items()}
        attacked = {a: c[0] for a, c in cells.items() if a != "none"}
        others = [m for a, m in attacked.items() if a != "jump"]
        out.append({**dict(zip(keys, values, strict=True)), "cells": cells,
                    "strongest": min(attacked, key=attacked.__getitem__) if attacked else None,
                    "superiority": min(others) - cells["jump"][0] if "jump" in cells and others else None})
    return keys, attacks, out


def markdown(keys: list[str], attacks: list[str], rows: list[dict[str, Any]]) -> str:
    """The table in Markdown: ``mean ± h`` cells, the strongest attack of each row in bold."""
    head = [("f" if k == "num-byzantine" else k) for k in keys] + attacks + ["Superiority"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = []
        for attack in attacks:
            if attack not in row["cells"]:
                cells.append("–")
                continue
            mean, half, seeds = row["cells"][attack]
            text = f"{mean:.1f} ± {half:.1f}" if seeds > 1 else f"{mean:.1f} ± –"  # one seed: no interval
            cells.append(f"**{text}**" if attack == row["strongest"] else text)
        superiority = "–" if row["superiority"] is None else f"{row['superiority']:+.1f}"
        lines.append("| " + " | ".join([str(row[k]) for k in keys] + cells + [superiority]) + " |")
    return "\n".join(lines)


def write_csv(keys: list[str], attacks: list[str], rows: list[dict[str, Any]], path: Path) -> Path:
    """The table as CSV: per attack its mean, 95% half-width and number of seeds; then the strongest and
    the superiority."""
    columns = [*keys] + [f"{a}{s}" for a in attacks for s in ("", "_ci95", "_seeds")] + ["strongest", "superiority"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            record = {k: row[k] for k in keys} | {"strongest": row["strongest"], "superiority": row["superiority"]}
            for attack, (mean, half, seeds) in row["cells"].items():
                record |= {attack: round(mean, 3), f"{attack}_ci95": round(half, 3), f"{attack}_seeds": seeds}
            writer.writerow(record)
    return path


def figures(runs: list[Run], out: Path, metric: str = "max") -> list[Path]:
    """Per (task, aggregation, alpha, momentum, other varying settings): the accuracy curves (one panel per f)
    and the breakdown plot (accuracy vs f, one line per attack). Their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in row_keys(runs) if k != "num-byzantine"]
    attacks = attacks_of(runs)
    colors = dict(zip(attacks, plt.get_cmap("tab10" if len(attacks) <= 10 else "tab20").colors, strict=False))
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[0].get(k) for k in keys)].append(run)
    paths = []
    for values, group in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        label = "_".join(f"{v}" for v in values).replace("/", "-")
        title = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
        fs = sorted({r[0]["num-byzantine"] for r in group})
        fig, axes = plt.subplots(1, len(fs), figsize=(5 * len(fs), 3.8), squeeze=False, sharey=True)
        for ax, f in zip(axes[0], fs):
            for attack in attacks:
                curves = [rows for s, rows, _ in group if s["num-byzantine"] == f and s["attack"] == attack]
                if curves:
                    rounds, mean, half = band(curves)
                    ax.plot(rounds, mean, label=attack, color=colors[attack], linewidth=1.5)
                    ax.fill_between(rounds, mean - half, mean + half, color=colors[attack], alpha=0.2, linewidth=0)
            ax.set_title(f"f = {f}")
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][0].set_ylim(0, 100)
        axes[0][-1].legend(title="attack", loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        paths.append(save_figure(fig, out / f"curves_{label}.png"))

        fig, ax = plt.subplots(figsize=(6.5, 4))
        for attack in attacks:
            points = [(f, *interval([accuracy(rows, metric) for s, rows, _ in group
                                     if s["num-byzantine"] == f and s["attack"] == attack]))
                      for f in fs if any(s["num-byzantine"] == f and s["attack"] == attack for s, _, _ in group)]
            if points:
                xs, means, halves = zip(*points, strict=True)
                ax.errorbar(xs, means, halves, label=attack, color=colors[attack], marker="o", capsize=3)
        ax.set_xlabel("f (Byzantine nodes)")
        ax.set_ylabel(f"{metric} test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(fs)
        ax.grid(alpha=0.3)
        ax.legend(title="attack", loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        paths.append(save_figure(fig, out / f"breakdown_{label}.png"))
    return paths


def _order(values: tuple) -> list[tuple[int, object]]:
    """Sort key of a row: numbers by value (f = 3 before f = 10), everything else by text."""
    return [(0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v)) for v in values]


def band(curves: list[list[dict[str, Any]]], metric: str = "test-accuracy", scale: float = 100.0
         ) -> tuple[list[int], Any, Any]:
    """Rounds at which every run reports ``metric``, its mean times ``scale`` (accuracy in %) and the 95%
    half-width over the runs."""
    import numpy as np

    by_round = [{r["round"]: scale * float(r[metric]) for r in rows if r.get(metric) is not None} for rows in curves]
    rounds = sorted(set.intersection(*(set(c) for c in by_round)))
    pairs = [interval([c[t] for c in by_round]) for t in rounds]
    return rounds, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(runs: list[Run], out: Path, metric: str = "max") -> tuple[str, list[Path]]:
    """Write ``table_<metric>.md``, ``table_<metric>.csv`` and the figures to ``out``; the Markdown table and
    every written path."""
    if not runs:
        raise ValueError("no finished runs to report")
    out.mkdir(parents=True, exist_ok=True)
    keys, attacks, rows = table(runs, metric)
    text = markdown(keys, attacks, rows)
    md = out / f"table_{metric}.md"
    md.write_text(text + "\n")
    paths = [md, write_csv(keys, attacks, rows, out / f"table_{metric}.csv"), *figures(runs, out, metric)]
    return text, paths
