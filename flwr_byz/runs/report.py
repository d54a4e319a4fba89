"""Reports of finished runs: one table and two figures, for the paper's tables, `flwr-byz stress` and the audit.

* **Table**: runs grouped by row keys (settings), a column per attack, each cell the mean and the half-width of
  the 95% Student-t interval of the runs' values over seeds. A run's value is its metric's maximum over the
  evaluated rounds or its final value. ``goal`` says which way is better (``max``: accuracy; ``min``: metrics
  named ``*loss*``/``*error*``): a row's *strongest* attack has the worst mean (``none`` excluded) and its
  *superiority* is how much stronger JUMP is than the strongest other attack (positive: JUMP is stronger).
  The audit's table has a row per f and a *breakdown f* annotation: the first f at which the strongest attack's
  mean falls below ``threshold`` times the no-attack baseline (``max``) or rises above it divided by ``threshold``
  (``min``).
* **Curves**: the metric against round, mean and 95% band over seeds, a panel per f, a line per attack (the
  audit's baseline dashed in every panel).
* **Metric vs f**: a table keyed by f, a line per attack with error bars (the audit's baseline and threshold).
* **Heat map**: the table's means, a row per setting and a column per attack, each row's strongest attack framed.

Written by ``flwr-byz report`` / ``sweep`` (:func:`write_paper_report`: ``table_<max|final>.md``/``.csv``,
``table_<max|final>.png``, ``curves_<group>.png``, ``breakdown_<group>.png``), ``flwr-byz audit`` (:func:`write_audit_report`:
``report.md``, ``table.csv``, ``metric-vs-round.png``, ``metric-vs-f.png``) and ``flwr-byz stress`` (the table
on the terminal and one curves figure).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from flwr_byz.runs.store import Run

ATTACK_ORDER = ("none", "alie", "foe", "lf", "mimic", "minmax", "minsum", "sf", "gaussian", "inf", "jump", "solve-p")
ROW_KEYS = ("task", "aggregation", "num-byzantine", "alpha", "momentum")
IGNORED = {"attack", "seed", "results-dir"}  # never split rows
SUMMARIES = ("max", "final")
GOALS = ("max", "min")
ACCURACY = "test-accuracy"
F = "num-byzantine"
ROUND_PNG, F_PNG = "metric-vs-round.png", "metric-vs-f.png"  # the audit's figures
Cell = tuple[float, float, int]  # mean, 95% half-width, number of runs


def interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    sem = statistics.stdev(values) / len(values) ** 0.5
    return mean, float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * sem)


def goal_of(metric: str) -> str:
    """``"min"`` for a loss or error metric, else ``"max"``."""
    name = metric.lower()
    return "min" if "loss" in name or "error" in name else "max"


def metrics_of(rows: list[dict[str, Any]]) -> list[str]:
    """The evaluation metrics some row reports (``round``, ``time`` and ``train-*`` excluded), in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k, v in r.items()
                              if k not in ("round", "time") and not k.startswith("train-") and v is not None))


def value(rows: list[dict[str, Any]], metric: str, summary: str = "final") -> float:
    """A run's ``metric``: its maximum over the rounds that report it (``max``) or the last one (``final``);
    ``ValueError`` naming the metrics the rows have if no round reports it."""
    if summary not in SUMMARIES:
        raise ValueError(f"unknown summary {summary!r}; valid: {', '.join(SUMMARIES)}")
    values = [float(r[metric]) for r in rows if r.get(metric) is not None]
    if not values:
        have = metrics_of(rows)
        fix = f"use --metric <one of {', '.join(have)}>" if have else "the app reports no metrics"
        raise ValueError(f"no evaluated round reports the metric {metric!r}: {fix}")
    return max(values) if summary == "max" else values[-1]


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


def attacks_of(runs: list[Run]) -> list[str]:
    names = {r[0]["attack"] for r in runs}
    return [a for a in ATTACK_ORDER if a in names] + sorted(names - set(ATTACK_ORDER))


