"""The `flwr-byz` command: stress tests through `flwr run`, data preparation, reports."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from .config import RunSettings
from .experiments.flower import FlowerLauncher
from .experiments.report import format_table, plot_accuracy, summary_row
from .experiments.results import is_complete, results_path

PAPER_APP = Path(__file__).resolve().parents[1] / "simulations" / "paper"
PROGRESS = re.compile(r"\] round \d+/\d+: test accuracy|Results written|Error|error:")


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


class Progress:
    """Copies the run's progress lines (evaluations, errors) to stdout."""

    def write(self, line: str) -> None:
        if PROGRESS.search(line):
            sys.stdout.write("    " + re.sub(r"\x1b\[[0-9;]*m", "", line).split("INFO :")[-1].strip() + "\n")

    def flush(self) -> None:
        sys.stdout.flush()


def planned_runs(args: argparse.Namespace) -> list[RunSettings]:
    """One run per attack of ``--attacks``; settings are checked here, before anything runs."""
    base = {
        "task": args.task, "aggregation": args.aggregation, "num-byzantine": args.f, "alpha": args.alpha,
        "rounds": args.rounds, "seed": args.seed, "eval-every": args.eval_every, "eval-size": args.eval_size,
        "results-dir": str(Path(args.out).resolve()), **parse_overrides(args.set),
    }
    return [RunSettings.from_run_config({**base, "attack": attack}) for attack in args.attacks.split(",")]


def stress(args: argparse.Namespace) -> int:
    out_dir = Path(args.out).resolve()
    runs = planned_runs(args)
    done, failed = [], []
    with FlowerLauncher(out_dir / ".flwr-home") as launcher:
        for settings in runs:
            attack, path = settings.attack, results_path(settings)
            if is_complete(settings):
                print(f"[{attack}] already complete with these settings: {path}")
                done.append(path)
                continue
            print(f"[{attack}] {settings.name}: {settings.rounds} rounds on {args.nodes} nodes via flwr run ...")
            start = time.time()
            outcome = launcher.run(PAPER_APP, settings.to_run_config(), num_supernodes=args.nodes,
                                   num_gpus=args.gpus, echo=Progress())
            print(f"[{attack}] {outcome.status} in {time.time() - start:.0f} s -> {path}")
            if outcome.ok and is_complete(settings):
                done.append(path)
            else:
                failed.append(attack)
                (out_dir / f"{settings.name}_{settings.key}.log").write_text(outcome.output)
    if done:
        print()
        print(format_table([summary_row(p) for p in done]))
        png = plot_accuracy(done, out_dir / f"{args.task}_{args.aggregation}_f{args.f}_accuracy.png",
                            title=f"{args.task}, {args.aggregation}, f={args.f}, alpha={args.alpha:g}")
        print(f"\nplot: {png}")
    if failed:
        print(f"failed runs: {', '.join(failed)} (logs in {out_dir})", file=sys.stderr)
        return 1
    return 0


def data(args: argparse.Namespace) -> int:
    from .tasks import prepare

    print(prepare(args.name, args.data_dir, download=args.download))
    return 0


def report(args: argparse.Namespace) -> int:
    paths = sorted(p for item in args.paths for p in (Path(item).glob("*.jsonl") if Path(item).is_dir() else [Path(item)]))
    if not paths:
        raise SystemExit("no results files (*.jsonl) found")
    print(format_table([summary_row(p) for p in paths]))
    if args.plot:
        print(f"plot: {plot_accuracy(paths, Path(args.plot))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flwr-byz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stress", help="run one defence against several attacks through `flwr run`")
    p.add_argument("--task", default="mnist-logreg")
    p.add_argument("--aggregation", default="nnm+gm")
    p.add_argument("--attacks", default="none,sf,alie,jump", help="comma-separated attack names")
    p.add_argument("--f", type=int, default=3, help="number of Byzantine nodes")
    p.add_argument("--nodes", type=int, default=15, help="n, all nodes (n - f honest)")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per client (Ray's client-resources-num-gpus)")
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet heterogeneity (<= 0: IID)")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-size", type=int, default=2000)
    p.add_argument("--out", default="results/stress", help="results folder (runs already complete are skipped)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other run-config key")
    p.set_defaults(run=stress)

    p = sub.add_parser("data", help="make a dataset available offline")
    p.add_argument("name", help="task or dataset: mnist, fashion-mnist, cifar10, ...")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true", help="use torchvision's downloader (needs internet)")
    p.set_defaults(run=data)

    p = sub.add_parser("report", help="table (and plot) of results files or folders")
    p.add_argument("paths", nargs="+")
    p.add_argument("--plot", default=None, help="write an accuracy-vs-round PNG here")
    p.set_defaults(run=report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        parser.exit(2, f"flwr-byz: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
