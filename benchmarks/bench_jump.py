"""Wall time and damage of JUMP (global and Powell solvers) against SF, per Robust D-SGD training step.

The paper's efficiency setting (Appendix A, Table 3): MNIST softmax regression
(d = 7850), 12 honest workers + f = 3 Byzantine, label-Dirichlet heterogeneity
``alpha``, batch 32, clipping 2, local momentum 0.9, lr 0.7. For each seed every
run starts from the same model and partition and makes ``--steps`` full steps:

    12 honest worker steps (``worker_step``)  +  the attack  +  one aggregation  +  the server update

The attack sees the Flower path's ``L_H`` oracle (``flwr_byz.tasks.honest_losses``) on fresh
training points every step, drawn evenly from the honest partitions: each ``--samples``
entry ``SIZE[:SCREEN]`` scores every candidate on ``SCREEN`` of them and rescores the 2 best
on all ``SIZE`` (``SCREEN`` 0 or absent: every candidate on ``SIZE``); ``default`` is the
task's ``jump_sample``. Each seed runs SF before and after its JUMP runs, and SF's time is the mean of the two
(a drift of the machine's speed cancels). Reported per aggregator and attack, averaged over the seeds: the median
ms of a step and its ratio to SF's; the median ms of the server side (attack +
aggregation) and its ratio to SF's (the attack-only ratio); the lambdas scored
and the honest losses evaluated per step (distinct aggregates); and the damage:
the honest loss on a fixed probe of 4096 honest points averaged over the steps
and after the last one, the test accuracy after the last step and the best one
along the run (the paper's metric; lower accuracy = more damage). Damage after
a few dozen steps swings widely between seeds (a well-timed jump can double the
loss), hence several seeds.

    python benchmarks/bench_jump.py [--aggregators nnm+cm nnm+gm] [--steps 40] [--samples default 1024 256]
                                    [--seeds 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import AttackContext, get_attack
from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import (
    LossSampling, Task, WorkerConfig, get_task, honest_losses, partition, seeded_generator, worker_step,
)


@dataclass(frozen=True)
class Setting:
    """Data, model and hyper-parameters shared by every run."""

    task: Task
    x: Tensor
    y: Tensor
    parts: list[np.ndarray]  # the honest partitions' indices into (x, y)
    probe: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    cfg: WorkerConfig
    lr: float
    f: int
    seed: int

    @cached_property
    def shards(self) -> list[tuple[Tensor, Tensor]]:
        """Each honest worker's ``(x, y)``."""
        return [(self.x[p], self.y[p]) for p in self.parts]


@dataclass(frozen=True)
class Result:
    """Median step and server-side times (ms), mean lambdas and losses scored per step, and the damage:
    ``L_H`` (on the probe) averaged over the steps and after the last one, final and best test accuracy."""

    step_ms: float
    server_ms: float
    parts: dict[str, float]  # median ms per step: the attack and its setup / aggregate / loss shares
    evals: float
    losses: float
    mean_loss: float
    loss: float
    accuracy: float
    best_accuracy: float


PARTS = ("attack", "setup", "aggregate", "loss")


def sampling(task: Task, text: str) -> LossSampling:
    """``default`` (the task's ``jump_sample``), ``SIZE`` or ``SIZE:SCREEN``."""
    if text == "default":
        return LossSampling(*task.jump_sample)
    size, _, screen = text.partition(":")
    return LossSampling(int(size), int(screen or 0))


def run(s: Setting, spec: str, attack_name: str, params: dict[str, object], samples: LossSampling | None,
        steps: int) -> Result:
    """``steps`` Robust D-SGD steps from the seeded initial model under one attack."""
    torch.manual_seed(s.seed)
    model = s.task.build_model()
    layout = FlatLayout.of(model.state_dict())
    theta = layout.flatten(model.state_dict())
    agg, attack = get_aggregator(spec, f=s.f), get_attack(attack_name, **params)
    h = len(s.shards)
    momenta: list[Tensor | None] = [None] * h
    step_ms, server_ms, evals, losses, curve, accuracy = [], [], [], [], [], []
    parts: dict[str, list[float]] = {part: [] for part in PARTS}
    for t in range(1, steps + 1):
        start = time.perf_counter()
        model.load_state_dict(layout.unflatten(theta))
        for i, (x, y) in enumerate(s.shards):
            momenta[i] = worker_step(s.task, model, x, y, momenta[i], s.cfg, s.seed, i, t).momentum
        honest = torch.stack(momenta)  # type: ignore[arg-type]
        server = time.perf_counter()
        loss, screening = honest_losses(s.task, s.x, s.y, s.parts, samples, s.seed, t) if samples else (None, None)
        ctx = AttackContext(n=h + s.f, f=s.f, aggregator=agg, lr=s.lr, params=theta, honest_loss=loss,
                            screening_loss=screening)
        a = attack(honest, ctx)
        parts["attack"].append(1e3 * (time.perf_counter() - server))
        for part in PARTS[1:]:
            parts[part].append(1e3 * attack.metrics.get(f"jump-{part}-seconds", 0.0))
        theta = theta - s.lr * agg(torch.cat([honest, a.expand(s.f, -1)]))
        end = time.perf_counter()
        step_ms.append(1e3 * (end - start))
        server_ms.append(1e3 * (end - server))
        evals.append(attack.metrics.get("jump-evals", 0.0))
        losses.append(attack.metrics.get("jump-losses", 0.0))
        model.load_state_dict(layout.unflatten(theta))
        curve.append(s.task.evaluate(model, *s.probe, batch_size=8192)[0])
        accuracy.append(s.task.evaluate(model, *s.test, batch_size=8192)[1])
    times = statistics.median(step_ms), statistics.median(server_ms)
    work = statistics.mean(evals), statistics.mean(losses)
    shares = {part: statistics.median(values) for part, values in parts.items()}
    return Result(*times, shares, *work, statistics.mean(curve), curve[-1], accuracy[-1], max(accuracy))