def row_keys(runs: list[Run]) -> list[str]:
    """The settings that tell the paper's rows apart: its keys, then any other that varies across the runs and is
    not determined by them (``aggregation-f``, ``auto`` = f, is not)."""
    def determined(key: str) -> bool:
        values: dict[tuple, str] = {}
        return all(values.setdefault(tuple(repr(r[0].get(k)) for k in ROW_KEYS), repr(r[0].get(key)))
                   == repr(r[0].get(key)) for r in runs)

    varying = [k for k in runs[0][0] if k not in IGNORED and k not in ROW_KEYS
               and len({repr(r[0].get(k)) for r in runs}) > 1 and not determined(k)]
    return [*ROW_KEYS, *varying]


def _order(values: tuple) -> list[tuple[int, object]]:
    """Sort key of a row: numbers by value (f = 3 before f = 10), everything else by text."""
    return [(0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v)) for v in values]


@dataclass
class Row:
    """A row of a :class:`Table`: its keys' ``values``, ``cells[attack]``, the ``strongest`` attack (worst mean,
    ``none`` excluded; ``None`` without attacks) and JUMP's ``superiority`` (``None`` without JUMP or others)."""

    values: tuple
    cells: dict[str, Cell]
    strongest: str | None
    superiority: float | None


@dataclass
class Table:
    """Runs grouped by ``keys``, a column per attack; values of ``metric`` (in percent if ``percent``).
    ``extras``: the columns after the attacks in Markdown (``Superiority``, ``strongest``). The audit's table
    also holds the no-attack ``baseline`` cell, the breakdown ``threshold`` and the ``breakdown`` f."""

    keys: list[str]
    attacks: list[str]
    rows: list[Row]
    metric: str
    summary: str
    goal: str
    percent: bool = False
    extras: tuple[str, ...] = ("Superiority",)
    baseline: Cell | None = None
    threshold: float | None = None
    breakdown: int | None = None

    def row(self, *values: Any) -> Row:
        return next(r for r in self.rows if r.values == values)

    @property
    def digits(self) -> int:
        return 1 if self.percent else 4


def table(runs: list[Run], keys: Sequence[str] | None = None, metric: str = ACCURACY, summary: str = "max",
          goal: str | None = None, percent: bool = False, extras: tuple[str, ...] = ("Superiority",)) -> Table:
    """The table of ``runs`` grouped by ``keys`` (default: :func:`row_keys`), rows in order of their values."""
    if not runs:
        raise ValueError("no finished runs to report")
    keys, goal = list(keys if keys is not None else row_keys(runs)), goal or goal_of(metric)
    if goal not in GOALS:
        raise ValueError(f"unknown goal {goal!r}; valid: {', '.join(GOALS)}")
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for settings, rows, _ in runs:
        run_value = (100 if percent else 1) * value(rows, metric, summary)
        groups[tuple(settings.get(k) for k in keys)][settings["attack"]].append(scored(run_value, goal))
    worst = min if goal == "max" else max
    out = []
    for values, by_attack in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        cells = {a: (*interval(v), len(v)) for a, v in by_attack.items()}
        attacked = {a: c[0] for a, c in cells.items() if a != "none"}
        others = [m for a, m in attacked.items() if a != "jump"]
        superiority = None
        if "jump" in cells and others:
            superiority = (worst(others) - cells["jump"][0]) * (1 if goal == "max" else -1) + 0.0  # no -0.0
        out.append(Row(values, cells, worst(attacked, key=attacked.__getitem__) if attacked else None, superiority))
    return Table(keys, attacks_of(runs), out, metric, summary, goal, percent, extras)


def _is_baseline(settings: dict[str, Any]) -> bool:
    return settings["attack"] == "none" and settings[F] == 0


