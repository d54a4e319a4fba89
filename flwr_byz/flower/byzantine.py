"""A Byzantine-capable ClientApp around any ClientApp: ``app = byzantine(app)``. The one Byzantine client of
flwr_byz: a user's app and the paper's honest D-SGD app (``flwr_byz.flower.paper``) are both wrapped by it.

Honest messages go to the wrapped app unchanged (train, evaluate, the app's own queries, with its mods); the
wrapper answers only the adversary protocol (``flwr_byz.flower.protocol``), and only in a run whose config has
Byzantine nodes (``num-byzantine > 0``, :class:`~flwr_byz.adversary_config.Adversary`): otherwise the app behaves
exactly like the unwrapped one: the role query gets a "no role" reply (not an error, so Flower logs nothing) and
every other adversary request an error reply naming why. In such a run:

* the role query is answered by every node;
* an attack request only by a Byzantine node (the last ``num-byzantine`` partition ids) of a run whose attack is
  not ``none``;
* a score request (JUMP scored by the honest nodes' evaluate handlers) only by an honest node of a run whose
  attack needs the honest loss, with at most :data:`~flwr_byz.flower.protocol.MAX_SCORE_CANDIDATES` models.

Byzantine nodes run the wrapped app's evaluate handler honestly (federated evaluation reaches every node, so the
runs of an audit are evaluated on the same nodes' data); only a plain train message to a Byzantine node raises
(its strategy is not inside ``OmniscientAdversary``).

JUMP's honest loss comes from a local ``oracle`` where the node holds the honest data (the paper app), else from
the honest nodes' evaluate handlers (the hook runs JUMP and the Byzantine nodes send its model). LF runs the
wrapped app's own train handler with its labels transformed (:func:`labels`).

Torch is not imported here: a numpy app's honest nodes (role query, train, evaluate, score requests) and its
Byzantine nodes that send a model computed elsewhere (``echo``) never load it; a Byzantine node imports it when it
computes an attack (:mod:`flwr_byz.flower.attacker`) or trains on flipped labels for LF.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from flwr_byz.adversary_config import Adversary
from flwr_byz.attack_traits import TRAITS
from flwr_byz.flower.nodes import Role
from flwr_byz.flower.protocol import (
    ATTACK_ACTION, HONEST_ORACLE, LOCAL_ORACLE, MAX_SCORE_CANDIDATES, OFF, REFUSED, ROLE_ACTION, SCORE_ACTION,
    AttackReply, AttackRequest, NodeRole, ScoreReply, ScoreRequest, retyped,
)
from flwr_byz.flower.records import with_flat

if TYPE_CHECKING:
    from torch import Tensor

    from flwr_byz.attacks.base import HonestLoss

LocalOracle = Callable[[Context, int], "tuple[HonestLoss, HonestLoss | None]"]
"""JUMP's honest loss from data the node holds: ``(context, server_round) -> (L_H, screening L_H or None)``."""

Labels = TypeVar("Labels")

_label_transform: contextvars.ContextVar[list | None] = contextvars.ContextVar("flwr_byz_label_transform",
                                                                               default=None)


