"""A Byzantine-capable ClientApp around a user's own ClientApp: ``app = byzantine(app)``.

Honest nodes hand every message to the user's app unchanged (train, evaluate, queries, with its
mods); the wrapper answers only the adversary protocol (``flwr_byz.flower.protocol``): the role query, the
attack requests of the Byzantine nodes (the last ``num-byzantine`` partition ids) and JUMP's score
requests, which it answers with the user's own evaluate handler. The attack comes from the run
config (:data:`RUN_CONFIG`); the server wraps its strategy in
:class:`~flwr_byz.flower.OmniscientAdversary`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from flwr_byz.attacks import ATTACKS, Attack, get_attack
from flwr_byz.settings import parse_params
from flwr_byz.flat import FlatLayout
from flwr_byz.flower.protocol import (
    ATTACK_ACTION, HONEST_ORACLE, ROLE_ACTION, SCORE_ACTION, AttackRequest, NodeRole, ScoreReply, ScoreRequest,
    retyped,
)
from flwr_byz.flower.records import to_record
from flwr_byz.flower.attacker import answer
from flwr_byz.flower.nodes import Role

RUN_CONFIG: dict[str, Any] = {"attack": "none", "num-byzantine": 0, "attack-params": "", "seed": 0}
"""The run-config keys the wrapper reads, with their defaults (a key the app does not declare keeps its default)."""

_label_transform: contextvars.ContextVar[list | None] = contextvars.ContextVar("flwr_byz_label_transform",
                                                                               default=None)


def labels(y: Tensor) -> Tensor:
    """The labels to train on: ``y``, except while a Byzantine node runs your train handler for label
    flipping (LF), when it is ``label_transform(y)`` as given to :func:`byzantine`. Route your training
    labels through it (``loss = criterion(model(x), labels(y))``) to make LF possible. Call it in the
    handler's own thread (not in DataLoader worker processes or a thread pool, which do not see the switch)."""
    active = _label_transform.get()
    if active is None:
        return y
    active[1] = True
    return active[0](y)


@contextlib.contextmanager
def flipping(transform: Callable[[Tensor], Tensor]) -> Iterator[list]:
    """Inside, :func:`labels` applies ``transform``; yields ``[transform, used]``."""
    state = [transform, False]
    token = _label_transform.set(state)
    try:
        yield state
    finally:
        _label_transform.reset(token)


@dataclass(frozen=True)
class Adversary:
    """What the run config asks of the wrapper: the attack (a library name or ``none``) with its
    ``attack-params``, the number of Byzantine nodes (the last partition ids) and the seed of the
    attack's randomness."""

    attack: str = "none"
    num_byzantine: int = 0
    attack_params: str = ""
    seed: int = 0

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> Adversary:
        values = {key: config.get(key, default) for key, default in RUN_CONFIG.items()}
        for key, default in RUN_CONFIG.items():
            if type(values[key]) is not type(default):
                raise ValueError(f"run config {key}={values[key]!r}: expected {type(default).__name__}")
        adversary = cls(str(values["attack"]).lower(), int(values["num-byzantine"]), str(values["attack-params"]),
                        int(values["seed"]))
        if adversary.attack != "none":
            adversary.make_attack()  # unknown names and parameters fail here, naming the valid ones
            if adversary.num_byzantine == 0:
                raise ValueError(f"attack={adversary.attack!r} with num-byzantine=0 attacks nobody: set num-byzantine")
        return adversary

    def make_attack(self) -> Attack:
        return get_attack(self.attack, **parse_params(self.attack_params, "attack-params"))


