"""Robust D-SGD as a drop-in Flower strategy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from torch import Tensor

from flwr_byz.aggregation import Aggregation, get_aggregator
from flwr_byz.aggregation.update import robust_update, rule_after
from flwr_byz.dsgd import buffer_median
from flwr_byz.flat import FlatLayout
from flwr_byz.flower.records import to_record, to_tensors
from flwr_byz.flower.screening import screen_replies
from flwr_byz.seeds import seeded_generator


class RobustStrategy(FedAvg):
    """FedAvg with the average replaced by a robust aggregation of pseudo-gradients.

    Each round, with global model ``theta`` and the client step ``gamma_t`` sent in
    the train config under ``lr_key`` (1 if absent), reply ``theta_i`` becomes
    ``g_i = (theta - theta_i) / gamma_t`` and the model moves to

        ``theta <- theta - server_lr * gamma_t * F(g_1, ..., g_n)``

    with ``F = get_aggregator(aggregation, f, **aggregation_params)``.
    Floating arrays form the flat vector ``theta``; integer arrays (BatchNorm's
    ``num_batches_tracked``) take the element-wise median of the replies.

    Replies with errors, missing or extra arrays, wrong shapes or dtypes,
    non-finite values, pseudo-gradients that overflow the model's dtype or malformed
    metrics are excluded, logged with their node id and presumed Byzantine: the rule
    then runs with ``f - excluded``. If too few replies remain, the round keeps the old model.
    The rule of round ``t`` is ``F.for_round(t)`` (bucketing draws its buckets from
    ``(seed, t)``, so an omniscient adversary can know them).

    Parameters beyond FedAvg's: ``aggregation`` (spec, e.g. ``"nnm+cm"``),
    ``f`` (the number of Byzantine replies the rule withstands), ``server_lr`` (eta_s),
    ``lr_key``, ``lr_schedule`` (round -> gamma_t, written into the train config each round)
    and ``aggregation_params`` (e.g. ``{"nu": 0.1}`` for GM). ``sampling_seed``: FedAvg samples
    ``max(fraction_train * N, min_train_nodes)`` of the ``N`` connected nodes with Python's global
    ``random``; with a seed the sample of round ``t`` is a pure function of ``(sampling_seed, t)`` over
    the nodes sorted by ``node_key`` (default: node id; Flower draws new node ids for every run, so a
    reproducible sample needs a key of its own, e.g. the partition id the adversary learns).
    ``root_train`` (required by rules that score replies against the server's own update, FLTrust):
    ``(arrays, config) -> ArrayRecord``, the global model after the server's training step on its root data
    with this round's train config (e.g. the app's own train function on ~100 held-out examples); its
    pseudo-gradient ``g_0 = (theta - theta_0) / gamma_t`` is :attr:`reference` for the round.
    """

    def __init__(
        self,
        aggregation: str = "nnm+cm",
        f: int = 0,
        server_lr: float = 1.0,
        lr_key: str = "lr",
        lr_schedule: Callable[[int], float] | None = None,
        aggregation_params: dict[str, Any] | None = None,
        sampling_seed: int | None = None,
        node_key: Callable[[int], Any] | None = None,
        root_train: Callable[[ArrayRecord, ConfigRecord], ArrayRecord] | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        self.sampling_seed, self.node_key = sampling_seed, node_key
        self.aggregation_params = dict(aggregation_params or {})
        self.aggregator = get_aggregator(aggregation, f, **self.aggregation_params)
        if self.aggregator.needs_reference and root_train is None:
            raise ValueError(f"{aggregation!r} scores the replies against the server's own update: pass "
                             "root_train=callable(arrays, config) -> ArrayRecord, the model after one training step "
                             "on the server's root data (e.g. the app's train function on ~100 held-out examples)")
        self.root_train = root_train
        self.reference: Tensor | None = None  # this round's g0 (rules that need one)
        if not server_lr > 0:
            raise ValueError(f"server_lr must be positive, got {server_lr}")
        self.f = f
        self.server_lr = server_lr
        self.lr_key = lr_key
        self.lr_schedule = lr_schedule
        self._arrays: ArrayRecord | None = None
        self._gamma = 1.0

    def summary(self) -> None:
        log(INFO, "\t├──> Robust aggregation: %s, f=%d, server lr %s", self.aggregator.spec,
            self.f, self.server_lr)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.lr_schedule is not None:
            config[self.lr_key] = float(self.lr_schedule(server_round))
        gamma = float(config.get(self.lr_key, 1.0))
        if not gamma > 0:
            raise ValueError(f"client step {self.lr_key}={gamma} must be positive")
        if self.sampling_seed is None or self.fraction_train == 0.0:
            messages = list(super().configure_train(server_round, arrays, config, grid))
        else:
            messages = self._seeded_train(server_round, arrays, config, grid)
        self.aggregator.check(len(messages))
        self._arrays, self._gamma = arrays, gamma
        if self.root_train is not None and self.aggregator.needs_reference:
            trained = to_tensors(self.root_train(arrays, ConfigRecord(dict(config))))
            self.reference = pseudo_gradients(to_tensors(arrays), [trained], gamma)[1][0]
        return messages

    def _seeded_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """FedAvg's ``configure_train`` with the sample drawn from ``(sampling_seed, server_round)``."""
        size = max(int(len(list(grid.get_node_ids())) * self.fraction_train), self.min_train_nodes)
        _, connected = sample_nodes(grid, max(self.min_available_nodes, size), 0)  # waits for the nodes, draws none
        ordered = sorted(connected, key=self.node_key or int)
        draw = torch.randperm(len(ordered), generator=seeded_generator(self.sampling_seed, server_round, "sampling"))
        nodes = [ordered[i] for i in sorted(draw[:size].tolist())]
        log(INFO, "configure_train: Sampled %s nodes (out of %s)", len(nodes), len(connected))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, nodes, MessageType.TRAIN))

    def aggregator_for(self, excluded: int, server_round: int = 0) -> Aggregation:
        """The defended rule of ``server_round`` after ``excluded`` replies were dropped as Byzantine (scoring
        against :attr:`reference` where the rule needs one)."""
        return rule_after(self.aggregator, excluded, self.aggregation_params, server_round).with_reference(
            self.reference)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._arrays is None:
            raise RuntimeError("aggregate_train called before configure_train")
        replies = list(replies)
        self._check_and_log_replies(replies, is_train=True, validate=False)  # FedAvg's log lines; we screen below
        screened = screen_replies(replies, self._arrays, self.weighted_by_key)
        reference = to_tensors(self._arrays)
        states = [to_tensors(next(iter(r.content.array_records.values()))) for r in screened.valid]
        theta, grads, layout = pseudo_gradients(reference, states, self._gamma)
        update = robust_update(theta, grads, self.server_lr * self._gamma,
                               lambda excluded: self.aggregator_for(excluded, server_round), len(screened.excluded))
        ok = update.finite.tolist()
        valid = [(reply, state) for reply, state, good in zip(screened.valid, states, ok) if good]
        excluded = screened.excluded + [
            (reply.metadata.src_node_id, f"pseudo-gradient (theta - theta_i) / {self._gamma:g} overflows {grads.dtype}")
            for reply, good in zip(screened.valid, ok) if not good
        ]
        for node_id, reason in excluded:
            log(WARNING, "Round %d: excluded reply of node %d: %s", server_round, node_id, reason)
        summary = MetricRecord({"robust-excluded": len(excluded), "robust-received": len(valid)})
        if update.theta is None:
            log(WARNING, "Round %d: keeping the old model: %s", server_round, update.reason)
            return None, summary
        new = reference | layout.unflatten(update.theta) | buffer_median(reference, [state for _, state in valid])
        metrics = self.train_metrics_aggr_fn([reply.content for reply, _ in valid], self.weighted_by_key)
        metrics.update(summary)
        return to_record(new), metrics


def pseudo_gradients(
    reference: dict[str, Tensor], replies: list[dict[str, Tensor]], gamma: float
) -> tuple[Tensor, Tensor, FlatLayout]:
    """Flat global model ``theta`` (d,), pseudo-gradients ``(theta - theta_i) / gamma`` (n, d)
    and the layout of the floating entries of ``reference``."""
    layout = FlatLayout.of(reference)
    theta = layout.flatten(reference)
    stacked = torch.stack([layout.flatten(reply, dtype=theta.dtype) for reply in replies]) if replies else \
        theta.new_empty(0, len(theta))
    return theta, (theta - stacked) / gamma, layout
