"""Tables and plots of results files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr_byz.results import read_run


def summary_row(path: Path) -> dict[str, Any]:
    """Final, best and worst test accuracy of one results file, with its settings."""
    settings, rows = read_run(path)
    accuracies = [r["test-accuracy"] for r in rows if r.get("test-accuracy") is not None]
    return {
        "task": settings["task"], "aggregation": settings["aggregation"], "attack": settings["attack"],
        "f": settings["num-byzantine"], "alpha": settings["alpha"], "seed": settings["seed"],
        "rounds": rows[-1]["round"] if rows else 0,
        "final": accuracies[-1] if accuracies else float("nan"),
        "max": max(accuracies, default=float("nan")), "min": min(accuracies, default=float("nan")),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """An aligned text table of summary rows (accuracies in percent)."""
    header = ["task", "aggregation", "attack", "f", "alpha", "seed", "rounds", "final acc", "max acc"]
    lines = [header] + [
        [str(r["task"]), str(r["aggregation"]), str(r["attack"]), str(r["f"]), f"{r['alpha']:g}", str(r["seed"]),
         str(r["rounds"]), f"{100 * r['final']:.1f}", f"{100 * r['max']:.1f}"]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    return "\n".join([text[0], "  ".join("-" * w for w in widths), *text[1:]])


def plot_accuracy(paths: list[Path], out: Path, title: str = "") -> Path:
    """Test accuracy against round, one line per results file, saved as a PNG (test loss for tasks that are not
    classifiers, whose accuracy is null)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(path) for path in paths]
    accuracy = any(r.get("test-accuracy") is not None for _, rows in runs for r in rows)
    key, scale = ("test-accuracy", 100) if accuracy else ("test-loss", 1)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    colors = plt.get_cmap("tab10" if len(paths) <= 10 else "tab20").colors
    for i, (settings, rows) in enumerate(runs):
        points = [(r["round"], scale * r[key]) for r in rows if r.get(key) is not None]
        ax.plot(*zip(*points), label=f"{settings['attack']}", linewidth=1.6, color=colors[i % len(colors)])
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)" if accuracy else "test loss")
    if accuracy:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(title="attack", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
