"""Attack names users type, and ``get_attack`` to build one."""

from __future__ import annotations

import inspect

from flwr_byz.attacks.base import Attack
from flwr_byz.attacks.closed_form import ALittleIsEnough, FallOfEmpires, Gaussian, Inf, LabelFlip, SignFlip
from flwr_byz.attacks.fang import Fang
from flwr_byz.attacks.ipm import InnerProductManipulation
from flwr_byz.attacks.jump import Jump
from flwr_byz.attacks.mimic import Mimic
from flwr_byz.attacks.minmax import MinMax, MinSum
from flwr_byz.attacks.mpaf import MPAF
from flwr_byz.attacks.optimal import OptimalALIE, OptimalIPM
from flwr_byz.attacks.poisonedfl import PoisonedFL
from flwr_byz.attacks.rop import RelocatedOrthogonalPerturbation
from flwr_byz.attacks.tailored import AGRTailored

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (SignFlip, FallOfEmpires, ALittleIsEnough, LabelFlip, Mimic, MinMax, MinSum, Jump, Gaussian, Inf,
                InnerProductManipulation, OptimalALIE, OptimalIPM, Fang, AGRTailored,
                MPAF, PoisonedFL, RelocatedOrthogonalPerturbation)
}


def get_attack(name: str, **params: object) -> Attack:
    """Build the attack called ``name`` (case-insensitive) with hyper-parameters ``params``.

    Raises ``ValueError`` for an unknown name or parameter, listing the valid ones.
    """
    cls = ATTACKS.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown attack {name!r}; valid: {sorted(ATTACKS)}")
    spec = inspect.signature(cls).parameters
    valid = [p.name for p in spec.values() if p.kind is not p.VAR_KEYWORD]
    unknown = sorted(set(params) - set(valid))
    if unknown and len(valid) == len(spec):  # classes taking **kwargs check their own
        raise ValueError(f"{cls.name}: unknown parameters {unknown}; valid: {valid}")
    return cls(**params)
