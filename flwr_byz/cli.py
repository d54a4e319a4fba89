"""The `flwr-byz` command: stress tests, sweeps and audits (grids of runs through one planner, executor and
results store), their reports, the paper's studies and data preparation."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flwr_byz.runs import audit as audit_app
from flwr_byz.runs import executor, report as reports, store
from flwr_byz.runs import grid
from flwr_byz.runs.grid import Sweep
from flwr_byz.studies import toy2d as toy2d_study
from flwr_byz.studies import tradeoff as tradeoff_study


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(v) for v in text.split(",") if v.strip()]


def run_grid(spec: Sweep, out: Path, args: argparse.Namespace, retry_failed: bool = False,
             echo: bool = False) -> executor.Outcome:
    """Plan and execute ``spec`` into its store (``args``: the executor's options), saying what runs and, on
    stderr, what failed."""
    planned = executor.plan(spec, retry_failed)
    print(f"sweep {spec.name}: {len(spec.runs)} runs via {spec.executor}, {len(planned[0])} to run now -> {out}")
    outcome = executor.run_sweep(spec, planned, address=args.address, cpus_per_run=args.cpus_per_run,
                                 gpus_per_run=args.gpus_per_run, echo=echo)
    print(outcome.summary())
    if outcome.failures():
        print(outcome.failures(), file=sys.stderr)
    return outcome


def stress_sweep(args: argparse.Namespace) -> Sweep:
    """The preset grid of ``flwr-byz stress``: one run per attack of ``--attacks``, checked before anything runs
    (planning attacks need the engine)."""
    if args.nodes <= args.f:
        raise ValueError(f"--nodes {args.nodes} must exceed --f {args.f}: n counts every node, f of them Byzantine")
    base = {
        "task": args.task, "aggregation": args.aggregation, "num-byzantine": args.f, "alpha": args.alpha,
        "rounds": args.rounds, "seed": args.seed, "eval-every": args.eval_every, "eval-size": args.eval_size,
        "results-dir": str(Path(args.out).resolve()), **parse_overrides(args.set),
    }
    configs = [{**base, "attack": attack} for attack in args.attacks.split(",")]
    return grid.sweep_of("stress", args.executor, args.nodes - args.f, configs)


def stress(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    spec = stress_sweep(args)
    outcome = run_grid(spec, out, args, retry_failed=True, echo=True)  # a run that failed before runs again
    runs = store.runs_of(spec.runs)
    if runs:
        accuracy = all(any(r.get(reports.ACCURACY) is not None for r in rows) for _, rows, _ in runs)
        metric = reports.ACCURACY if accuracy else "test-loss"  # toy2d reports only the test loss
        table = reports.table(runs, metric=metric, summary="final", percent=accuracy)
        print(f"\nfinal {metric}{' (%)' * accuracy}, mean ± 95% interval over seeds:\n{reports.markdown(table)}")
        png = reports.curves(runs, out / f"{args.task}_{args.aggregation}_f{args.f}_accuracy.png", metric, accuracy,
                             title=f"{args.task}, {args.aggregation}, f={args.f}, alpha={args.alpha:g}")
        print(f"\nplot: {png}")
    return 1 if outcome.failed else 0


def echo_progress(*loggers: str) -> None:
    """The loggers' INFO lines on stdout, indented like a Flower run's progress lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("    %(message)s"))
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(getattr(h, "stream", None) is sys.stdout for h in logger.handlers):
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def toy2d(args: argparse.Namespace) -> int:
    echo_progress("flwr_byz.toy2d")
    path, runs = toy2d_study.study(Path(args.out), tuple(args.aggregators.split(",")), tuple(args.attacks.split(",")),
                                   args.rounds)
    print(f"\n{path}\n" + path.read_text())
    print(f"figures: {path.with_name('toy2d_trajectories.png')}, {path.with_name('toy2d_loss.png')}")
    return 0


