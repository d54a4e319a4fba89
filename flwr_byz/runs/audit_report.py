"""The report of ``flwr-byz audit``: how a user's app holds up under attacks x f (Byzantine nodes) x seeds.

* A run's value is its *final* metric (the last evaluated round that reports it); a cell ``(f, attack)`` is the
  mean ``m`` and 95% Student-t half-width ``h`` of the values over seeds; the baseline is attack ``none`` at f = 0.
* Goal: ``max`` (higher is better, e.g. accuracy) or ``min`` (names with ``loss``/``error``).
* The strongest attack at f has the worst mean (lowest for ``max``, highest for ``min``). With threshold
  ``t`` in (0, 1] and baseline ``b``, f is *broken* if the strongest mean ``m < t b`` (``max``) or ``m > b / t``
  (``min``); the breakdown point is the smallest broken f.
* Output: ``report.md`` (the table and breakdown sentence), ``table.csv``, ``metric-vs-round.png`` (one panel
  per f, one line per attack, baseline dashed) and ``metric-vs-f.png`` (final metric vs f, baseline and
  threshold lines).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr_byz.runs.store import Run
from flwr_byz.runs.tables import attacks_of, band, interval, save_figure

GOALS = ("max", "min")
ROUND_PNG, F_PNG = "metric-vs-round.png", "metric-vs-f.png"


def goal_of(metric: str) -> str:
    """``"min"`` for a loss or error metric, else ``"max"``."""
    name = metric.lower()
    return "min" if "loss" in name or "error" in name else "max"


def metrics_of(rows: list[dict[str, Any]]) -> list[str]:
    """The evaluation metrics some row reports (``round``, ``time`` and ``train-*`` excluded), in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k, v in r.items()
                              if k not in ("round", "time") and not k.startswith("train-") and v is not None))


def final_value(rows: list[dict[str, Any]], metric: str) -> float:
    """``metric`` at the last row that reports it; ``ValueError`` naming the metrics the rows have if none does."""
    for row in reversed(rows):
        if row.get(metric) is not None:
            return float(row[metric])
    have = metrics_of(rows)
    fix = f"use --metric <one of {', '.join(have)}>" if have else "the app reports no metrics"
    raise ValueError(f"no evaluated round reports the metric {metric!r}: {fix}")


def scored(value: float, goal: str) -> float:
    """A run's value for comparisons: NaN (a diverged run) counts as the worst, ``-inf`` (``max``) or ``inf``."""
    return value if not math.isnan(value) else (-math.inf if goal == "max" else math.inf)


def _check(threshold: float, goal: str) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"the breakdown threshold must be in (0, 1], got {threshold}")
    if goal not in GOALS:
        raise ValueError(f"unknown goal {goal!r}; valid: {', '.join(GOALS)}")


def limit(baseline: float, threshold: float, goal: str) -> float:
    """The value beyond which a run is broken: ``t b`` (``max``) or ``b / t`` (``min``)."""
    return threshold * baseline if goal == "max" else baseline / threshold


def breakdown_f(values: dict[int, float], baseline: float, threshold: float, goal: str) -> int | None:
    """The smallest f whose value is broken: ``v < t b`` (``max``) or ``v > b / t`` (``min``); ``None`` if none."""
    _check(threshold, goal)
    bound = limit(baseline, threshold, goal)
    return next((f for f in sorted(values) if (values[f] < bound if goal == "max" else values[f] > bound)), None)


@dataclass
class AuditTable:
    """``baseline`` and ``cells[(f, attack)]`` are ``(mean, half-width, seeds)``; ``strongest[f]`` the worst
    attack at f; ``breakdown`` the smallest broken f (or ``None``)."""

    goal: str
    threshold: float
    baseline: tuple[float, float, int]
    attacks: list[str]
    fs: list[int]
    cells: dict[tuple[int, str], tuple[float, float, int]]
    strongest: dict[int, str]
    breakdown: int | None


def _is_baseline(settings: dict[str, Any]) -> bool:
    return settings["attack"] == "none" and settings["num-byzantine"] == 0


def audit_table(runs: list[Run], metric: str, goal: str | None = None, threshold: float = 0.5) -> AuditTable:
    """The cells over seeds, the strongest attack per f and the breakdown point (``goal`` None: ``goal_of``).
    ``none`` runs at f > 0 are left out."""
    goal = goal or goal_of(metric)
    _check(threshold, goal)
    base = [scored(final_value(rows, metric), goal) for s, rows, _ in runs if _is_baseline(s)]
    if not base:
        raise ValueError("no baseline run (attack none, num-byzantine 0): the audit compares against it")
    values: dict[tuple[int, str], list[float]] = defaultdict(list)
    for settings, rows, _ in runs:
        if settings["attack"] != "none":
            values[settings["num-byzantine"], settings["attack"]].append(scored(final_value(rows, metric), goal))
    if not values:
        raise ValueError("only baseline runs: no attack to audit")
    attacks = [a for a in attacks_of(runs) if a != "none"]
    fs = sorted({f for f, _ in values})
    cells = {key: (*interval(v), len(v)) for key, v in values.items()}
    worst = min if goal == "max" else max
    strongest = {f: worst((a for a in attacks if (f, a) in cells), key=lambda a, f=f: cells[f, a][0]) for f in fs}
    baseline = (*interval(base), len(base))
    breakdown = breakdown_f({f: cells[f, strongest[f]][0] for f in fs}, baseline[0], threshold, goal)
    return AuditTable(goal, threshold, baseline, attacks, fs, cells, strongest, breakdown)


