"""The `flwr-byz` command: stress tests through `flwr run`, data preparation, reports."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import time
import traceback
from pathlib import Path

from flwr_byz.settings import RunSettings
from flwr_byz.engine import run as run_in_process
from flwr_byz.engine.planning import check_planning
from flwr_byz.runs import audit as audit_app
from flwr_byz.runs import executor, store, tables
from flwr_byz.runs.executor import PAPER_APP
from flwr_byz.runs import grid as sweep_spec
from flwr_byz.studies import toy2d as toy2d_study
from flwr_byz.studies import tradeoff as tradeoff_study
from flwr_byz.runs.launcher import FlowerLauncher
from flwr_byz.runs.report import format_table, plot_accuracy, summary_row
from flwr_byz.results import is_complete, results_path

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
    """One run per attack of ``--attacks``; settings are checked here, before anything runs (planning attacks
    need the engine)."""
    base = {
        "task": args.task, "aggregation": args.aggregation, "num-byzantine": args.f, "alpha": args.alpha,
        "rounds": args.rounds, "seed": args.seed, "eval-every": args.eval_every, "eval-size": args.eval_size,
        "results-dir": str(Path(args.out).resolve()), **parse_overrides(args.set),
    }
    runs = [RunSettings.from_run_config({**base, "attack": attack}) for attack in args.attacks.split(",")]
    planning = [s.attack for s in runs if s.planning]
    if planning and args.executor == "flower":
        raise ValueError(f"{', '.join(planning)} (jump-tau={runs[0].jump_tau}) plan ahead on the whole simulation "
                         "state: add --executor engine")
    for settings in runs:
        check_planning(settings)
    return runs


def echo_engine_progress() -> None:
    """The engine's progress lines (one per evaluated round) on stdout, indented like a Flower run's."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("    %(message)s"))
    for name in ("flwr_byz.engine", "flwr_byz.toy2d", "flwr_byz.tradeoff"):
        logger = logging.getLogger(name)
        if not any(getattr(h, "stream", None) is sys.stdout for h in logger.handlers):
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def stress(args: argparse.Namespace) -> int:
    out_dir = Path(args.out).resolve()
    runs = planned_runs(args)
    done, failed = [], []
    if args.executor == "engine":
        echo_engine_progress()
    with contextlib.ExitStack() as stack:
        launcher = stack.enter_context(FlowerLauncher(out_dir / ".flwr-home")) if args.executor == "flower" else None
        for settings in runs:
            attack, path = settings.attack, results_path(settings)
            if is_complete(settings):
                print(f"[{attack}] already complete with these settings: {path}")
                done.append(path)
                continue
            print(f"[{attack}] {settings.name}: {settings.rounds} rounds on {args.nodes} nodes via {args.executor} ...")
            start = time.time()
            if launcher is None:
                try:
                    run_in_process(settings, nodes=args.nodes)
                    status, ok, output = "finished", True, ""
                except Exception:  # noqa: BLE001 - recorded in the run's log, reported, and the exit code is 1
                    status, ok, output = "failed", False, traceback.format_exc()
                    print(output, file=sys.stderr)
            else:
                outcome = launcher.run(PAPER_APP, settings.to_run_config(), num_supernodes=args.nodes,
                                       num_gpus=args.gpus, echo=Progress())
                status, ok, output = outcome.status, outcome.ok, outcome.output
            print(f"[{attack}] {status} in {time.time() - start:.0f} s -> {path}")
            if ok and is_complete(settings):
                done.append(path)
            else:
                failed.append(attack)
                (out_dir / f"{settings.name}_{settings.key}.log").write_text(output)
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


def toy2d(args: argparse.Namespace) -> int:
    echo_engine_progress()
    path, runs = toy2d_study.study(Path(args.out), tuple(args.aggregators.split(",")), tuple(args.attacks.split(",")),
                                   args.rounds)
    print(f"\n{path}\n" + path.read_text())
    print(f"figures: {path.with_name('toy2d_trajectories.png')}, {path.with_name('toy2d_loss.png')}")
    return 0


