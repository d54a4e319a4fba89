"""Flower client side: the honest D-SGD worker and the Byzantine node, in one ClientApp."""

from .app import app
from .nodes import Role

__all__ = ["Role", "app"]