def audit_table(runs: list[Run], metric: str, goal: str | None = None, threshold: float = 0.5) -> Table:
    """The audit's table: a row per f of the runs' final ``metric`` (``none`` runs at f > 0 left out), the
    baseline (attack ``none`` at f = 0) and the breakdown f (``goal`` None: :func:`goal_of`)."""
    goal = goal or goal_of(metric)
    _check(threshold, goal)
    kept = [r for r in runs if r[0]["attack"] != "none" or _is_baseline(r[0])]
    if not any(_is_baseline(s) for s, _, _ in kept):
        raise ValueError("no baseline run (attack none, num-byzantine 0): the audit compares against it")
    if all(_is_baseline(s) for s, _, _ in kept):
        raise ValueError("only baseline runs: no attack to audit")
    out = table(kept, [F], metric, "final", goal, extras=("strongest",))
    out.baseline, out.threshold = out.row(0).cells["none"], threshold
    attacked = {r.values[0]: r.cells[r.strongest][0] for r in out.rows if r.strongest is not None}
    out.breakdown = breakdown_f(attacked, out.baseline[0], threshold, goal)
    return out


def _cell(mean: float, half: float, seeds: int, digits: int) -> str:
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f} ± –"  # one seed: no interval


def markdown(table: Table) -> str:
    """The table in Markdown: ``mean ± h`` cells, the strongest attack of each row in bold, the extra columns;
    for the audit the baseline line above and the breakdown sentence below."""
    d = table.digits
    head = [("f" if k == F else k) for k in table.keys] + table.attacks + list(table.extras)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = []
        for attack in table.attacks:
            text = _cell(*row.cells[attack], d) if attack in row.cells else "–"
            cells.append(f"**{text}**" if attack == row.strongest else text)
        extras = {"Superiority": "–" if row.superiority is None else f"{row.superiority:+.{d}f}",
                  "strongest": row.strongest or "–"}
        lines.append("| " + " | ".join([str(v) for v in row.values] + cells + [extras[e] for e in table.extras]) + " |")
    if table.baseline is None:
        return "\n".join(lines)
    b, t, metric = table.baseline, table.threshold, table.metric
    fs = [r.values[0] for r in table.rows if r.strongest is not None]
    share = f"{100 * t:g}%" if table.goal == "max" else f"{100 / t:g}%"
    if table.breakdown is None:
        stays = "stays at or above" if table.goal == "max" else "stays at or below"
        sentence = (f"No breakdown up to f = {fs[-1]} ({metric} under the strongest attack {stays} {share} "
                    f"of the no-attack value {b[0]:.4f})")
    else:
        move = "falls below" if table.goal == "max" else "rises above"
        sentence = (f"Breakdown: f = {table.breakdown} (the first f at which {metric} under the strongest attack "
                    f"{move} {share} of the no-attack value {b[0]:.4f})")
    better = "higher" if table.goal == "max" else "lower"
    return "\n".join([f"Baseline (no attack, f = 0): {metric} = {_cell(*b, d)} ({b[2]} seed{'s' * (b[2] != 1)}); "
                      f"{better} is better.", "", *lines, "", sentence])


