"""Flower server side: robust strategies."""

from .robust import RobustStrategy, pseudo_gradients
from .screening import Screened, screen_replies

__all__ = ["RobustStrategy", "Screened", "pseudo_gradients", "screen_replies"]