def setting(task: Task, honest: int, f: int, alpha: float | None, seed: int, probe: int = 4096) -> Setting:
    """Seeded partition of the MNIST training set over the honest workers, ``probe`` of their points, the test set."""
    x, y = task.load("train")
    parts = partition(y, honest, alpha, seed, scheme="per-worker")  # the paper app's default
    union = torch.as_tensor(np.concatenate(parts))
    picked = union[torch.randperm(len(union), generator=seeded_generator(seed, "probe"))[:probe]]
    return Setting(
        task=task,
        x=x,
        y=y,
        parts=parts,
        probe=(x[picked], y[picked]),
        test=task.load("test"),
        cfg=WorkerConfig.for_task(task),
        lr=float(task.defaults["lr"]),
        f=f,
        seed=seed,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aggregators", nargs="+", default=["nnm+cm", "nnm+gm"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--samples", nargs="+", default=["default", "1024", "256"],
                    help="JUMP's L_H samples: SIZE[:SCREEN] (screening on SCREEN examples, the best 2 on SIZE) or "
                         "default (the task's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--honest", type=int, default=12)
    ap.add_argument("--f", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.1, help="Dirichlet heterogeneity (0: IID)")
    ap.add_argument("--no-powell", action="store_true", help="skip the (slow) Powell solver")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = get_task("mnist-logreg")
    settings = [setting(task, args.honest, args.f, args.alpha or None, seed) for seed in args.seeds]
    print(
        f"mnist-logreg, h = {args.honest}, f = {args.f}, alpha = {args.alpha}, {settings[0].cfg}, "
        f"lr = {settings[0].lr}, {args.steps} steps, seeds = {args.seeds}, threads = {torch.get_num_threads()}"
    )
    columns = ("aggregator", "attack", "L_H pts", "ms/step", "x SF", "server ms", "x SF", "evals", "losses")
    damage = ("mean L_H", "last L_H", "last acc", "max acc")
    row = "{:<10} {:<12} {:>8} {:>8} {:>6} {:>9} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>7}"
    print(row.format(*columns, *damage))
    oracles = [sampling(task, samples) for samples in args.samples]
    jumps: list[tuple[str, dict[str, object], LossSampling]] = [("jump-global", {}, oracle) for oracle in oracles]
    if not args.no_powell:
        jumps.append(("jump-powell", {"solver": "powell"}, oracles[0]))
    where: dict[tuple[str, str, str], dict[str, float]] = {}
    for spec in args.aggregators:
        sf: list[Result] = []
        results: list[list[Result]] = [[] for _ in jumps]
        for s in settings:  # per seed, SF before and after the JUMP runs: its time is their mean (drift cancels)
            before = run(s, spec, "sf", {}, None, args.steps)
            for rs, (_, params, oracle) in zip(results, jumps, strict=True):
                rs.append(run(s, spec, "jump", params, oracle, args.steps))
            after = run(s, spec, "sf", {}, None, args.steps)
            sf.append(dataclasses.replace(
                before, step_ms=(before.step_ms + after.step_ms) / 2, server_ms=(before.server_ms + after.server_ms) / 2
            ))
        rows = [("sf", sf, None), *((label, rs, oracle) for rs, (label, _, oracle) in zip(results, jumps, strict=True))]
        for label, rs, oracle in rows:
            ratios = [(r.step_ms / b.step_ms, r.server_ms / b.server_ms) for r, b in zip(rs, sf, strict=True)]
            cells = [
                statistics.mean(r.step_ms for r in rs),
                statistics.mean(step for step, _ in ratios),
                statistics.mean(r.server_ms for r in rs),
                statistics.mean(server for _, server in ratios),
                statistics.mean(r.evals for r in rs),
                statistics.mean(r.losses for r in rs),
                statistics.mean(r.mean_loss for r in rs),
                statistics.mean(r.loss for r in rs),
                statistics.mean(r.accuracy for r in rs),
                statistics.mean(r.best_accuracy for r in rs),
            ]
            formats = (".1f", ".2f", ".1f", ".1f", ".1f", ".1f", ".3f", ".3f", ".3f", ".3f")
            texts = [format(c, fmt) for c, fmt in zip(cells, formats, strict=True)]
            shown = f"{oracle.size}:{oracle.screen}" if oracle else "-"
            print(row.format(spec, label, shown, *texts), flush=True)
            if oracle:
                where[(spec, label, shown)] = {p: statistics.mean(r.parts[p] for r in rs) for p in PARTS}
                where[(spec, label, shown)]["honest"] = statistics.mean(r.step_ms - r.server_ms for r in rs)
    print("\nwhere a JUMP step's time goes, ms (honest: the 12 worker steps; setup: span and breakpoints; aggregate /"
          " loss: the candidates' aggregates / honest losses; search: the rest of the attack, the oracle's draw included)")
    print(f"{'aggregator':<10} {'attack':<12} {'L_H pts':>8} {'honest':>7} {'setup':>7} {'aggregate':>9} {'loss':>7} "
          f"{'search':>7}")
    for (spec, label, shown), ms in where.items():
        search = ms["attack"] - ms["setup"] - ms["aggregate"] - ms["loss"]
        print(f"{spec:<10} {label:<12} {shown:>8} {ms['honest']:7.1f} {ms['setup']:7.1f} {ms['aggregate']:9.1f} "
              f"{ms['loss']:7.1f} {search:7.1f}")


if __name__ == "__main__":
    main()
