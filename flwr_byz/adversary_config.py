"""The run-config schema of every Byzantine-capable ClientApp (:class:`Adversary`), readable without torch.

A user's numpy or scikit-learn app wrapped with ``byzantine(app)`` reads its run config here on every node; torch
is imported only where an attack is built (:meth:`Adversary.make_attack`). Re-exported by :mod:`flwr_byz.settings`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr_byz.attack_traits import traits

if TYPE_CHECKING:
    from flwr_byz.attacks import Attack


def parse_params(text: str, key: str) -> dict[str, Any]:
    """``"nu=0.2, start=median"`` -> ``{"nu": 0.2, "start": "median"}`` (ints, floats, true/false, strings)."""
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{key}: expected comma-separated key=value pairs, got {item!r} in {text!r}")
        params[name.strip()] = _literal(raw.strip())
    return params


def _literal(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw.strip("\"'")


ADVERSARY_KEYS: dict[str, Any] = {"attack": "none", "num-byzantine": 0, "attack-params": "", "seed": 0,
                                  "loss-key": ""}
"""The run-config keys of every Byzantine-capable ClientApp (``byzantine(app)``, the paper app), with their
defaults: a key an app does not declare keeps its default."""


@dataclass(frozen=True)
class Adversary:
    """What a run config asks of the Byzantine nodes: the attack (a name of :data:`flwr_byz.attacks.ATTACKS` or
    ``none``: the Byzantine nodes stay silent) with its ``attack-params`` (``"key=value, ..."``, e.g.
    ``"solver=powell"`` for JUMP), ``num-byzantine`` (the last partition ids; 0: an honest run, in which no node
    answers the adversary protocol), the ``seed`` of the attack's randomness (and of the hook's reply order) and
    ``loss-key``: the evaluate metric JUMP maximises on a wrapped app (empty: the one metric named ``*loss*``)."""

    attack: str = "none"
    """The attack the Byzantine nodes run: a name of :data:`flwr_byz.attacks.ATTACKS` (see the attacks
    reference), or ``none``."""
    num_byzantine: int = 0
    """Byzantine nodes in the run: the last ``num-byzantine`` partition ids. 0: an honest run, in which no node
    answers the adversary protocol."""
    attack_params: str = ""
    """The attack's parameters, ``"key=value, ..."``: ``"eps=1.5"`` (FOE), ``"solver=powell"`` (JUMP)."""
    seed: int = 0
    """Seed of the attack's randomness and of the hook's reply order (``flwr-byz audit --seeds``)."""
    loss_key: str = ""
    """The evaluate metric JUMP maximises on a wrapped app (empty: the one federated metric named ``*loss*``)."""

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> Adversary:
        """The adversary of a run config (keys of :data:`ADVERSARY_KEYS`); a wrong type, an unknown attack or
        parameter, or an attack without Byzantine nodes raises ``ValueError`` (:meth:`check`)."""
        values = {key: config.get(key, default) for key, default in ADVERSARY_KEYS.items()}
        for key, default in ADVERSARY_KEYS.items():
            if type(values[key]) is not type(default):
                raise ValueError(f"run config {key}={values[key]!r}: expected {type(default).__name__}")
        adversary = cls(str(values["attack"]).lower(), int(values["num-byzantine"]), str(values["attack-params"]),
                        int(values["seed"]), str(values["loss-key"]))
        adversary.check()
        return adversary

    def check(self) -> None:
        """Unknown attacks and malformed ``attack-params`` fail here, naming the valid ones. Where torch is
        already imported (the server, a PyTorch app's nodes) the attack is also built, so unknown or impossible
        parameter values fail here too; a process without torch (a numpy app's nodes) does not import it for
        that, and leaves those values to the node that computes the attack."""
        if self.num_byzantine < 0:
            raise ValueError(f"num-byzantine must be >= 0, got {self.num_byzantine}")
        if self.attack != "none":
            traits(self.attack)
            parse_params(self.attack_params, "attack-params")
            if "torch" in sys.modules:
                self.make_attack()
            if self.num_byzantine == 0:
                raise ValueError(f"attack={self.attack!r} with num-byzantine=0 attacks nobody: set num-byzantine")

    @property
    def attacking(self) -> bool:
        """Whether the Byzantine nodes send an attack (not silent)."""
        return self.attack != "none" and self.num_byzantine > 0

    def make_attack(self) -> Attack:
        """``get_attack(attack, **attack-params)`` (imports torch)."""
        from flwr_byz.attacks import get_attack

        return get_attack(self.attack, **parse_params(self.attack_params, "attack-params"))