def tradeoff(args: argparse.Namespace) -> int:
    echo_engine_progress()
    logging.getLogger("flwr_byz.engine").setLevel(logging.WARNING)  # one line per run, not per evaluation
    path, summary = tradeoff_study.study(Path(args.out), tuple(args.aggregations.split(",")),
                                         tuple(int(t) for t in args.taus.split(",")),
                                         tuple(int(s) for s in args.seeds.split(",")), args.rounds,
                                         eval_every=args.eval_every)
    print(f"\n{path}\n{path.with_name('tradeoff_summary.csv').read_text()}")
    print(f"figure: {path.with_name('tradeoff.png')}")
    return 0


def data(args: argparse.Namespace) -> int:
    from flwr_byz.tasks import prepare

    print(prepare(args.name, args.data_dir, download=args.download))
    return 0


def sweep(args: argparse.Namespace) -> int:
    out = Path(args.out or Path("results") / Path(args.spec).stem).resolve()
    overrides = {k: sweep_spec.toml_value(v) for k, v in parse_overrides(args.set).items()}
    spec = sweep_spec.load(args.spec, results_dir=out, overrides=overrides)  # every run is checked before any runs
    if args.executor:
        spec = sweep_spec.with_executor(spec, args.executor)
    planned = executor.plan(spec, args.retry_failed)
    print(f"sweep {spec.name}: {len(spec.runs)} runs via {spec.executor}, {len(planned[0])} to run now -> {out}")
    outcome = executor.run_sweep(spec, planned, address=args.address, cpus_per_run=args.cpus_per_run,
                                 gpus_per_run=args.gpus_per_run)
    print(f"finished now {len(outcome.finished)}, already finished {len(outcome.skipped)}, "
          f"failed {len(outcome.failed)}" + (f", failed before (not retried: add --retry-failed) "
                                             f"{len(outcome.failed_before)}" if outcome.failed_before else ""))
    for settings in outcome.failed:
        print(f"  failed: {settings.name} -> {store.failure_path(settings)}", file=sys.stderr)
    if args.report and (outcome.finished or outcome.skipped):
        try:
            text, paths = tables.report(store.finished_runs(out), out / "report", args.metric)
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
    text, paths = tables.report(store.finished_runs(args.results), out, args.metric)
    print(text)
    print("\n" + "\n".join(str(p) for p in paths))
    return 0


def ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(v) for v in text.split(",") if v.strip()]


