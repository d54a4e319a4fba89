"""JUMP's honest loss from the honest nodes' own evaluate handlers (a user's app wrapped with
``flwr_byz.flower.byzantine``): the oracle when the adversary has the user's code, not their data."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from torch import Tensor

from flwr_byz.flower.protocol import MAX_SCORE_CANDIDATES, ScoreReply, ScoreRequest


class EvaluateOracle:
    """``L_H(theta_1..k) = sum_i w_i l_i(theta_j) / sum_i w_i`` over the honest nodes ``i``.

    ``l_i`` is node ``i``'s evaluate handler's ``loss_key`` metric on its own data, ``w_i`` its
    ``weight_key`` metric (``num-examples``). One call scores ``k`` flat candidates ``(k, d)`` (the
    floating entries of ``model``) with one :class:`~flwr_byz.flower.protocol.ScoreRequest` per node, all
    ``k`` in it: ``h`` messages of ``k d`` numbers and ``k h`` evaluate passes. ``loss_key=None``
    picks the one metric whose name contains ``loss``. ``calls`` and ``seconds`` add up the calls.
    """

    def __init__(self, grid: Grid, nodes: list[int], model: ArrayRecord, names: tuple[str, str],
                 config: ConfigRecord, loss_key: str | None, weight_key: str, timeout: float = 3600) -> None:
        self.grid, self.nodes, self.model, self.names, self.config = grid, nodes, model, names, config
        self.loss_key, self.weight_key, self.timeout = loss_key, weight_key, timeout
        self.calls, self.seconds = 0, 0.0

    def __call__(self, flat: Tensor) -> Tensor:
        """``L_H`` of each row of ``flat (k, d)``, in requests of at most ``MAX_SCORE_CANDIDATES`` models."""
        return torch.cat([self._score(chunk) for chunk in flat.split(MAX_SCORE_CANDIDATES)])

    def _score(self, flat: Tensor) -> Tensor:
        start = time.perf_counter()
        request = ScoreRequest(self.model, flat, self.config, self.names)
        replies = {r.metadata.src_node_id: r
                   for r in self.grid.send_and_receive([request.to_message(node) for node in self.nodes],
                                                       timeout=self.timeout)}
        missing = [node for node in self.nodes if node not in replies]
        if missing:
            raise RuntimeError(f"honest node(s) {missing} did not answer JUMP's score request")
        scores = [ScoreReply.from_reply(replies[node]).metrics for node in self.nodes]
        key = self.resolve(scores[0])
        for node, metrics in zip(self.nodes, scores, strict=True):
            if key not in metrics or self.weight_key not in metrics:
                raise ValueError(f"node {node}'s evaluate handler reported {sorted(metrics)}: JUMP needs {key!r} "
                                 f"and the weight {self.weight_key!r}")
        losses = torch.tensor([m[key] for m in scores], dtype=torch.float64)  # (h, k)
        weights = torch.tensor([m[self.weight_key] for m in scores], dtype=torch.float64)
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return ((weights * losses).sum(0) / weights.sum(0)).to(flat.device)

    def resolve(self, metrics: dict[str, list[float]]) -> str:
        """The loss metric's name: ``loss_key``, else the one name containing ``loss``."""
        if self.loss_key is not None:
            if self.loss_key not in metrics:
                raise ValueError(f"JUMP scores with the evaluate metric {self.loss_key!r}, but your evaluate handler "
                                 f"reports {sorted(metrics)}: pass OmniscientAdversary(..., loss_key=<one of them>)")
            return self.loss_key
        found = [key for key in metrics if "loss" in key.lower()]
        if len(found) != 1:
            raise ValueError(f"JUMP needs your evaluate handler's loss, and its metrics {sorted(metrics)} hold "
                             f"{len(found)} names with 'loss': pass OmniscientAdversary(..., loss_key=...)")
        return found[0]
