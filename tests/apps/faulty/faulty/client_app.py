"""flwr_byz's ClientApp handlers, with an SF attack that raises: a Byzantine node that fails must fail the run.

The attack handler is defined here (not re-exported), so every process that runs it imports this
module, and with it the patched registry.
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flwr_byz.attacks import ATTACKS
from flwr_byz.attacks.closed_form import SignFlip
from flwr_byz.flower.paper.client_app import attack as flwr_byz_attack
from flwr_byz.flower.paper.client_app import role, train
from flwr_byz.flower.protocol import ATTACK_ACTION, ROLE_ACTION


class ExplodingSignFlip(SignFlip):
    def _attack(self, honest, ctx):
        raise RuntimeError("attack exploded on purpose")


ATTACKS["sf"] = ExplodingSignFlip

app = ClientApp()
app.query(ROLE_ACTION)(role)
app.train()(train)


@app.train(ATTACK_ACTION)
def attack(msg: Message, context: Context) -> Message:
    return flwr_byz_attack(msg, context)