def audit(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    app_dir = Path(args.app)
    out = Path(args.out or Path("results") / "audit" / app_dir.resolve().name)
    run = audit_app.Audit(app_dir, out, nodes=args.num_supernodes, rounds=args.rounds, rounds_key=args.rounds_key,
                          run_config=parse_config_args([args.run_config] if args.run_config else None),
                          timeout=args.timeout)
    try:
        report_path, paths, failed = run.run([a.strip().lower() for a in args.attacks.split(",")], ints(args.f),
                                             ints(args.seeds) or [], args.metric, args.threshold)
    except RuntimeError as err:  # the app itself failed: its error, not a traceback of ours
        print(f"flwr-byz audit: {err}", file=sys.stderr)
        return 1
    print(f"\n{report_path.read_text()}\nreport: {report_path} ({len(paths)} files)")
    if failed:
        print(f"failed runs: {', '.join(r.name for r in failed)} (their errors: {out / 'runs'}/*.failed.json)",
              file=sys.stderr)
        return 1
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
    p.add_argument("--executor", choices=("flower", "engine"), default="flower",
                   help="flower: `flwr run` on Ray (default); engine: the same maths in this process, faster, "
                        "and the only one for planning attacks (jump-tau > 1, solve-p)")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per client (Ray's client-resources-num-gpus)")
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet heterogeneity (<= 0: IID)")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-size", type=int, default=2000)
    p.add_argument("--out", default="results/stress", help="results folder (runs already complete are skipped)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other run-config key")
    p.set_defaults(run=stress)

    p = sub.add_parser("toy2d", help="the 2-D landscape study (paper, Section 4): every rule against every attack")
    p.add_argument("--out", default="results/toy2d", help="folder for toy2d.csv and the figures")
    p.add_argument("--aggregators", default=",".join(toy2d_study.AGGREGATORS))
    p.add_argument("--attacks", default=",".join(toy2d_study.ATTACKS))
    p.add_argument("--rounds", type=int, default=100, help="T")
    p.set_defaults(run=toy2d)

    p = sub.add_parser("tradeoff", help="JUMP-tau's strength and cost vs tau (paper, Appendix A, Figure 4)")
    p.add_argument("--out", default="results/tradeoff", help="folder for the runs, the CSVs and tradeoff.png")
    p.add_argument("--aggregations", default="nnm+cm,nnm+gm")
    p.add_argument("--taus", default="1,4,16,32")
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the task's, 640)")
    p.add_argument("--eval-every", type=int, default=10)
    p.set_defaults(run=tradeoff)

    p = sub.add_parser("data", help="make a dataset available offline")
    p.add_argument("name", help="task or dataset: mnist, fashion-mnist, cifar10, ...")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true", help="use torchvision's downloader (needs internet)")
    p.set_defaults(run=data)

    p = sub.add_parser("sweep", help="run a TOML grid of runs (engine runs as Ray tasks); resumes where it stopped")
    p.add_argument("spec", help="sweep spec, e.g. simulations/paper/sweeps/smoke.toml")
    p.add_argument("--out", default=None, help="results store (default: results/<spec name>)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (default: start a local one)")
    p.add_argument("--cpus-per-run", type=float, default=1.0)
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPU fraction each engine run requests")
    p.add_argument("--retry-failed", action="store_true", help="also rerun the runs recorded as failed")
    p.add_argument("--executor", choices=sweep_spec.EXECUTORS, default=None, help="override the spec's executor")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="replace grid keys, TOML values: rounds=100 'seed=[1,2]'")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the report (tables, figures) of the store afterwards")
    p.add_argument("--metric", choices=tables.METRICS, default="max")
    p.set_defaults(run=sweep)

    p = sub.add_parser("export", help="one tidy CSV of a results store: a row per run and evaluated round")
    p.add_argument("results", help="results folder")
    p.add_argument("--out", default=None, help="CSV path (default: RESULTS/results.csv)")
    p.set_defaults(run=export)

    p = sub.add_parser("report", help="the paper's tables and figures from a results folder")
    p.add_argument("results", help="results folder")
    p.add_argument("--metric", choices=tables.METRICS, default="max",
                   help="a run's accuracy: its maximum over evaluated rounds (the paper's) or its final one")
    p.add_argument("--out", default=None, help="folder for the tables and figures (default: RESULTS/report)")
    p.set_defaults(run=report)

    p = sub.add_parser("audit", help="stress-test your own Flower app: attacks x f through `flwr run`, and a report")
    p.add_argument("app", help="the app's folder: its ClientApp wrapped with flwr_byz.flower.attacker(app), its "
                               "strategy with flwr_byz.flower.OmniscientAdversary(strategy)")
    p.add_argument("--attacks", default=",".join(audit_app.DEFAULT_ATTACKS), help="comma-separated attack names")
    p.add_argument("--f", default=None, help="comma-separated numbers of Byzantine nodes (default: 1 .. the largest "
                                             "the strategy tolerates)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (the run config's `seed`)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the app's own)")
    p.add_argument("--rounds-key", default=None, help="the app's rounds key (default: num-server-rounds, ...)")
    p.add_argument("--run-config", default=None, help='more of the app\'s run config, as `flwr run` takes it: '
                                                      '"lr=0.1 strategy=\'fedmedian\'"')
    p.add_argument("--metric", default="accuracy", help="the metric of the app's evaluate_fn to report")
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
