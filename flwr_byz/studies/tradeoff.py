"""JUMP's efficiency-power trade-off (paper, Appendix A and Figure 4) on the in-process engine.

For each aggregation and segment length ``tau``, runs of ``mnist-logreg`` (Table 3's task) under
JUMP-tau and, per seed, one run under SF: the maximal test accuracy under JUMP-tau (lower is a
stronger attack) and the runtime ratio of the JUMP-tau run to the SF run of the same seed
(whole runs, evaluation included, measured on this machine). Finished runs are results files
keyed by their settings, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from flwr_byz.settings import RunSettings
from flwr_byz.engine import run
from flwr_byz.results import is_complete, read_run, results_path
from flwr_byz.runs.tables import interval

logger = logging.getLogger("flwr_byz.tradeoff")

COLUMNS = ("aggregation", "tau", "seed", "max_accuracy", "seconds", "sf_seconds", "runtime_ratio")


class Runs:
    """The study's runs on ``nodes`` nodes: each run once (a complete results file is read, not rerun), after one
    untimed warm-up run in this process (a process's first run pays one-off costs: lazy imports, first kernels)."""

    def __init__(self, nodes: int) -> None:
        self.nodes, self.warm = nodes, False

    def __call__(self, settings: RunSettings) -> tuple[float, float]:
        """``(max test accuracy, seconds)`` of the run."""
        if not is_complete(settings):
            if not self.warm:
                with tempfile.TemporaryDirectory() as tmp:
                    run(dataclasses.replace(settings, attack="jump", jump_tau=1, rounds=2, results_dir=tmp),
                        nodes=self.nodes)
                self.warm = True
            run(settings, nodes=self.nodes)
        path = results_path(settings)
        _, rows = read_run(path)
        footer = json.loads(path.read_text().splitlines()[-1])
        return max(r["test-accuracy"] for r in rows), float(footer["seconds"])


def study(out: Path, aggregations: tuple[str, ...] = ("nnm+cm", "nnm+gm"), taus: tuple[int, ...] = (1, 4, 16, 32),
          seeds: tuple[int, ...] = (1, 2, 3, 4, 5), rounds: int | None = None, nodes: int = 15, f: int = 3,
          eval_every: int = 10) -> tuple[Path, list[dict[str, object]]]:
    """Every run, ``out/tradeoff.csv`` (one row per run), ``out/tradeoff_summary.csv`` (mean and 95%
    Student-t interval over seeds) and ``out/tradeoff.png``."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    finished = Runs(nodes)
    for aggregation in aggregations:
        for seed in seeds:
            base = RunSettings(task="mnist-logreg", aggregation=aggregation, num_byzantine=f, seed=seed, rounds=rounds,
                               eval_every=eval_every, results_dir=str(out / "runs"))
            _, sf_seconds = finished(dataclasses.replace(base, attack="sf"))
            for tau in taus:
                accuracy, seconds = finished(dataclasses.replace(base, attack="jump", jump_tau=tau))
                rows.append({"aggregation": aggregation, "tau": tau, "seed": seed, "max_accuracy": accuracy,
                             "seconds": seconds, "sf_seconds": sf_seconds, "runtime_ratio": seconds / sf_seconds})
                logger.info("%s tau=%d seed=%d: max accuracy %.4f, %.1f s (%.1fx SF)", aggregation, tau, seed,
                            accuracy, seconds, seconds / sf_seconds)
    path = out / "tradeoff.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    with (out / "tradeoff_summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot(summary, out / "tradeoff.png")
    return path, summary


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per (aggregation, tau): mean and 95% half-width of the maximal accuracy and the runtime ratio."""
    out = []
    for key in dict.fromkeys((r["aggregation"], r["tau"]) for r in rows):
        group = [r for r in rows if (r["aggregation"], r["tau"]) == key]
        accuracy = interval([float(r["max_accuracy"]) for r in group])
        ratio = interval([float(r["runtime_ratio"]) for r in group])
        out.append({"aggregation": key[0], "tau": key[1], "seeds": len(group), "max_accuracy": accuracy[0],
                    "max_accuracy_ci95": accuracy[1], "runtime_ratio": ratio[0], "runtime_ratio_ci95": ratio[1]})
    return out


def plot(summary: list[dict[str, object]], path: Path) -> Path:
    """Figure 4's layout: per aggregation, maximal accuracy (left axis) and runtime ratio to SF (right) vs tau."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
