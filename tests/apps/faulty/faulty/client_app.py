"""The paper app's ClientApp with an SF attack that raises: a Byzantine node that fails must fail the run.

The registry is patched when this module is imported. A simulation's workers receive the ClientApp pickled, so
the app holds a function of this module (its label transform): unpickling it imports this module, and the patch
with it, in every process that runs the app.
"""

from flwr_byz.attacks import ATTACKS
from flwr_byz.attacks.closed_form import SignFlip
from flwr_byz.flower import byzantine
from flwr_byz.flower.paper.client_app import local_oracle
from flwr_byz.flower.paper.honest import app as honest_app
from flwr_byz.tasks import flip_labels


class ExplodingSignFlip(SignFlip):
    def _attack(self, honest, ctx):
        raise RuntimeError("attack exploded on purpose")


ATTACKS["sf"] = ExplodingSignFlip


def flip(y):
    return flip_labels(y)


app = byzantine(honest_app, label_transform=flip, oracle=local_oracle)
