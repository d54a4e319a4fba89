"""What the omniscient adversary knows of each defence (the Flower run is in test_flower_e2e)."""

import pytest
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, MultiKrum

from flwr_byz.flower import DefendedRule, RobustStrategy, defended_rule


@pytest.mark.parametrize("strategy, expected", [
    (RobustStrategy(aggregation="nnm+gm", f=3, server_lr=0.5, aggregation_params={"nu": 0.2}),
     DefendedRule("nnm+gm", 3, {"nu": 0.2}, 0.5)),
    (FedMedian(), DefendedRule("cm", 0)),
    (FedTrimmedAvg(beta=0.2), DefendedRule("tm", 2)),
    (Krum(num_malicious_nodes=2), DefendedRule("krum", 2)),
    (MultiKrum(num_malicious_nodes=2, num_nodes_to_select=4), DefendedRule("multikrum", 2, {"select": 4}, weighted=True)),
    (FedAvg(), DefendedRule("mean", 0, weighted=True)),
    (Bulyan(num_malicious_nodes=1), DefendedRule("bulyan", 1, {"selection": "multikrum"})),
])
def test_flower_builtins_map_to_their_rules(strategy, expected):
    assert defended_rule(strategy, n=10) == expected


@pytest.mark.parametrize("strategy", [Bulyan(num_malicious_nodes=1, selection_rule=lambda r, f, k: r[:k]), FedProx()])
def test_unknown_defences_need_an_explicit_rule(strategy):
    with pytest.raises(ValueError, match="pass defended=DefendedRule"):
        defended_rule(strategy, n=10)
