"""Flower server side: robust strategies."""

from .adversary import DefendedRule, OmniscientAdversary, defended_rule
from .robust import RobustStrategy, pseudo_gradients
from .screening import Screened, screen_replies

__all__ = ["DefendedRule", "OmniscientAdversary", "defended_rule", "RobustStrategy", "Screened", "pseudo_gradients", "screen_replies"]