def _cell(mean: float, half: float, seeds: int) -> str:
    return f"{mean:.4f} ± {half:.4f}" if seeds > 1 else f"{mean:.4f} ± –"  # one seed: no interval


def markdown(table: AuditTable, metric: str, threshold: float | None = None) -> str:
    """The baseline line, the ``f x attack`` table (strongest attack in bold) and the breakdown sentence
    (``threshold`` None: the table's)."""
    t = table.threshold if threshold is None else threshold
    b = table.baseline
    lines = [f"Baseline (no attack, f = 0): {metric} = {_cell(*b)} ({b[2]} seed{'s' * (b[2] != 1)}); "
             f"{'higher' if table.goal == 'max' else 'lower'} is better.", ""]
    head = ["f", *table.attacks, "strongest"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in table.fs:
        cells = []
        for attack in table.attacks:
            text = _cell(*table.cells[f, attack]) if (f, attack) in table.cells else "–"
            cells.append(f"**{text}**" if attack == table.strongest[f] else text)
        lines.append("| " + " | ".join([str(f), *cells, table.strongest[f]]) + " |")
    share = f"{100 * t:g}%" if table.goal == "max" else f"{100 / t:g}%"
    move = "falls below" if table.goal == "max" else "rises above"
    if table.breakdown is None:
        stays = "stays at or above" if table.goal == "max" else "stays at or below"
        sentence = (f"No breakdown up to f = {table.fs[-1]} ({metric} under the strongest attack {stays} {share} "
                    f"of the no-attack value {b[0]:.4f})")
    else:
        sentence = (f"Breakdown: f = {table.breakdown} (the first f at which {metric} under the strongest attack "
                    f"{move} {share} of the no-attack value {b[0]:.4f})")
    return "\n".join([*lines, "", sentence])


def figures(runs: list[Run], out: Path, metric: str, table: AuditTable) -> list[Path]:
    """``metric-vs-round.png`` (a panel per f, a line per attack, the baseline dashed black in each) and
    ``metric-vs-f.png`` (final metric vs f with error bars, baseline dashed, breakdown threshold dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colors = dict(zip(table.attacks, plt.get_cmap("tab10" if len(table.attacks) <= 10 else "tab20").colors,
                      strict=False))
    base = band([rows for s, rows, _ in runs if _is_baseline(s)], metric, scale=1.0)
    fig, axes = plt.subplots(1, len(table.fs), figsize=(4.5 * len(table.fs), 3.6), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], table.fs):
        ax.plot(base[0], base[1], "k--", label="none (f = 0)", linewidth=1.2)
        for attack in table.attacks:
            curves = [rows for s, rows, _ in runs if s["num-byzantine"] == f and s["attack"] == attack]
            if not curves:
                continue
            rounds, mean, half = band(curves, metric, scale=1.0)
            ax.plot(rounds, mean, label=attack, color=colors[attack], linewidth=1.5)
            if len(curves) > 1:
                ax.fill_between(rounds, mean - half, mean + half, color=colors[attack], alpha=0.2, linewidth=0)
        ax.set_title(f"f = {f}")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(title="attack", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"{metric} vs round", fontsize=10)
    fig.tight_layout()
    paths = [save_figure(fig, out / ROUND_PNG)]

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for attack in table.attacks:
        points = [(f, *table.cells[f, attack][:2]) for f in table.fs if (f, attack) in table.cells]
        xs, means, halves = zip(*points, strict=True)
        ax.errorbar(xs, means, halves, label=attack, color=colors[attack], marker="o", capsize=3)
    b = table.baseline[0]
    ax.axhline(b, color="black", linestyle="--", linewidth=1.2, label="no attack")
    ax.axhline(limit(b, table.threshold, table.goal), color="red", linestyle=":", linewidth=1.2,
               label=f"breakdown ({'×' if table.goal == 'max' else '÷'}{table.threshold:g})")
    ax.set_xlabel("f (Byzantine nodes)")
    ax.set_ylabel(f"final {metric}")
    ax.set_xticks(table.fs)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"final {metric} vs f", fontsize=10)
    fig.tight_layout()
    return [*paths, save_figure(fig, out / F_PNG)]


def write_csv(table: AuditTable, path: Path) -> Path:
    """Columns ``f, attack, mean, half_width, seeds``: the baseline (``0, none``), then each cell by f and attack."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["f", "attack", "mean", "half_width", "seeds"])
        writer.writerow([0, "none", *table.baseline])
        writer.writerows([f, a, *table.cells[f, a]] for f in table.fs for a in table.attacks if (f, a) in table.cells)
    return path


def write_report(runs: list[Run], out: Path, metric: str, threshold: float = 0.5, goal: str | None = None,
                 title: str = "", failed: Sequence[str] = ()) -> tuple[Path, list[Path]]:
    """Write ``report.md``, ``table.csv`` and the two figures to ``out``; the report's path and every written
    path (``goal`` None: ``goal_of(metric)``). ``failed`` names runs that failed: listed under the table."""
    if not runs:
        raise ValueError("no finished runs to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = audit_table(runs, metric, goal, threshold)
    failures = [f"Failed runs (their cells are left out; errors in runs/*.failed.json): {', '.join(failed)}"] \
        if failed else []
    text = "\n\n".join([f"# Robustness audit: {title}" if title else "# Robustness audit", markdown(table, metric),
                        *failures, f"![{metric} vs round]({ROUND_PNG})", f"![{metric} vs f]({F_PNG})"])
    report = out / "report.md"
    report.write_text(text + "\n")
    return report, [report, write_csv(table, out / "table.csv"), *figures(runs, out, metric, table)]