class ByzantineClientApp(ClientApp):
    """``app`` on honest nodes, the run config's attack on Byzantine ones.

    ``label_transform`` (e.g. ``lambda y: 9 - y``) enables LF: a Byzantine node runs ``app``'s
    own train handler on the global model with its labels transformed (through :func:`labels`)
    and attacks with that update.
    """

    def __init__(self, app: ClientApp, label_transform: Callable[[Tensor], Tensor] | None = None) -> None:
        if not isinstance(app, ClientApp):
            raise TypeError(f"byzantine() wraps a flwr ClientApp, got {type(app).__name__}")
        super().__init__()
        self.app, self.label_transform = app, label_transform
        self.query(ROLE_ACTION)(self._role)
        self.train(ATTACK_ACTION)(self._attack)
        self.evaluate(SCORE_ACTION)(self._score)

    def __call__(self, message: Message, context: Context) -> Message:
        kind = message.metadata.message_type
        if kind in self._registered_funcs:
            return super().__call__(message, context)
        if kind in (MessageType.TRAIN, MessageType.EVALUATE):
            adversary = Adversary.from_run_config(context.run_config)
            if adversary.num_byzantine and Role.at(context, adversary.num_byzantine).byzantine:
                raise ValueError(f"a Byzantine node got a plain {kind} message: wrap the ServerApp's strategy "
                                 "in flwr_byz.flower.OmniscientAdversary")
        return self.app(message, context)

    def _role(self, msg: Message, context: Context) -> Message:
        """This node's :class:`NodeRole`: JUMP is scored by the honest nodes (``oracle="honest-nodes"``)."""
        adversary = Adversary.from_run_config(context.run_config)
        if not adversary.num_byzantine:  # an honest run: no partition ids needed (deployed SuperNodes)
            return NodeRole(False, int(context.node_config.get("partition-id", context.node_id))).reply_to(msg)
        role = Role.at(context, adversary.num_byzantine)
        if adversary.attack == "lf" and self.label_transform is None:
            raise ValueError("attack 'lf' trains your model on flipped labels, and only your code sees your labels: "
                             "wrap with byzantine(app, label_transform=lambda y: ...) and pass your training labels "
                             "through flwr_byz.flower.labels(y)")
        attacking = role.byzantine and adversary.attack != "none"
        return NodeRole(role.byzantine, role.partition_id, attacking and ATTACKS[adversary.attack].shared,
                        adversary.attack, adversary.attack_params, HONEST_ORACLE).reply_to(msg)

    def _attack(self, msg: Message, context: Context) -> Message:
        """The Byzantine reply to an attack request (JUMP's own model comes from the hook, as an echo)."""
        adversary = Adversary.from_run_config(context.run_config)
        request, attack = AttackRequest.from_message(msg), adversary.make_attack()
        if attack.needs_loss and request.echo is None:
            raise ValueError(f"{attack.name} on a wrapped app is computed by the hook, which sends its model to echo")
        role = Role.at(context, adversary.num_byzantine)

        def flipped(theta: Tensor, layout: FlatLayout) -> Tensor:
            assert self.label_transform is not None
            with flipping(self.label_transform) as used:
                reply = self.app(retyped(msg, request.instruction(), MessageType.TRAIN), context)
            if reply.has_error():
                raise RuntimeError(f"your train handler failed on flipped labels: {reply.error.reason}")
            if not used[1]:
                raise ValueError("LF: your train handler never called flwr_byz.flower.labels(y), so its labels "
                                 "were not flipped: pass your training labels through it")
            state = next(iter(reply.content.array_records.values())).to_torch_state_dict()
            return (theta - layout.flatten(state, theta.dtype).to(theta.device)) / request.gamma

        return answer(request, context, attack, adversary.seed, role.partition_id,
                      flipped=flipped if adversary.attack == "lf" else None).reply_to(msg)

    def _score(self, msg: Message, context: Context) -> Message:
        """Every scalar metric of the user's evaluate handler on each candidate model of a :class:`ScoreRequest`."""
        request = ScoreRequest.from_message(msg)
        base = request.model.to_torch_state_dict()
        layout = FlatLayout.of(base)
        scores: dict[str, list[float]] = {}
        for j, candidate in enumerate(request.candidates):
            content = RecordDict({request.names[0]: to_record(base | layout.unflatten(candidate)),
                                  request.names[1]: request.config})
            reply = self.app(retyped(msg, content, MessageType.EVALUATE), context)
            if reply.has_error():
                raise RuntimeError(f"your evaluate handler failed on a candidate model: {reply.error.reason}")
            metrics = scalars(reply)
            if j and metrics.keys() != scores.keys():
                raise ValueError(f"your evaluate handler reported metrics {sorted(metrics)} for one model and "
                                 f"{sorted(scores)} for another")
            for key, value in metrics.items():
                scores.setdefault(key, []).append(value)
        return ScoreReply(scores).reply_to(msg)


def scalars(reply: Message) -> dict[str, float]:
    """The scalar metrics of a reply's MetricRecords."""
    return {key: float(value) for record in reply.content.metric_records.values() for key, value in record.items()
            if isinstance(value, (int, float))}


def byzantine(app: ClientApp, label_transform: Callable[[Tensor], Tensor] | None = None) -> ByzantineClientApp:
    """Your ClientApp, able to play a Byzantine node: ``app = byzantine(app)`` at the end of ``client_app.py``.

    Run config keys (declare them in your pyproject, or let ``flwr-byz audit`` do it): ``attack``
    (a name of :data:`flwr_byz.attacks.ATTACKS`, default ``none``), ``attack-params``, ``num-byzantine``
    (the last partition ids, default 0) and ``seed``. Pass ``label_transform`` to allow LF.
    """
    return ByzantineClientApp(app, label_transform)
