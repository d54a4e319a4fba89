"""Per-round cost of the paper app under `flwr run`: compute vs framework overhead, and peak memory.

    python benchmarks/bench_flower_round.py [--task mnist] [--honest 12] [--fs 3] [--rounds 20] [--attacks none]
    python benchmarks/bench_flower_round.py --task mnist-logreg --attacks sf,jump --fs 1,3 --rounds 60
    python benchmarks/bench_flower_round.py --task cifar10 --generated-data --attacks sf,jump --rounds 5

* per f (``--fs``: Byzantine nodes, n = honest + f) and attack, one run; ratios are to the first
  attack's run at the same f (e.g. JUMP's cost per Flower round vs SF's). Attacks whose vector
  is the same on every Byzantine node (SF, JUMP, ...) are computed by one node per round, so a
  round under JUMP should cost about the same at f = 1 and f = 3.

* wall per round: one run evaluating (on 100 test images) every round; the results file's
  ``elapsed`` column gives ``(elapsed[R] - elapsed[1]) / (R - 1)``, which leaves out start-up
  (SuperLink, Ray, imports) and the first round's warm-up.
* compute per round: the same work in this process, with no Flower: the n - f honest
  ``worker_step`` calls the clients make (one torch thread each, spread over as many parallel
  workers as Flower's Ray backend runs: one per core at ``num-cpus=1`` per client) plus the
  server's robust aggregation, timed over a few rounds.
* overhead = wall - compute, reported as a ratio of compute. Both runs use the same machine, so
  the ratio is meaningful even when absolute times are noisy.
* attack node: the Byzantine leader's own wall time for the attack per round (its ``attack-seconds``
  metric: oracle, search, losses), the part of a round an attack's cost can change.
* peak memory: the largest total PSS (resident memory, shared pages split) of the run's processes (those whose
  environment carries this run's ``FLWR_HOME``: SuperLink, ServerApp, Ray workers), sampled
  every 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from flwr_byz.node_data import honest_partitions
from flwr_byz.settings import RunSettings
from flwr_byz.runs.launcher import FlowerLauncher
from flwr_byz.results import read_run, results_path
from flwr_byz.tasks import worker_step

APP = Path(__file__).resolve().parents[1] / "simulations" / "paper"


def run_memory(marker: bytes) -> int:
    """Total proportional set size (bytes: shared pages split among their users) of the
    processes whose environment contains ``marker``."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker not in (proc / "environ").read_bytes():
                continue
            rollup = (proc / "smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


class PeakMemory:
    """Largest total PSS of one run's processes while the context is open."""

    def __init__(self, flwr_home: Path) -> None:
        self.marker = f"FLWR_HOME={flwr_home}".encode()
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, run_memory(self.marker))
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def generated_cifar(root: Path, per_batch: int = 2000, seed: int = 0) -> Path:
    """A CIFAR-10 folder in torchvision's format with random pixels and labels (``5 * per_batch``
    training images): the real data's shapes and costs, for timing where no copy exists offline."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, per_batch).tolist()}, fh)
    return root


def compute_per_round(settings: RunSettings, nodes: int, rounds: int = 3) -> float:
    """Seconds per round of the honest steps (one thread each, spread over the cores as Ray
    spreads the clients) and the aggregation, in this process."""
    h = nodes - settings.num_byzantine
    task, x, y, parts = honest_partitions(settings, h)
    data = [(x[torch.as_tensor(p)], y[torch.as_tensor(p)]) for p in parts]
    aggregator = settings.aggregator()
    torch.manual_seed(0)
    model = task.build_model()
    momentum: list[torch.Tensor | None] = [None] * h
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    worker_step(task, model, *data[0], None, settings.worker(), 0, 0, 1)  # warm-up
    start = time.perf_counter()
    for t in range(1, rounds + 1):
        for i, (xi, yi) in enumerate(data):
            momentum[i] = worker_step(task, model, xi, yi, momentum[i], settings.worker(), 0, i, t).momentum
    steps = (time.perf_counter() - start) / rounds
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for _ in range(rounds):
        aggregator(torch.stack([m for m in momentum if m is not None]))
    return steps / min(os.cpu_count() or 1, h) + (time.perf_counter() - start) / rounds


def wall_per_round(launcher: FlowerLauncher, config: dict, nodes: int, tmp: str) -> tuple[float, float, int, float]:
    """Seconds per round (mean and median over rounds 2..R, from the results file), peak PSS of one
    `flwr run` and the Byzantine leader's mean ``attack-seconds`` (its own wall time for the attack)
    over those rounds. The median leaves out one-off costs (a worker compiling a kernel on first use)."""
    settings = RunSettings.from_run_config({**config, "results-dir": tmp})
    with PeakMemory(launcher.home) as memory:
        outcome = launcher.run(APP, settings.to_run_config(), num_supernodes=nodes)
    if not outcome.ok:
        raise SystemExit(f"run failed ({outcome.status}):\n{outcome.output[-2000:]}")
    rows = read_run(results_path(settings))[1]
    elapsed = {row["round"]: row["elapsed"] for row in rows}
    attack = [row["attack-seconds"] for row in rows if row["round"] > 1 and "attack-seconds" in row]
    wall = (elapsed[settings.rounds] - elapsed[1]) / (settings.rounds - 1)
    median = statistics.median(elapsed[r] - elapsed[r - 1] for r in range(2, settings.rounds + 1))
    return wall, median, memory.peak, sum(attack) / len(attack) if attack else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mnist")
    parser.add_argument("--aggregation", default="nnm+cm")
    parser.add_argument("--honest", type=int, default=12, help="honest nodes (n = honest + f)")
    parser.add_argument("--fs", default="3", help="comma-separated numbers of Byzantine nodes")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--attacks", default="none", help="comma-separated; the first is the baseline of the ratios")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other run-config keys")
    parser.add_argument("--generated-data", action="store_true",
                        help="cifar10: time on generated images (10,000 train) instead of a local copy")
    args = parser.parse_args()
    base = {"task": args.task, "aggregation": args.aggregation, "rounds": args.rounds, "eval-every": 1,
            "eval-size": 100, **dict(item.split("=", 1) for item in args.set)}
    attacks, fs = args.attacks.split(","), [int(f) for f in args.fs.split(",")]

    with tempfile.TemporaryDirectory() as tmp, FlowerLauncher(Path(tmp) / "home") as launcher:
        if args.generated_data:
            base["data-dir"] = str(generated_cifar(Path(tmp) / "data"))
        runs = {(f, attack): wall_per_round(launcher, {**base, "attack": attack, "num-byzantine": f},
                                            args.honest + f, tmp) for f in fs for attack in attacks}
        settings = RunSettings.from_run_config({**base, "attack": attacks[0], "num-byzantine": fs[0]})
        compute = compute_per_round(settings, args.honest + fs[0])
    print(f"{args.task}{' (generated data)' if args.generated_data else ''}, {args.aggregation}, {args.honest} "
          f"honest nodes, CPU, torch threads {torch.get_num_threads()}, {args.rounds} rounds per run")
    print(f"{'f':>3}  {'attack':<10}{'wall/round':>12}{'x ' + attacks[0]:>10}{'median':>10}{'x ' + attacks[0]:>10}"
          f"{'peak PSS':>12}{'attack node':>13}")
    for (f, attack), (wall, median, peak, node) in runs.items():
        base_wall, base_median = runs[f, attacks[0]][:2]
        print(f"{f:>3}  {attack:<10}{wall * 1000:>9.0f} ms{wall / base_wall:>10.2f}{median * 1000:>7.0f} ms"
              f"{median / base_median:>10.2f}{peak / 2**20:>8.0f} MiB{node * 1000:>10.0f} ms")
    wall = runs[fs[0], attacks[0]][0]
    print(f"\nf={fs[0]}, {attacks[0]}: compute {compute * 1000:.0f} ms per round (honest steps over {os.cpu_count()} "
          f"cores + aggregation, no Flower), framework overhead {(wall - compute) * 1000:.0f} ms = "
          f"{(wall - compute) / compute:.2f} x compute")


if __name__ == "__main__":
    main()