def write_csv(table: Table, path: Path) -> Path:
    """The table as CSV: its keys, per attack the mean, 95% half-width and number of seeds, then the strongest
    attack and the superiority."""
    columns = [*table.keys] + [f"{a}{s}" for a in table.attacks for s in ("", "_ci95", "_seeds")] + [
        "strongest", "superiority"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in table.rows:
            record = dict(zip(table.keys, row.values, strict=True))
            superiority = None if row.superiority is None else round(row.superiority, 6)
            record |= {"strongest": row.strongest, "superiority": superiority}
            for attack, (mean, half, seeds) in row.cells.items():
                record |= {attack: round(mean, 6), f"{attack}_ci95": round(half, 6), f"{attack}_seeds": seeds}
            writer.writerow(record)
    return path


def band(curves: list[list[dict[str, Any]]], metric: str = ACCURACY, scale: float = 100.0
         ) -> tuple[list[int], Any, Any]:
    """Rounds at which every run reports ``metric``, its mean times ``scale`` (accuracy in %) and the 95%
    half-width over the runs."""
    import numpy as np

    by_round = [{r["round"]: scale * float(r[metric]) for r in rows if r.get(metric) is not None} for rows in curves]
    rounds = sorted(set.intersection(*(set(c) for c in by_round)))
    pairs = [interval([c[t] for c in by_round]) for t in rounds]
    return rounds, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(attacks: list[str]) -> dict[str, Any]:
    return dict(zip(attacks, pyplot().get_cmap("tab10" if len(attacks) <= 10 else "tab20").colors, strict=False))


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def _label(metric: str, percent: bool) -> str:
    return f"{metric} (%)" if percent else metric


def curves(runs: list[Run], path: Path, metric: str = ACCURACY, percent: bool = True, title: str = "",
           reference: list[Run] = ()) -> Path:
    """``metric`` against round: a panel per f, a line per attack (mean and 95% band over seeds); the
    ``reference`` runs (the audit's baseline) dashed black in every panel."""
    from matplotlib.ticker import MaxNLocator

    plt, scale = pyplot(), 100.0 if percent else 1.0
    attacks = attacks_of(runs)
    colors = _colors(attacks)
    fs = sorted({s[F] for s, _, _ in runs})
    fig, axes = plt.subplots(1, len(fs), figsize=(4.5 * len(fs) + 1.5, 3.8), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], fs):
        if reference:
            rounds, mean, _ = band([rows for _, rows, _ in reference], metric, scale)
            ax.plot(rounds, mean, "k--", label="none (f = 0)", linewidth=1.2)
        for attack in attacks:
            group = [rows for s, rows, _ in runs if s[F] == f and s["attack"] == attack]
            if group:
                rounds, mean, half = band(group, metric, scale)
                ax.plot(rounds, mean, label=attack, color=colors[attack], linewidth=1.5)
                ax.fill_between(rounds, mean - half, mean + half, color=colors[attack], alpha=0.2, linewidth=0)
        ax.set_title(f"f = {f}")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_label(metric, percent))
    if percent:
        axes[0][0].set_ylim(0, 100)
    axes[0][-1].legend(title="attack", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title or f"{metric} vs round", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def metric_vs_f(table: Table, path: Path, title: str = "") -> Path:
    """The cells of a table keyed by f against f, a line per attack with error bars; with a baseline (the
    audit's) the no-attack value dashed and the breakdown threshold dotted instead of a ``none`` line."""
    plt = pyplot()
    attacks = [a for a in table.attacks if a != "none" or table.baseline is None]
    colors = _colors(table.attacks)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for attack in attacks:
        points = [(r.values[0], *r.cells[attack][:2]) for r in table.rows if attack in r.cells]
        xs, means, halves = zip(*points, strict=True)
        ax.errorbar(xs, means, halves, label=attack, color=colors[attack], marker="o", capsize=3)
    if table.baseline is not None:
        b = table.baseline[0]
        ax.axhline(b, color="black", linestyle="--", linewidth=1.2, label="no attack")
        ax.axhline(limit(b, table.threshold, table.goal), color="red", linestyle=":", linewidth=1.2,
                   label=f"breakdown ({'×' if table.goal == 'max' else '÷'}{table.threshold:g})")
    ax.set_xlabel("f (Byzantine nodes)")
    ax.set_ylabel(f"{table.summary} {_label(table.metric, table.percent)}")
    if table.percent:
        ax.set_ylim(0, 100)
    ax.set_xticks(sorted({r.values[0] for r in table.rows if any(a in r.cells for a in attacks)}))
    ax.grid(alpha=0.3)
    ax.legend(title="attack", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title or f"{table.summary} {table.metric} vs f", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def matrix(table: Table) -> tuple[list[str], np.ndarray]:
    """The table's means as a ``(rows, attacks)`` array (NaN where a row lacks an attack) and a label per row:
    the values of the keys that differ between rows, joined by ``", "`` (all of them if none differ)."""
    varying = [i for i in range(len(table.keys)) if len({r.values[i] for r in table.rows}) > 1] \
        or list(range(len(table.keys)))
    labels = [", ".join(str(r.values[i]) for i in varying) for r in table.rows]
    values = np.array([[r.cells[a][0] if a in r.cells else np.nan for a in table.attacks] for r in table.rows])
    return labels, values.reshape(len(table.rows), len(table.attacks))


def heatmap(table: Table, path: Path, title: str = "") -> Path:
    """The table as a heat map, a row per setting and a column per attack, each cell annotated with its mean;
    the strongest attack of each row framed. Red is damage: the colour scale runs from the worst cell to the
    best by the table's goal."""
    plt = pyplot()
    labels, values = matrix(table)
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 0.62 * cols), 1.6 + 0.34 * rows))
    image = ax.imshow(values, cmap="RdYlGn" if table.goal == "max" else "RdYlGn_r", aspect="auto")
    ax.set_xticks(range(cols), table.attacks, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(rows), labels, fontsize=8)
    for i, row in enumerate(table.rows):
        for j, attack in enumerate(table.attacks):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.{table.digits - (1 if table.percent else 2)}f}", ha="center",
                        va="center", fontsize=6.5)
            if attack == row.strongest:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.4))
    fig.colorbar(image, ax=ax, label=f"{table.summary} {_label(table.metric, table.percent)}", shrink=0.8)
    ax.set_title(title or f"{table.summary} {table.metric}; framed: each row's strongest attack", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_paper_report(runs: list[Run], out: Path, summary: str = "max") -> tuple[str, list[Path]]:
    """The paper's tables (Tables 1, 6, 7: a row per setting, test accuracy in %) and, per setting but f, the
    curves (Figure 3) and accuracy vs f: ``table_<summary>.md``/``.csv``/``.png`` (:func:`heatmap`), ``curves_<group>.png`` and
    ``breakdown_<group>.png`` in ``out``. The Markdown table and every written path."""
    if not runs:
        raise ValueError("no finished runs to report")
    if any(all(r.get(ACCURACY) is None for r in rows) for _, rows, _ in runs):
        raise ValueError("these tables compare test accuracy, and a run has none (toy2d reports only test loss)")
    out.mkdir(parents=True, exist_ok=True)
    whole = table(runs, summary=summary, percent=True)
    text = markdown(whole)
    md = out / f"table_{summary}.md"
    md.write_text(text + "\n")
    paths = [md, write_csv(whole, out / f"table_{summary}.csv"), heatmap(whole, out / f"table_{summary}.png")]
    keys = [k for k in whole.keys if k != F]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[0].get(k) for k in keys)].append(run)
    for values, group in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        label = "_".join(f"{v}" for v in values).replace("/", "-")
        title = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
        paths.append(curves(group, out / f"curves_{label}.png", title=title))
        by_f = table(group, [F], summary=summary, percent=True)
        paths.append(metric_vs_f(by_f, out / f"breakdown_{label}.png", title=title))
    return text, paths


