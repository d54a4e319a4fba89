"""byzantine(app) on a numpy app: the wrapper, its honest nodes and its echoing Byzantine nodes never import torch;
a Byzantine node imports it when it computes an attack. Each scenario runs in a fresh interpreter (this process has
torch loaded), driving a wrapped numpy ClientApp through a loopback Grid (``flower_helpers``)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import ROOT
from flwr_byz.attack_traits import TRAITS
from flwr_byz.attacks import ATTACKS
from flwr_byz.attacks.closed_form import SignFlip
from flwr_byz.flat import FlatLayout
from flwr_byz.flower.byzantine import flipping, labels
from flwr_byz.flower.records import with_flat
from flwr_byz.settings import Adversary

NUMPY_APP = """
import sys

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import flwr_byz.flower.byzantine  # the module first: the package's name `byzantine` must still be the function
from flower_helpers import LoopbackGrid, simulation_contexts
from flwr_byz.flower import byzantine, labels
from flwr_byz.flower.protocol import AttackReply, AttackRequest, NodeRole, ScoreReply, ScoreRequest, role_query

N, GAMMA = 5, 0.5
assert callable(byzantine) and not isinstance(byzantine, type(sys)), byzantine


def target(context):
    return float(context.node_config["partition-id"])


def loss(arrays, context):
    w, b = arrays["w"].numpy(), arrays["b"].numpy()
    return float(((w - target(context)) ** 2).sum() + (b ** 2).sum())


inner = ClientApp()


