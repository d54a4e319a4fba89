"""Flower client side: flwr_byz's ClientApp (honest D-SGD workers and Byzantine nodes), and
``byzantine(app)``, which makes any ClientApp Byzantine-capable."""

from .app import app
from .nodes import Role
from .wrapper import ByzantineClientApp, byzantine, labels

__all__ = ["ByzantineClientApp", "Role", "app", "byzantine", "labels"]
