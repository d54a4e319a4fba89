"""Everything that speaks Flower: the adversary protocol, ``RobustStrategy``, ``OmniscientAdversary``,
``byzantine(app)`` and the paper's app (``flwr_byz.flower.paper``).

The client-side names (``byzantine``, ``labels``, ``ByzantineClientApp``) are imported with the package and need no
torch; the server-side ones are imported on first use (PEP 562), so a numpy ClientApp that wraps itself with
``byzantine(app)`` never loads the hook, the strategies or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flwr_byz.flower.byzantine import ByzantineClientApp, byzantine, labels

if TYPE_CHECKING:
    from flwr_byz.flower.adversary import OmniscientAdversary
    from flwr_byz.flower.defended import DefendedRule, defended_rule, tolerated_f
    from flwr_byz.flower.robust import RobustStrategy

_LAZY = {"OmniscientAdversary": "adversary", "DefendedRule": "defended", "defended_rule": "defended",
         "tolerated_f": "defended", "RobustStrategy": "robust"}
"""Server-side names and the submodule each comes from, imported when first read."""

__all__ = ["ByzantineClientApp", "DefendedRule", "OmniscientAdversary", "RobustStrategy", "byzantine",
           "defended_rule", "labels", "tolerated_f"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