@inner.train()
def train(msg, context):
    arrays = msg.content["arrays"]
    w = arrays["w"].numpy() - GAMMA * (arrays["w"].numpy() - labels(np.float32(target(context))))
    out = ArrayRecord({"w": Array(w), "b": arrays["b"], "steps": Array(arrays["steps"].numpy() + 1)})
    return Message(RecordDict({"arrays": out, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)


@inner.evaluate()
def evaluate(msg, context):
    metrics = MetricRecord({"eval_loss": loss(msg.content["arrays"], context), "num-examples": 10})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


app = byzantine(inner)
MODEL = ArrayRecord({"w": Array(np.linspace(-1, 1, 3).astype(np.float32)), "steps": Array(np.array([4])),
                     "b": Array(np.array([0.5, -0.25]))})


def instruction(kind, node):
    return Message(RecordDict({"arrays": MODEL, "config": ConfigRecord({"lr": GAMMA})}), dst_node_id=node,
                   message_type=kind)


def send(grid, message):
    (reply,) = grid.send_and_receive([message])
    assert not reply.has_error(), reply.error.reason
    return reply
"""

HONEST_AND_ECHO = """
contexts = simulation_contexts({"attack": "jump", "num-byzantine": 1}, N)
grid = LoopbackGrid(app, contexts)
roles = {node: NodeRole.from_reply(send(grid, role_query(node))) for node in contexts}
assert [role.byzantine for role in roles.values()] == [False] * 4 + [True], roles
assert roles[1].oracle == "honest-nodes" and roles[5].attack == "jump"

trained = send(grid, instruction("train", 2)).content["arrays"]  # partition 1: w <- w - 0.5 (w - 1)
assert np.allclose(trained["w"].numpy(), MODEL["w"].numpy() - GAMMA * (MODEL["w"].numpy() - 1))
assert trained["steps"].numpy().tolist() == [5]
for node in (1, 5):  # evaluate runs honestly on Byzantine nodes too
    metrics = send(grid, instruction("evaluate", node)).content["metrics"]
    assert metrics["eval_loss"] == loss(MODEL, contexts[node])

candidates = np.array([[1, 1, 1, 0, 0], [0, 1, 2, 3, 4]], dtype=np.float32)
scores = ScoreReply.from_reply(send(grid, ScoreRequest(MODEL, candidates, ConfigRecord()).to_message(3))).metrics
expected = [float(((c[:3] - 2) ** 2).sum() + (c[3:] ** 2).sum()) for c in candidates]  # partition 2: target 2
assert np.allclose(scores["eval_loss"], expected) and scores["num-examples"] == [10, 10], scores

echo = ArrayRecord({"w": Array(np.full(3, 7, np.float32)), "steps": Array(np.array([4])),
                    "b": Array(np.zeros(2))})
request = AttackRequest(1, GAMMA, 1.0, "mean", 0, {}, N, 1, list(range(N)), MODEL, echo=echo)
sent = AttackReply.from_reply(send(grid, request.to_message(5))).model
assert [(k, a.numpy().tobytes()) for k, a in sent.items()] == [(k, a.numpy().tobytes()) for k, a in echo.items()]

(typo,) = LoopbackGrid(app, simulation_contexts({"attack": "sf-typo", "num-byzantine": 1}, N)).send_and_receive(
    [role_query(1)])
assert typo.has_error() and "unknown attack 'sf-typo'" in typo.error.reason, typo.error.reason
print(json.dumps({"torch": "torch" in sys.modules}))
"""

SIGN_FLIP = """
contexts = simulation_contexts({"attack": "sf", "num-byzantine": 1}, N)
grid = LoopbackGrid(app, contexts)
role = NodeRole.from_reply(send(grid, role_query(5)))
assert role.byzantine and role.shared and role.attack == "sf", role
before = "torch" in sys.modules
honest = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
request = AttackRequest(1, GAMMA, 1.0, "mean", 0, {}, N, 1, list(range(N)), MODEL, honest=honest)
sent = AttackReply.from_reply(send(grid, request.to_message(5))).model
theta = np.concatenate([MODEL["w"].numpy(), MODEL["b"].numpy()])
model = np.concatenate([sent["w"].numpy(), sent["b"].numpy()])
assert np.allclose(model, theta + GAMMA * honest.mean(0), rtol=1e-6, atol=1e-6), (model, theta)  # a = -gbar
assert list(sent.keys()) == ["w", "steps", "b"] and sent["steps"].numpy().tolist() == [4]
print(json.dumps({"torch_before_the_attack": before, "torch": "torch" in sys.modules}))
"""


def isolated(scenario: str) -> dict:
    """Run the numpy app and ``scenario`` in a fresh interpreter; its last line of output, read as JSON."""
    code = "import json, sys\nsys.path.insert(0, {!r})\n".format(str(ROOT / "tests")) + \
        textwrap.dedent(NUMPY_APP) + textwrap.dedent(scenario)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_numpy_apps_honest_and_echoing_nodes_never_import_torch():
    """Importing the wrapper, the role query on every node, a plain train and evaluate message (evaluate on the
    Byzantine node too), a JUMP score request (candidates unflattened into the app's float32, int and float64
    arrays) and an echo request: answered correctly, and ``torch`` is not in ``sys.modules``."""
    assert isolated(HONEST_AND_ECHO) == {"torch": False}


def test_a_byzantine_node_imports_torch_when_it_computes_sf():
    """A numpy app's Byzantine node answers the role query without torch, then computes SF (torch loaded for
    it): its model is ``theta + gamma gbar`` in the app's arrays, its integer entry untouched."""
    assert isolated(SIGN_FLIP) == {"torch_before_the_attack": False, "torch": True}


def test_with_flat_is_the_flat_layout_on_numpy_arrays():
    """The score request's numpy unflattening keeps FlatLayout's contract: floating entries in key order, each
    cast back to its dtype, integer entries kept, the record's key order."""
    rng = np.random.default_rng(0)
    model = {"a": rng.normal(size=(2, 3)).astype(np.float32), "count": np.array([7]),
             "b": rng.normal(size=4), "c": rng.normal(size=2).astype(np.float16)}
    tensors = {key: torch.from_numpy(arr) for key, arr in model.items()}
    layout = FlatLayout.of(tensors)
    vector = rng.normal(size=layout.numel).astype(np.float32)
    expected = tensors | layout.unflatten(torch.from_numpy(vector))
    got = with_flat(model, vector)
    assert list(got.keys()) == list(model)
    for key, array in got.items():
        assert array.numpy().dtype == expected[key].numpy().dtype, key
        assert array.numpy().shape == tuple(expected[key].shape), key
        assert array.numpy().tobytes() == expected[key].numpy().tobytes(), key
    with pytest.raises(ValueError, match=r"floating entries need \(12,\)"):
        with_flat(model, vector[:-1])
    assert with_flat({"n": np.array([1])}, np.zeros(0))["n"].numpy().tolist() == [1]  # no floating entry


def test_attack_classes_take_their_traits_from_the_one_table():
    assert set(TRAITS) == set(ATTACKS)
    for name, cls in ATTACKS.items():
        assert dataclasses.asdict(TRAITS[name]) == {trait: getattr(cls, trait) for trait in
                                                    ("shared", "needs_loss", "needs_flipped")}, name
    with pytest.raises(TypeError, match=r"sets shared = False, but flwr_byz.attack_traits.TRAITS\['sf'\]"):
        type("Unshared", (SignFlip,), {"shared": False})


def test_labels_apply_the_transform_to_numpy_arrays_and_tensors():
    y = np.array([0, 3, 9])
    assert labels(y) is y
    with flipping(lambda v: 9 - v) as state:
        assert labels(y).tolist() == [9, 6, 0] and labels(torch.tensor([1])).tolist() == [8]
    assert state[1]


def test_where_torch_is_loaded_the_schema_still_builds_the_attack():
    """The torch-free check leaves parameter values to whoever builds the attack; in a process with torch (the
    server, a PyTorch app) the run config's parameters are checked at once, as before."""
    with pytest.raises(ValueError, match=r"unknown parameters \['zz'\]"):
        Adversary.from_run_config({"attack": "alie", "num-byzantine": 1, "attack-params": "zz=1"})
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        Adversary.from_run_config({"attack": "nope", "num-byzantine": 1})
