"""Byzantine attacks as pure torch functions of the honest vectors (no Flower, Ray or data).

``get_attack(name, **params)`` builds one; ``attack(honest, ctx)`` returns the
``(d,)`` vector every Byzantine node sends, given the ``(h, d)`` honest vectors
and an ``AttackContext``.
"""

from .base import Attack, AttackContext
from .closed_form import ALittleIsEnough, FallOfEmpires, Gaussian, Inf, LabelFlip, SignFlip
from .jump import Jump, JumpObjective
from .line_search import GlobalSearch, Powell
from .mimic import Mimic
from .minmax import MinMax, MinSum
from .registry import ATTACKS, get_attack

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
