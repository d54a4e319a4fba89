"""flwr_byz's ClientApp whose SF attack raises: a Byzantine node that fails must fail the run."""

from flwr_byz.attacks import ATTACKS
from flwr_byz.attacks.closed_form import SignFlip
from flwr_byz.clients import app


class ExplodingSignFlip(SignFlip):
    def _attack(self, honest, ctx):
        raise RuntimeError("attack exploded on purpose")


ATTACKS["sf"] = ExplodingSignFlip

__all__ = ["app"]