def write_audit_report(runs: list[Run], out: Path, metric: str, threshold: float = 0.5, goal: str | None = None,
                       title: str = "", failed: Sequence[str] = ()) -> tuple[Path, list[Path]]:
    """The audit's ``report.md`` (title, table, breakdown, figures), ``table.csv``, ``metric-vs-round.png`` and
    ``metric-vs-f.png`` in ``out``: the report's path and every written path. ``failed`` names runs that failed,
    listed under the table."""
    if not runs:
        raise ValueError("no finished runs to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    audit = audit_table(runs, metric, goal, threshold)
    failures = [f"Failed runs (their cells are left out; errors in runs/*.failed.json): {', '.join(failed)}"] \
        if failed else []
    text = "\n\n".join([f"# Robustness audit: {title}" if title else "# Robustness audit", markdown(audit),
                        *failures, f"![{metric} vs round]({ROUND_PNG})", f"![{metric} vs f]({F_PNG})"])
    report = out / "report.md"
    report.write_text(text + "\n")
    attacked = [r for r in runs if r[0]["attack"] != "none"]
    figures = [curves(attacked, out / ROUND_PNG, metric, percent=False, reference=[r for r in runs
                                                                                   if _is_baseline(r[0])]),
               metric_vs_f(audit, out / F_PNG)]
    return report, [report, write_csv(audit, out / "table.csv"), *figures]