def tradeoff(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    lists = {"aggregation": args.aggregations and args.aggregations.split(","), "jump-tau": ints(args.taus),
             "seed": ints(args.seeds), "rounds": args.rounds, "eval-every": args.eval_every}
    overrides = {k: v for k, v in lists.items() if v is not None} | {
        k: grid.toml_value(v) for k, v in parse_overrides(args.set).items()}
    spec = grid.load(tradeoff_study.SPEC, results_dir=out / "runs", overrides=overrides)
    outcome = run_grid(spec, out, args, args.retry_failed)
    path, _ = tradeoff_study.write(out, store.runs_of(spec.runs))
    print(f"\n{path}\n{path.with_name('tradeoff_summary.csv').read_text()}")
    print(f"figure: {path.with_name('tradeoff.png')}")
    return 1 if outcome.failed else 0


def data(args: argparse.Namespace) -> int:
    from flwr_byz.tasks import prepare

    print(prepare(args.name, args.data_dir, download=args.download))
    return 0


def sweep(args: argparse.Namespace) -> int:
    out = Path(args.out or Path("results") / grid.spec_path(args.spec).stem).resolve()
    overrides = {k: grid.toml_value(v) for k, v in parse_overrides(args.set).items()}
    spec = grid.load(args.spec, results_dir=out, overrides=overrides)  # every run is checked before any runs
    if args.executor:
        spec = grid.with_executor(spec, args.executor)
    outcome = run_grid(spec, out, args, args.retry_failed)
    if args.report and (outcome.finished or outcome.skipped):
        try:
            text, paths = reports.write_paper_report(store.finished_runs(out), out / "report", args.metric)
            print(f"\n{text}\n\nreport: {out / 'report'} ({len(paths)} files)")
        except ValueError as err:  # the runs are kept; only the report cannot be made
            print(f"no report: {err}", file=sys.stderr)
    return 1 if outcome.failed else 0


def export(args: argparse.Namespace) -> int:
    path, runs = store.export(args.results, args.out or Path(args.results) / "results.csv")
    print(f"{path}: {runs} runs")
    return 0


def report(args: argparse.Namespace) -> int:
    out = Path(args.out or Path(args.results) / "report")
    text, paths = reports.write_paper_report(store.finished_runs(args.results), out, args.metric)
    print(text)
    print("\n" + "\n".join(str(p) for p in paths))
    return 0


def audit(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    app_dir = Path(args.app)
    out = Path(args.out or Path("results") / "audit" / app_dir.resolve().name)
    run = audit_app.Audit(app_dir, out, nodes=args.num_supernodes, rounds=args.rounds, rounds_key=args.rounds_key,
                          run_config=parse_config_args([args.run_config] if args.run_config else None),
                          timeout=args.timeout, loss_key=args.loss_key)
    try:
        report_path, paths, failed = run.run([a.strip().lower() for a in args.attacks.split(",")], ints(args.f),
                                             ints(args.seeds) or [], args.metric, args.threshold)
    except RuntimeError as err:  # the app itself failed: its error, not a traceback of ours
        print(f"flwr-byz audit: {err}", file=sys.stderr)
        return 1
    print(f"\n{report_path.read_text()}\nreport: {report_path} ({len(paths)} files)")
    if failed:
        print(run.outcome.failures(), file=sys.stderr)
    return 1 if failed else 0


def executor_options(p: argparse.ArgumentParser, *gpus: str,
                     gpus_help: str = "GPU fraction each engine run requests") -> None:
    """Where engine runs go: a Ray cluster, and each run's CPUs and GPUs (``gpus``: more names of the option)."""
    p.add_argument("--address", default=None, help="join an existing Ray cluster (default: start a local one)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs (and torch threads) each engine run gets")
    p.add_argument("--gpus-per-run", *gpus, type=float, default=0.0, help=gpus_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flwr-byz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stress", help="run one defence against several attacks (a preset grid of the sweep executor)")
    p.add_argument("--task", default="mnist-logreg")
    p.add_argument("--aggregation", default="nnm+gm")
    p.add_argument("--attacks", default="none,sf,alie,jump", help="comma-separated attack names")
    p.add_argument("--f", type=int, default=3, help="number of Byzantine nodes")
    p.add_argument("--nodes", type=int, default=15, help="n, all nodes (n - f honest)")
    p.add_argument("--executor", choices=grid.EXECUTORS, default="flower",
                   help="flower: `flwr run` on Ray (default); engine: the same maths as Ray tasks, faster, "
                        "and the only one for planning attacks (jump-tau > 1, solve-p)")
    executor_options(p, "--gpus", gpus_help="GPUs per client (flower: Ray's client-resources-num-gpus) or per "
                                            "run (engine)")
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet heterogeneity (<= 0: IID)")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-size", type=int, default=2000)
    p.add_argument("--out", default="results/stress", help="results folder (finished runs are skipped, failed ones "
                                                           "run again)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other run-config key")
    p.set_defaults(run=stress)

    p = sub.add_parser("toy2d", help="the 2-D landscape study (paper, Section 4): every rule against every attack")
    p.add_argument("--out", default="results/toy2d", help="folder for toy2d.csv and the figures")
    p.add_argument("--aggregators", default=",".join(toy2d_study.AGGREGATORS))
    p.add_argument("--attacks", default=",".join(toy2d_study.ATTACKS))
    p.add_argument("--rounds", type=int, default=100, help="T")
    p.set_defaults(run=toy2d)

    p = sub.add_parser("tradeoff", help="JUMP-tau's strength and cost vs tau (paper, Appendix A, Figure 4): the "
                                        f"{tradeoff_study.SPEC} sweep, then its figure")
    p.add_argument("--out", default="results/tradeoff", help="folder for the runs (OUT/runs), the CSVs and "
                                                            "tradeoff.png")
    p.add_argument("--aggregations", default=None, help="comma-separated (default: the spec's, nnm+cm,nnm+gm)")
    p.add_argument("--taus", default=None, help="comma-separated (default: the spec's, 1,4,16,32)")
    p.add_argument("--seeds", default=None, help="comma-separated (default: the spec's, 1,2,3,4,5)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the task's, 640)")
    p.add_argument("--eval-every", type=int, default=None, help="default: the spec's, 10")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="replace other grid keys (TOML values)")
    p.add_argument("--retry-failed", action="store_true", help="also rerun the runs recorded as failed")
    executor_options(p)
    p.set_defaults(run=tradeoff)

    p = sub.add_parser("data", help="make a dataset available offline")
    p.add_argument("name", help="task or dataset: mnist, fashion-mnist, cifar10, ...")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true", help="use torchvision's downloader (needs internet)")
    p.set_defaults(run=data)

    p = sub.add_parser("sweep", help="run a TOML grid of runs (engine runs as Ray tasks); resumes where it stopped")
    p.add_argument("spec", help="sweep spec: a path, or the name of a packaged one ("
                                f"{', '.join(sorted(path.stem for path in grid.SPECS.glob('*.toml')))})")
    p.add_argument("--out", default=None, help="results store (default: results/<spec name>)")
    executor_options(p)
    p.add_argument("--retry-failed", action="store_true", help="also rerun the runs recorded as failed")
    p.add_argument("--executor", choices=grid.EXECUTORS, default=None, help="override the spec's executor")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="replace grid keys, TOML values: rounds=100 'seed=[1,2]'")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the report (tables, figures) of the store afterwards")
    p.add_argument("--metric", choices=reports.SUMMARIES, default="max")
    p.set_defaults(run=sweep)

    p = sub.add_parser("export", help="one tidy CSV of a results store: a row per run and evaluated round")
    p.add_argument("results", help="results folder")
    p.add_argument("--out", default=None, help="CSV path (default: RESULTS/results.csv)")
    p.set_defaults(run=export)

    p = sub.add_parser("report", help="the paper's tables and figures from a results folder")
    p.add_argument("results", help="results folder")
    p.add_argument("--metric", choices=reports.SUMMARIES, default="max",
                   help="a run's accuracy: its maximum over evaluated rounds (the paper's) or its final one")
    p.add_argument("--out", default=None, help="folder for the tables and figures (default: RESULTS/report)")
    p.set_defaults(run=report)

    p = sub.add_parser("audit", help="stress-test your own Flower app: attacks x f through `flwr run`, and a report")
    p.add_argument("app", help="the app's folder: its ClientApp wrapped with flwr_byz.flower.byzantine(app), its "
                               "strategy with flwr_byz.flower.OmniscientAdversary(strategy)")
    p.add_argument("--attacks", default=",".join(audit_app.DEFAULT_ATTACKS), help="comma-separated attack names")
    p.add_argument("--f", default=None, help="comma-separated numbers of Byzantine nodes (default: 1 .. the largest "
                                             "the strategy tolerates)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (the run config's `seed`)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the app's own)")
    p.add_argument("--rounds-key", default=None, help="the app's rounds key (default: num-server-rounds, ...)")
    p.add_argument("--run-config", default=None, help='more of the app\'s run config, as `flwr run` takes it: '
                                                      '"lr=0.1 strategy=\'fedmedian\'"')
    p.add_argument("--metric", default="auto",
                   help="the metric to report: a key of the app's evaluate_fn, or federated-<key> of its federated "
                        "evaluation (default auto: accuracy, else federated-accuracy)")
    p.add_argument("--loss-key", default=None,
                   help="the evaluate metric JUMP maximises (default: the one federated metric named *loss*)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="breakdown: the first f at which the metric falls below this fraction of its no-attack value")
    p.add_argument("--num-supernodes", type=int, default=10, help="nodes per run")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is stopped")
    p.add_argument("--out", default=None, help="results store and report (default: results/audit/<app>)")
    p.set_defaults(run=audit)
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
