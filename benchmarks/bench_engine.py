"""The in-process engine per training step: against the pure compute floor and against `flwr run`; JUMP-tau's cost.

    python benchmarks/bench_engine.py [--tasks mnist-logreg,mnist] [--rounds 12] [--taus 1,4,16,32] [--tau-rounds 32]

1. Per task (n = 15, f = 3, NNM+CM, SF, the paper app's settings), all in one run:
   * floor: the round's compute alone, in this process: the honest steps exactly as the engine
     runs them (one vmap for dropout-free models, ``worker_step`` node after node otherwise),
     SF's vector and one aggregation, no bookkeeping;
   * engine: ``Simulation.step`` (honest steps, the read-back pseudo-gradients, the attack, the
     adversary's reply order, ``robust_update``, metrics), evaluation left out;
   * flower: ``flwr run simulations/paper`` with the same settings, from the results file's
     ``elapsed`` (rounds 2..R, evaluating 100 test images a round), as ``bench_flower_round.py``.
   Mean seconds per step over rounds 2..R; ratios engine / floor (goal <= 1.3) and flower / engine.
2. JUMP-tau (mnist-logreg, NNM+CM, default solver): seconds per round over all ``--tau-rounds`` rounds
   (whole segments, planning included; ``--tau-rounds`` a multiple of every tau) as a ratio to SF's round
   measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flower_round import wall_per_round  # noqa: E402

from flwr_byz.settings import RunSettings  # noqa: E402
from flwr_byz.engine import Simulation  # noqa: E402
from flwr_byz.engine.planning import planner  # noqa: E402
from flwr_byz.runs.launcher import FlowerLauncher  # noqa: E402

NODES = 15


def floor_per_step(settings: RunSettings, rounds: int) -> float:
    """The compute of a round alone: honest steps as the engine runs them, SF, one aggregation."""
    sim = Simulation(settings, NODES, "cpu")
    rule, times, momenta = settings.aggregator(), [], None
    for t in range(1, rounds + 1):
        start = time.perf_counter()
        honest = sim.workers.step(sim.state, momenta, t, settings.lr_at(t))
        momenta = honest.momenta
        attack = -honest.wire.mean(0)
        rule(torch.cat([honest.wire, attack.expand(settings.num_byzantine, -1)]))
        times.append(time.perf_counter() - start)
    return statistics.mean(times[1:])


def engine_per_step(settings: RunSettings, rounds: int, warm: int = 1) -> float:
    """``Simulation.step`` (or the planner's step, planning included) per round, rounds ``warm + 1..R``."""
    sim = Simulation(settings, NODES, "cpu")
    stepper = planner(settings, sim)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        stepper.step()
        times.append(time.perf_counter() - start)
    return statistics.mean(times[warm:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mnist-logreg,mnist")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--taus", default="1,4,16,32")
    parser.add_argument("--tau-rounds", type=int, default=32)
    parser.add_argument("--no-flower", action="store_true", help="skip the `flwr run` column")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FlowerLauncher(Path(tmp) / "home") as launcher:
        for task in args.tasks.split(","):
            settings = RunSettings(task=task, aggregation="nnm+cm", attack="sf", num_byzantine=3, rounds=args.rounds,
                                   eval_every=1, eval_size=100)
            floor, engine = floor_per_step(settings, args.rounds), engine_per_step(settings, args.rounds)
            flower = None if args.no_flower else wall_per_round(launcher, settings.to_run_config(), NODES, tmp)[0]
            rows.append((task, floor, engine, flower))
    print(f"n = {NODES}, f = 3, nnm+cm, SF, CPU, torch threads {torch.get_num_threads()}, {args.rounds} rounds")
    print(f"{'task':<14}{'floor':>10}{'engine':>10}{'flower':>10}{'engine/floor':>14}{'flower/engine':>15}")
    for task, floor, engine, flower in rows:
        fl = f"{flower * 1000:>7.0f} ms" if flower else f"{'-':>10}"
        ratio = f"{flower / engine:>15.1f}" if flower else f"{'-':>15}"
        print(f"{task:<14}{floor * 1000:>7.1f} ms{engine * 1000:>7.1f} ms{fl}{engine / floor:>14.2f}{ratio}")

    base = RunSettings(task="mnist-logreg", aggregation="nnm+cm", num_byzantine=3, rounds=args.tau_rounds)
    sf = engine_per_step(dataclasses.replace(base, attack="sf"), args.tau_rounds, warm=0)
    print(f"\nJUMP-tau on mnist-logreg, nnm+cm, {args.tau_rounds} rounds: seconds per round, ratio to SF "
          f"({sf * 1000:.1f} ms per round)")
    print(f"{'tau':>5}{'s/round':>10}{'x SF':>9}")
    for tau in (int(t) for t in args.taus.split(",")):
        seconds = engine_per_step(dataclasses.replace(base, attack="jump", jump_tau=tau), args.tau_rounds, warm=0)
        print(f"{tau:>5}{seconds:>10.3f}{seconds / sf:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
