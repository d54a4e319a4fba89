"""Robust D-SGD of one :class:`~flwr_byz.settings.RunSettings` in this process, round by round.

The maths of the Flower path (``simulations/paper``: the honest ClientApp, the Byzantine
ClientApp, ``OmniscientAdversary`` around ``RobustStrategy``), without the messages:

* honest node ``i`` runs :func:`~flwr_byz.tasks.worker_step` and sends ``theta - gamma_t m_i``;
  the server reads ``g_i = (theta - theta_i) / gamma_t`` (:class:`HonestWorkers`);
* the Byzantine leader (partition ``h``) computes the attack from the valid honest ``g_i``
  with the context a Byzantine node builds (seeded generator, JUMP's honest-loss oracle,
  the flipped-label gradient for LF); every Byzantine node sends its vector the same way;
* the replies reach the rule in the adversary's seeded shuffle (``random.Random(seed)``,
  one shuffle of ``h + f`` per round), and :func:`~flwr_byz.aggregation.update.robust_update`
  moves the model; integer buffers take the replies' median.

Planning adversaries (``jump-tau > 1``, ``solve-p``) need this process's view of the whole
state: :mod:`flwr_byz.engine.planning`.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flwr_byz.aggregation.update import RobustUpdate, finite_rows, robust_update, rule_after
from flwr_byz.attacks import Attack
from flwr_byz.dsgd import attack_context, attack_rows, buffer_median, pseudo_gradient, reply_order
from flwr_byz.settings import RunSettings
from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import flip_labels, stepped, worker_step
from flwr_byz.node_data import TrustedUpdate, honest_loss_oracle, honest_partitions
from flwr_byz.engine.honest import HonestReplies, HonestWorkers

logger = logging.getLogger("flwr_byz.engine")
Planned = Callable[[Tensor], tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Round:
    """Round ``t`` as it happened: the flat model before it, the honest pseudo-gradients the server read,
    the Byzantine vector (``None``: silent), the server step ``gamma_t * server_lr``, the update and
    the round's metrics (honest ``train-loss``, ``robust-*``, the attack's, ``attack-seconds``)."""

    round: int
    params: Tensor
    honest: Tensor
    attack: Tensor | None
    lr: float
    update: RobustUpdate
    metrics: dict[str, float] = field(default_factory=dict)


class Simulation:
    """``nodes`` nodes of ``settings`` (the last ``num-byzantine`` Byzantine) on ``device`` (default: CUDA if
    available). :meth:`step` runs the next round; ``state`` is the global model. ``attack`` replaces the
    settings' attack (its own instance on every node if it is not ``shared``)."""

    def __init__(self, settings: RunSettings, nodes: int, device: torch.device | str | None = None,
                 attack: Attack | None = None) -> None:
        f = settings.num_byzantine
        if settings.fraction_train < 1:
            raise ValueError(f"fraction-train={settings.fraction_train:g} samples nodes each round, which only the "
                             "Flower path does: run it with --executor flower (or fraction-train=1)")
        if not 0 <= f < nodes:
            raise ValueError(f"num-byzantine={f} needs 0 <= f < nodes={nodes}")
        settings.check_nodes(nodes)  # as RobustStrategy does for the n nodes it sends to, and its silent ones
        self.rule = settings.aggregator()
        self.settings, self.n, self.f, self.h = settings, nodes, f, nodes - f
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        task, x, y, parts = honest_partitions(settings, self.h)
        shards = [(x[torch.as_tensor(p)].to(self.device), y[torch.as_tensor(p)].to(self.device)) for p in parts]
        torch.manual_seed(settings.seed)
        model = task.build_model().to(self.device)
        self.task, self.model = task, model
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.layout = FlatLayout.of(self.state)
        self.workers = HonestWorkers(task, shards, settings.worker(), settings.seed, model)
        self.momenta: Tensor | None = None
        self.round = 0
        self.shuffler = random.Random(settings.seed)  # OmniscientAdversary's reply order
        self.attacks: list[Attack] = []
        if f and (attack is not None or (settings.attack != "none" and not settings.planning)):
            make = (lambda: copy.deepcopy(attack)) if attack is not None else settings.make_attack
            first = make()
            self.attacks = [first] if first.shared else [first] + [make() for _ in range(f - 1)]
        self.flipped_momenta: list[Tensor | None] = [None] * f
        self.trusted = TrustedUpdate(settings, self.device) if self.rule.needs_reference else None

    def state_dict(self) -> dict[str, object]:
        """Everything the next rounds depend on (data batches, augmentations and attack generators are
        seeded by round): round, global model, honest momenta, the reply shuffler's position, the
        attacks' state, LF's momenta and the server's root-set momentum. :meth:`load_state_dict` resumes bit
        for bit."""
        return {"round": self.round, "state": self.state, "momenta": self.momenta,
                "shuffler": self.shuffler.getstate(), "attacks": [a.state_dict() for a in self.attacks],
                "flipped_momenta": self.flipped_momenta,
                **({"trusted": self.trusted.momentum} if self.trusted is not None else {})}

    def load_state_dict(self, saved: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` returned (of a simulation of the same settings)."""
        attacks = saved["attacks"]
        assert isinstance(attacks, list)
        if len(attacks) != len(self.attacks):
            raise ValueError(f"saved state has {len(attacks)} attack states, this simulation {len(self.attacks)}")
        self.round, self.state, self.momenta = saved["round"], saved["state"], saved["momenta"]  # type: ignore[assignment]
        self.shuffler.setstate(saved["shuffler"])  # type: ignore[arg-type]
        for attack, state in zip(self.attacks, attacks, strict=True):
            attack.load_state_dict(state)
        self.flipped_momenta = saved["flipped_momenta"]  # type: ignore[assignment]
        if self.trusted is not None:
            self.trusted.momentum = saved["trusted"]  # type: ignore[assignment]

    @property
    def theta(self) -> Tensor:
        """The global model as a flat vector."""
        return self.layout.flatten(self.state)

    def step(self, planned: Planned | None = None) -> Round:
        """Run the next round; ``planned`` (valid honest vectors ``(h', d)`` -> ``((d,) vector, metrics)``)
        replaces the configured attack (planning adversaries)."""
        t, s = self.round + 1, self.settings
        gamma = s.lr_at(t)
        theta = self.theta
        reference = None if self.trusted is None else pseudo_gradient(  # FLTrust's g0, from the model of the round
            theta, self.trusted(self.state, t, gamma), self.layout, gamma)
        honest = self.workers.step(self.state, self.momenta, t, gamma)
        self.momenta = honest.momenta
        order = reply_order(self.shuffler, self.h + self.f)
        valid = finite_rows(honest.wire)
        metrics: dict[str, float] = {}
        attack = None
        if self.f and (planned is not None or self.attacks) and bool(valid.any()):
            attack, metrics = self._attack(t, theta, honest.wire[valid], valid, order, gamma, planned, reference)
        replies = list(honest.wire.unbind(0)) + ([] if attack is None else list(attack.unbind(0)))
        arrived = [i for i in order if i < len(replies)]
        update = robust_update(theta, torch.stack([replies[i] for i in arrived]), s.server_lr * gamma,
                               lambda excluded: rule_after(self.rule, excluded, s.aggregation_kwargs, t).with_reference(
                                   reference))
        if update.theta is not None:
            self._move(update, honest, arrived)
        else:
            logger.warning("Round %d: keeping the old model: %s", t, update.reason)
        if self.f and attack is None and self.settings.attack != "none":
            logger.warning("Round %d: Byzantine nodes silent (no valid honest vector to attack)", t)
        rows = [i for i, good in enumerate(valid.tolist()) if good]
        train = _weighted_mean([honest.losses[i] for i in rows], [honest.sizes[i] for i in rows])
        metrics = {**({"train-loss": train} if rows else {}), "robust-excluded": update.excluded,
                   "robust-received": int(update.finite.sum()), **metrics}
        self.round = t
        return Round(t, theta, honest.wire, attack, s.server_lr * gamma, update, metrics)

    def _move(self, update: RobustUpdate, honest: HonestReplies, order: list[int]) -> None:
        """The new global state: the updated flat model; integer buffers the median of the valid replies'
        (a Byzantine reply carries the global model's)."""
        assert update.theta is not None
        kept = [i for i, good in zip(order, update.finite.tolist()) if good]
        replies = [honest.buffers[i] if i < self.h else self.state for i in kept]
        self.state = self.state | self.layout.unflatten(update.theta) | buffer_median(self.state, replies)

    def _attack(self, t: int, theta: Tensor, honest: Tensor, valid: Tensor, order: list[int], gamma: float,
                planned: Planned | None, reference: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """The pseudo-gradients ``(f, d)`` the server reads from the Byzantine replies, and the leader's metrics."""
        start = time.perf_counter()
        ctx_order = attack_rows(order, valid.tolist())
        if planned is not None:  # its metrics carry its own attack-seconds (planning time)
            vector, metrics = planned(honest)
            vectors = vector.expand(self.f, -1)
        else:  # a shared attack runs on the leader only; attack-seconds is the leader's own time, as in Flower
            first = self._node_attack(0, t, theta, honest, ctx_order, gamma, reference)
            metrics = {"attack-seconds": time.perf_counter() - start, **self.attacks[0].metrics}
            vectors = torch.stack([first] + [self._node_attack(j, t, theta, honest, ctx_order, gamma, reference)
                                             for j in range(1, len(self.attacks))]).expand(self.f, -1)
        sent = torch.stack([self.layout.flatten(self.layout.unflatten(row), theta.dtype)  # the model, read back
                            for row in theta - gamma * vectors])
        return (theta - sent) / gamma, metrics

    def _node_attack(self, j: int, t: int, theta: Tensor, honest: Tensor, order: list[int], gamma: float,
                     reference: Tensor | None = None) -> Tensor:
        """Byzantine node ``h + j``'s vector, from the context its ClientApp builds (the defence scoring against
        the server's ``reference`` update where it needs one: the omniscient adversary knows it)."""
        s, attack = self.settings, self.attacks[j]
        losses = honest_loss_oracle(s, self.h, t, self.device) if attack.needs_loss else (None, None)
        ctx = attack_context(self.rule.with_reference(reference), t, len(honest) + self.f, self.f, gamma * s.server_lr, theta, order, s.seed,
                             self.h + j, *losses, self._flipped(j, t, theta, gamma) if attack.needs_flipped else None)
        return attack(honest, ctx)

    def _flipped(self, j: int, t: int, theta: Tensor, gamma: float) -> Tensor:
        """LF: node ``h + j``'s honest pipeline on partition ``j mod h`` with labels :func:`flip_labels`."""
        x, y = self.workers.shards[j % self.h]
        self.model.load_state_dict(self.state)
        result = worker_step(self.task, self.model, x, flip_labels(y), self.flipped_momenta[j],
                             self.settings.worker(), self.settings.seed, self.h + j, t)
        self.flipped_momenta[j] = result.momentum
        return pseudo_gradient(theta, stepped(self.model, self.state, result.momentum, gamma), self.layout, gamma)


def _weighted_mean(values: list[float], weights: list[int]) -> float:
    """Flower's ``aggregate_metricrecords``: ``sum_i v_i * (w_i / sum w)``, in that order."""
    total = sum(weights)
    return sum(v * (w / total) for v, w in zip(values, weights, strict=True))