class Refused(PermissionError):
    """An adversary request this node does not answer (the error reply names why)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{REFUSED}: {why}")


def labels(y: Labels) -> Labels:
    """The labels to train on: ``y``, except while a Byzantine node runs your train handler for label
    flipping (LF), when it is ``label_transform(y)`` as given to :func:`byzantine`. Route your training
    labels through it (``loss = criterion(model(x), labels(y))``) to make LF possible; ``y`` may be anything
    your ``label_transform`` takes (a tensor, a numpy array). Call it in the handler's own thread (not in
    DataLoader worker processes or a thread pool, which do not see the switch)."""
    active = _label_transform.get()
    if active is None:
        return y
    active[1] = True
    return active[0](y)


@contextlib.contextmanager
def flipping(transform: Callable[[Any], Any]) -> Iterator[list]:
    """Inside, :func:`labels` applies ``transform``; yields ``[transform, used]``."""
    state = [transform, False]
    token = _label_transform.set(state)
    try:
        yield state
    finally:
        _label_transform.reset(token)


class ByzantineClientApp(ClientApp):
    """``app`` on honest nodes, the run config's attack on Byzantine ones (module docstring).

    ``label_transform`` (e.g. ``lambda y: 9 - y``) enables LF: a Byzantine node runs ``app``'s own train handler
    on the global model with its labels transformed (through :func:`labels`) and attacks with that update.
    ``oracle`` (:data:`LocalOracle`) lets a Byzantine node score JUMP's candidates itself.
    """

    def __init__(self, app: ClientApp, label_transform: Callable[[Any], Any] | None = None,
                 oracle: LocalOracle | None = None) -> None:
        if not isinstance(app, ClientApp):
            raise TypeError(f"byzantine() wraps a flwr ClientApp, got {type(app).__name__}")
        super().__init__()
        self.app, self.label_transform, self.oracle = app, label_transform, oracle
        self.query(ROLE_ACTION)(self._role)
        self.train(ATTACK_ACTION)(self._attack)
        self.evaluate(SCORE_ACTION)(self._score)

    def __call__(self, message: Message, context: Context) -> Message:
        kind = message.metadata.message_type
        if kind in self._registered_funcs:
            return super().__call__(message, context)
        if kind == MessageType.TRAIN:  # evaluate runs honestly on every node
            adversary = Adversary.from_run_config(context.run_config)
            if adversary.num_byzantine and Role.at(context, adversary.num_byzantine).byzantine:
                raise ValueError(f"a Byzantine node got a plain {kind} message: wrap the ServerApp's strategy "
                                 "in flwr_byz.flower.OmniscientAdversary")
        return self.app(message, context)

    @staticmethod
    def _run(context: Context) -> tuple[Adversary, Role]:
        """The run's adversary and this node's role; :class:`Refused` in an honest run (no Byzantine node)."""
        adversary = Adversary.from_run_config(context.run_config)
        if not adversary.num_byzantine:
            raise Refused(f"the run config has no Byzantine node (num-byzantine = 0): {OFF}")
        return adversary, Role.at(context, adversary.num_byzantine)

    def _role(self, msg: Message, context: Context) -> Message:
        """This node's :class:`NodeRole`; "no role" (:meth:`NodeRole.none_reply`) in a run without Byzantine
        nodes, where the hook runs without an adversary."""
        if not Adversary.from_run_config(context.run_config).num_byzantine:
            return NodeRole.none_reply(msg, f"the run config has no Byzantine node (num-byzantine = 0): {OFF}")
        adversary, role = self._run(context)
        if adversary.attacking and TRAITS[adversary.attack].needs_flipped and self.label_transform is None:
            raise ValueError(f"attack {adversary.attack!r} trains your model on flipped labels, and only your code "
                             "sees your labels: wrap with byzantine(app, label_transform=lambda y: ...) and pass "
                             "your training labels through flwr_byz.flower.labels(y)")
        attacking = role.byzantine and adversary.attacking
        return NodeRole(role.byzantine, role.partition_id, attacking and TRAITS[adversary.attack].shared,
                        adversary.attack, adversary.attack_params,
                        LOCAL_ORACLE if self.oracle is not None else HONEST_ORACLE, adversary.seed,
                        adversary.loss_key).reply_to(msg)

    def _attack(self, msg: Message, context: Context) -> Message:
        """The Byzantine reply to an attack request: the model of the request's ``echo`` (another node's, or the
        hook's for JUMP without a local oracle), else the attack computed here (the one place torch is loaded)."""
        adversary, role = self._run(context)
        if not role.byzantine:
            raise Refused(f"node of partition {role.partition_id} is honest: it computes no attack")
        if not adversary.attacking:
            raise Refused("the run's attack is none: its Byzantine nodes stay silent")
        request = AttackRequest.from_message(msg)
        if request.echo is not None:
            return AttackReply(request.echo).reply_to(msg)
        from flwr_byz.flower.attacker import answer  # torch, the attacks and the rules

        attack = adversary.make_attack()
        losses: tuple[HonestLoss | None, HonestLoss | None] = (None, None)
        if attack.needs_loss:
            if self.oracle is None:
                raise ValueError(f"{attack.name} on a wrapped app is computed by the hook, which sends its model "
                                 "to echo")
            losses = self.oracle(context, request.server_round)
        flipped = self._flipped(msg, request, context) if attack.needs_flipped else None
        return answer(request, context, attack, adversary.seed, role.partition_id, *losses, flipped).reply_to(msg)

    def _flipped(self, msg: Message, request: AttackRequest, context: Context) -> dict[str, Tensor]:
        """The model the wrapped app's train handler sends from the round's global model on transformed labels."""
        assert self.label_transform is not None
        with flipping(self.label_transform) as used:
            reply = self.app(retyped(msg, request.instruction(), MessageType.TRAIN), context)
        if reply.has_error():
            raise RuntimeError(f"your train handler failed on flipped labels: {reply.error.reason}")
        if not used[1]:
            raise ValueError("LF: your train handler never called flwr_byz.flower.labels(y), so its labels "
                             "were not flipped: pass your training labels through it")
        return next(iter(reply.content.array_records.values())).to_torch_state_dict()

    def _score(self, msg: Message, context: Context) -> Message:
        """Every scalar metric of the wrapped app's evaluate handler on each candidate model of a
        :class:`ScoreRequest`."""
        adversary, role = self._run(context)
        if role.byzantine:
            raise Refused(f"node of partition {role.partition_id} is Byzantine: only honest nodes score")
        if not (adversary.attacking and TRAITS[adversary.attack].needs_loss):
            raise Refused(f"the run's attack {adversary.attack!r} scores no candidate models")
        request = ScoreRequest.from_message(msg)
        if len(request.candidates) > MAX_SCORE_CANDIDATES:
            raise Refused(f"{len(request.candidates)} candidate models in one score request, at most "
                          f"{MAX_SCORE_CANDIDATES} are evaluated")
        base = {key: array.numpy() for key, array in request.model.items()}
        scores: dict[str, list[float]] = {}
        for j, candidate in enumerate(request.candidates):
            content = RecordDict({request.names[0]: with_flat(base, candidate), request.names[1]: request.config})
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


def byzantine(app: ClientApp, label_transform: Callable[[Any], Any] | None = None,
              oracle: LocalOracle | None = None) -> ByzantineClientApp:
    """Your ClientApp, able to play a Byzantine node: ``app = byzantine(app)`` at the end of ``client_app.py``.

    Run config keys (declare them in your pyproject, or let ``flwr-byz audit`` do it; the schema is
    :class:`flwr_byz.adversary_config.Adversary`): ``attack`` (a name of :data:`flwr_byz.attacks.ATTACKS`, default
    ``none``), ``attack-params``, ``num-byzantine`` (the last partition ids, default 0: the adversary protocol is
    off) and ``seed``. Pass ``label_transform`` to allow LF; ``oracle`` lets Byzantine nodes score JUMP on data
    they hold.
    """
    return ByzantineClientApp(app, label_transform, oracle)
