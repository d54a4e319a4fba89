"""Cost and damage of one JUMP step (global and Powell solvers) against SF, on MNIST-sized softmax regression.

Data are random (784 features in [0, 1], labels from a random linear teacher),
sharded by label over the honest workers. The model is first trained for
``--warm`` honest D-SGD steps; then, at that model, we time one *attack step*:

    attack(honest, ctx)  +  one aggregation of the n vectors  +  one honest-loss evaluation

i.e. what a training step costs besides the honest gradients (for SF the
attack itself is free, so its step is one aggregation plus one loss
evaluation). Reported: median milliseconds per step, the ratio to SF's step,
the lambdas JUMP scored, and the damage: the honest loss ``L_H`` (on
``--samples`` points) after the step.

    python benchmarks/bench_jump.py [--aggregators nnm+cm nnm+gm] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import AttackContext, get_attack

FEATURES, CLASSES = 784, 10


def make_data(m: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``m`` random images in ``[0, 1]^784`` labelled by a random linear teacher."""
    x = torch.rand(m, FEATURES, generator=gen)
    teacher = torch.randn(FEATURES, CLASSES, generator=gen)
    return x, (x @ teacher).argmax(1)


def split(theta: Tensor) -> tuple[Tensor, Tensor]:
    """``(k, 7850)`` flat parameters -> weights ``(k, 784, 10)`` and biases ``(k, 10)``."""
    return theta[:, : FEATURES * CLASSES].reshape(-1, FEATURES, CLASSES), theta[:, FEATURES * CLASSES :]


def batched_loss(x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """Mean cross-entropy on ``(x, y)`` of each of ``k`` parameter vectors: ``(k, d) -> (k,)``."""

    def loss(theta: Tensor) -> Tensor:
        w, b = split(theta)
        logits = torch.einsum("mp,kpc->kmc", x, w) + b[:, None, :]
        return torch.logsumexp(logits, -1).mean(1) - logits.gather(2, y.expand(len(theta), -1)[..., None]).mean((1, 2))

    return loss


def gradient(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Flat gradient of the mean cross-entropy of one model on a batch: ``X^T (softmax - onehot) / b``."""
    w, b = split(theta[None])
    err = torch.softmax(x @ w[0] + b[0], -1)
    err[torch.arange(len(y)), y] -= 1
    return torch.cat([(x.T @ err).reshape(-1), err.sum(0)]) / len(y)


def honest_vectors(theta: Tensor, shards: list[tuple[Tensor, Tensor]], batch: int, gen: torch.Generator) -> Tensor:
    """One mini-batch gradient per honest worker, from its own shard: ``(h, d)``."""
    rows = []
    for xs, ys in shards:
        idx = torch.randint(len(ys), (batch,), generator=gen)
        rows.append(gradient(theta, xs[idx], ys[idx]))
    return torch.stack(rows)


def timed(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Median wall time in ms of ``fn()`` over ``repeats`` runs, and its last result."""
    times, out = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aggregators", nargs="+", default=["nnm+cm", "nnm+gm"])
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--f", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1024, help="points in the honest-loss sample")
    ap.add_argument("--train", type=int, default=12000, help="training points, sharded over honest workers")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--warm", type=int, default=20, help="honest D-SGD steps (mean rule) before measuring")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(args.seed)
    x, y = make_data(args.train + args.samples, gen)
    loss = batched_loss(x[: args.samples], y[: args.samples])
    order = torch.argsort(y[args.samples :]) + args.samples  # label-sorted shards: heterogeneous workers
    shards = [(x[part], y[part]) for part in order.chunk(args.n - args.f)]
    theta = torch.zeros(FEATURES * CLASSES + CLASSES)
    for _ in range(args.warm):
        theta = theta - args.lr * honest_vectors(theta, shards, args.batch, gen).mean(0)
    honest = honest_vectors(theta, shards, args.batch, gen)

    print(f"d = {theta.numel()}, n = {args.n}, f = {args.f}, loss sample = {args.samples}, "
          f"threads = {torch.get_num_threads()}, L_H(theta) = {float(loss(theta[None])[0]):.4f}")
    header = f"{'aggregator':<10} {'attack':<13} {'ms/step':>9} {'x SF':>7} {'evals':>6} {'lambda':>10} {'L_H after':>10}"
    print(header)
    print("-" * len(header))
    for spec in args.aggregators:
        agg = get_aggregator(spec, f=args.f)
        ctx = AttackContext(n=args.n, f=args.f, aggregator=agg, lr=args.lr, params=theta, honest_loss=loss)
        sf_ms = None
        for label, name, params in [("sf", "sf", {}), ("jump-global", "jump", {}), ("jump-powell", "jump", {"solver": "powell"})]:
            attack = get_attack(name, **params)

            def step() -> float:
                a = attack(honest, ctx)
                new = theta - args.lr * agg(torch.cat([honest, a.expand(args.f, -1)]))
                return float(loss(new[None])[0])

            ms, after = timed(step, args.repeats)
            sf_ms = sf_ms or ms
            evals = int(attack.metrics.get("jump-evals", 0))
            lam = attack.metrics.get("jump-lambda", float("nan"))
            print(f"{spec:<10} {label:<13} {ms:9.1f} {ms / sf_ms:7.1f} {evals:6d} {lam:10.4g} {after:10.4f}")


if __name__ == "__main__":
    main()
