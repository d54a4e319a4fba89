"""Byzantine attacks as pure torch functions of the honest vectors (no Flower, Ray or data).

``get_attack(name, **params)`` builds one; ``attack(honest, ctx)`` returns the
``(d,)`` vector every Byzantine node sends, given the ``(h, d)`` honest vectors
and an ``AttackContext``.
"""

from flwr_byz.attacks.base import Attack, AttackContext
from flwr_byz.attacks.closed_form import ALittleIsEnough, FallOfEmpires, Gaussian, Inf, LabelFlip, SignFlip
from flwr_byz.attacks.jump import Jump, JumpObjective
from flwr_byz.attacks.line_search import GlobalSearch, Powell
from flwr_byz.attacks.mimic import Mimic
from flwr_byz.attacks.minmax import MinMax, MinSum
from flwr_byz.attacks.registry import ATTACKS, get_attack

__all__ = [
    "ATTACKS",
    "ALittleIsEnough",
    "Attack",
    "AttackContext",
    "FallOfEmpires",
    "Gaussian",
    "GlobalSearch",
    "Inf",
    "Jump",
    "JumpObjective",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "Powell",
    "SignFlip",
    "get_attack",
]
