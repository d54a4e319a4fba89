"""The example app `audited-pytorch-app` under FLTrust: its own ServerApp (`strategy = "robust"`,
`aggregation = "fltrust"`, the server's root set held out of the nodes' data) runs a round through the real hook,
in one process (messages delivered by a loopback Grid), and its Byzantine nodes attack knowing the server's g0."""

from __future__ import annotations

import sys

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from conftest import ROOT
from flower_helpers import LoopbackGrid, simulation_contexts
from flwr_byz.aggregation import get_aggregator
from flwr_byz.flower import OmniscientAdversary
from flwr_byz.flower.protocol import ATTACK_TYPE, MODEL_RECORD, AttackRequest

sys.path.insert(0, str(ROOT / "examples/audited-pytorch-app"))
from userapp import client_app, server_app  # noqa: E402
from userapp.task import load_root, partition  # noqa: E402

N, GAMMA, EXAMPLES = 5, 0.05, 600


def run_config(**overrides) -> dict:
    """The example's own run config (its pyproject's keys) for one short FLTrust round, plus the adversary's."""
    return {"num-server-rounds": 1, "strategy": "robust", "aggregation": "fltrust", "robust-f": 0,
            "root-examples": 100, "root-epochs": 4, "local-epochs": 1, "lr": GAMMA, "batch-size": 32, "train-examples": EXAMPLES,
            "seed": 0, **overrides}


class RecordingGrid(LoopbackGrid):
    """A loopback Grid that also keeps every reply."""

    def __init__(self, app, contexts) -> None:
        super().__init__(app, contexts)
        self.replies = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies += replies
        return replies


class Recorded(OmniscientAdversary):
    """The hook as the example's ServerApp builds it, keeping itself and its result for the test."""

    last: Recorded | None = None

    def start(self, *args, **kwargs):
        Recorded.last = self
        self.result = super().start(*args, **kwargs)
        return self.result


def flat(record: ArrayRecord) -> torch.Tensor:
    return torch.cat([torch.as_tensor(a.numpy()).reshape(-1).double() for a in record.values()])


def test_the_root_set_is_class_balanced_and_held_out_of_the_nodes_data():
    x, y = load_root(100, EXAMPLES, 32, 0).dataset.tensors
    assert len(y) == 100 and torch.bincount(y, minlength=10).tolist() == [10] * 10
    pixels = {row.numpy().tobytes() for row in x}
    for pid in range(N):
        node_x, _ = partition(pid, N, EXAMPLES)
        node = torch.as_tensor((node_x - 0.1307) / 0.3081, dtype=torch.float32)
        assert not pixels & {row.numpy().tobytes() for row in node}


@pytest.mark.parametrize("attack", ["alie", "sf"])
def test_the_example_runs_a_round_under_fltrust_and_its_byzantine_nodes_know_g0(monkeypatch, capsys, attack):
    """The example's ServerApp main() with FLTrust and 2 of 5 nodes Byzantine: the strategy's g0 is the app's own
    training on the root set from the global model; the attack request carries it (``reference``) with the rule
    ``fltrust``, and the new global model is FLTrust, scored against that g0, of the replies the strategy got
    (the Byzantine ones included)."""
    monkeypatch.setattr(server_app, "OmniscientAdversary", Recorded)
    config = run_config(attack=attack, **{"num-byzantine": 2})
    grid = RecordingGrid(client_app.app, simulation_contexts(config, N))
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    hook = Recorded.last
    assert hook is not None and hook.byzantine == {4, 5}
    strategy = hook.strategy
    assert strategy.aggregator.spec == "fltrust" and strategy.reference is not None

    torch.manual_seed(0)  # the example's initial model, as main() draws it
    theta = ArrayRecord(server_app.Net().state_dict())
    trained = server_app.root_trainer(config)(theta, ConfigRecord({"lr": GAMMA}))
    g0 = (flat(theta) - flat(trained)) / GAMMA
    torch.testing.assert_close(strategy.reference.double(), g0, rtol=1e-5, atol=1e-7)

    requests = [AttackRequest.from_message(m) for m in grid.sent if m.metadata.message_type == ATTACK_TYPE]
    computed = [r for r in requests if r.honest is not None]
    assert computed and all(r.aggregation == "fltrust" for r in requests)
    for request in computed:
        assert request.reference is not None and torch.equal(request.reference, strategy.reference)
        assert request.honest.shape == (N - 2, g0.numel())

    honest = [r.content["arrays"] for r in grid.replies if r.metadata.message_type == "train"]
    attacks = [r.content[MODEL_RECORD] for r in grid.replies if r.metadata.message_type == ATTACK_TYPE]
    assert len(honest) == N - 2 and len(attacks) == 2
    g = torch.stack([(flat(theta) - flat(record)) / GAMMA for record in honest + attacks])
    expected = flat(theta) - GAMMA * get_aggregator("fltrust", 0).with_reference(g0)(g)
    torch.testing.assert_close(flat(hook.result.arrays), expected, rtol=1e-4, atol=1e-6)
    assert "final accuracy" in capsys.readouterr().out
