"""Per-round cost of attacking a user's own app (the test app `userapp`) through `flwr run`.

    python benchmarks/bench_user_app.py [--nodes 10] [--f 2] [--rounds 8] [--attacks none,sf,jump]
                                        [--run-config "strategy='fedmedian'"]

* One `flwr run` per attack on a staged copy of ``examples/audited-pytorch-app`` (as `flwr-byz audit` runs it);
  ``none`` has no Byzantine node, the others ``--f``. Wall per round: the hook's ``train`` events'
  timestamps over rounds 2..R (mean and median; start-up and round 1's warm-up left out), as ratios
  to the first attack measured in the same run of this script.
* JUMP on a wrapped app is run by the hook and scores its candidates with the honest nodes' own
  evaluate handlers (``EvaluateOracle``: one ``evaluate.score`` message per honest node and batched
  call). Reported: the hook's ``attack-seconds`` and its ``oracle-seconds`` share of a JUMP round,
  the batched calls and the distinct candidates scored per round.
* Oracle compute: the same evaluate passes in this process with no Flower (the user's evaluate
  handler on every honest node's data for as many candidates, one thread): what a loss function
  handed to the adversary directly (no messages) would cost at best on one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from flwr_byz.runs.audit import events, rows, stage
from flwr_byz.runs.launcher import FlowerLauncher

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "audited-pytorch-app"


def per_round(table: list[dict]) -> tuple[float, float]:
    """Mean and median seconds between consecutive training rounds, rounds 2..R."""
    times = {row["round"]: row["time"] for row in table if "time" in row}
    gaps = [times[r] - times[r - 1] for r in sorted(times) if r - 1 in times and r > 1]
    return statistics.fmean(gaps), statistics.median(gaps)


def oracle_compute(run_config: dict, nodes: int, f: int, candidates: int) -> float:
    """Seconds for the user's evaluate handler to score ``candidates`` models on every honest node, in process."""
    sys.path.insert(0, str(APP))
    from userapp.client_app import app
    from userapp.task import Net

    torch.set_num_threads(1)
    arrays = ArrayRecord(Net().state_dict())

    def score(pid: int, times: int) -> None:
        context = Context(run_id=1, node_id=pid + 1, node_config={"partition-id": pid, "num-partitions": nodes},
                          state=RecordDict(), run_config=run_config)
        for _ in range(times):
            metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=pid + 1, reply_to_message_id="",
                                group_id="1", created_at=time.time(), ttl=60.0, message_type="evaluate")
            app.app(Message(RecordDict({"arrays": arrays, "config": ConfigRecord()}), metadata=metadata), context)

    for pid in range(nodes - f):  # warm-up: data loaded and partitioned, as on a node after round 1
        score(pid, 1)
    start = time.perf_counter()
    for pid in range(nodes - f):
        score(pid, candidates)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--f", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--attacks", default="none,sf,jump", help="the first is the baseline of the ratios")
    parser.add_argument("--run-config", default="strategy='fedmedian'",
                        help="userapp settings, as `flwr run` takes them (FedAvg diverges to NaN under JUMP, which "
                             "leaves nothing to attack)")
    args = parser.parse_args()
    from flwr.common.config import parse_config_args

    extra = parse_config_args([args.run_config] if args.run_config else None)
    attacks = args.attacks.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp, FlowerLauncher(Path(tmp) / "home") as launcher:
        app = stage(APP, Path(tmp) / "app")
        for attack in attacks:
            f = 0 if attack == "none" else args.f
            config = {**extra, "num-server-rounds": args.rounds, "attack": attack, "num-byzantine": f}
            outcome = launcher.run(app, config, num_supernodes=args.nodes)
            if not outcome.ok:
                raise SystemExit(f"{attack}: run failed ({outcome.status}):\n{outcome.output[-3000:]}")
            results[attack] = rows(list(events(outcome.output)))
    config = {"train-examples": 6000, "batch-size": 32, "seed": 0, "local-epochs": 1, **extra}
    print(f"userapp (LeNet-5 on MNIST, {config['train-examples']} training images), {config.get('strategy')}, "
          f"{args.nodes} nodes, f = {args.f}, {args.rounds} rounds per run, CPU")
    print(f"{'attack':<8}{'wall/round':>12}{'x ' + attacks[0]:>10}{'median':>10}{'x ' + attacks[0]:>10}"
          f"{'attack':>10}{'oracle':>10}{'share':>8}{'calls':>7}{'cands':>7}{'accuracy':>10}")
    base_mean, base_median = per_round(results[attacks[0]])
    for attack, table in results.items():
        mean, median = per_round(table)
        later = [row for row in table if row["round"] > 1]
        attack_s = statistics.fmean(row.get("train-attack-seconds", 0.0) for row in later)
        oracle = statistics.fmean(row.get("train-oracle-seconds", 0.0) for row in later)
        calls = statistics.fmean(row.get("train-oracle-calls", 0.0) for row in later)
        cands = statistics.fmean(row.get("train-jump-losses", 0.0) for row in later)
        print(f"{attack:<8}{mean * 1000:>9.0f} ms{mean / base_mean:>10.2f}{median * 1000:>7.0f} ms"
              f"{median / base_median:>10.2f}{attack_s * 1000:>7.0f} ms{oracle * 1000:>7.0f} ms{oracle / mean:>8.0%}"
              f"{calls:>7.1f}{cands:>7.1f}{table[-1].get('accuracy', float('nan')):>10.4f}")
    if "jump" in results:
        later = [row for row in results["jump"] if row["round"] > 1]
        if not all("train-oracle-seconds" in row for row in later):
            raise SystemExit("JUMP did not attack every round (the honest replies became non-finite?): see the runs")
        cands = round(statistics.fmean(row["train-jump-losses"] for row in later))
        compute = oracle_compute(config, args.nodes, args.f, cands)
        oracle = statistics.fmean(row["train-oracle-seconds"] for row in later)
        cores = min(os.cpu_count() or 1, args.nodes - args.f)  # Ray runs one client per core at num-cpus=1
        print(f"\nJUMP's oracle: {oracle * 1000:.0f} ms per round through Flower; the same {cands} x "
              f"{args.nodes - args.f} evaluate passes in this process on one core: {compute * 1000:.0f} ms "
              f"(messaging and scheduling: {(oracle - compute / cores) * 1000:.0f} ms above the {cores}-core ideal)")


if __name__ == "__main__":
    main()
