"""Everything that speaks Flower: the adversary protocol, ``RobustStrategy``, ``OmniscientAdversary``,
``byzantine(app)`` and the paper's app (``flwr_byz.flower.paper``)."""

from flwr_byz.flower.adversary import OmniscientAdversary
from flwr_byz.flower.byzantine import ByzantineClientApp, byzantine, labels
from flwr_byz.flower.defended import DefendedRule, defended_rule, tolerated_f
from flwr_byz.flower.robust import RobustStrategy

__all__ = ["ByzantineClientApp", "DefendedRule", "OmniscientAdversary", "RobustStrategy", "byzantine",
           "defended_rule", "labels", "tolerated_f"]
