"""Robust aggregation in pure torch: rules, pre-aggregators and their composition.

>>> agg = get_aggregator("nnm+cm", f=1)
>>> agg(torch.randn(5, 3)).shape       # (n, d) -> (d)
>>> agg(torch.randn(4, 5, 3)).shape    # (k, n, d) -> (k, d)
"""

from flwr_byz.aggregation.arc import AdaptiveRobustClipping
from flwr_byz.aggregation.base import PreAggregator, Rule, pairwise_sq_distances
from flwr_byz.aggregation.bucketing import Bucketing
from flwr_byz.aggregation.bulyan import Bulyan
from flwr_byz.aggregation.caf import CovarianceBoundAgnosticFilter
from flwr_byz.aggregation.centered_clipping import CenteredClipping
from flwr_byz.aggregation.clipping import StaticClipping
from flwr_byz.aggregation.dnc import DnC
from flwr_byz.aggregation.flame import Flame
from flwr_byz.aggregation.fltrust import FLTrust
from flwr_byz.aggregation.geometric_median import GeometricMedian
from flwr_byz.aggregation.krum import Krum, MultiKrum
from flwr_byz.aggregation.mda import MinimumDiameterAveraging
from flwr_byz.aggregation.mean import Mean, Weighted
from flwr_byz.aggregation.meamed import MeanAroundMedian
from flwr_byz.aggregation.median import CoordinateMedian
from flwr_byz.aggregation.nnm import NearestNeighborMixing
from flwr_byz.aggregation.pipeline import PRE_AGGREGATORS, RULES, Aggregation, get_aggregator
from flwr_byz.aggregation.signguard import SignGuard
from flwr_byz.aggregation.trimmed_mean import TrimmedMean

__all__ = [
    "AdaptiveRobustClipping",
    "Aggregation",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "CoordinateMedian",
    "CovarianceBoundAgnosticFilter",
    "DnC",
    "Flame",
    "FLTrust",
    "GeometricMedian",
    "Krum",
    "Mean",
    "MeanAroundMedian",
    "MinimumDiameterAveraging",
    "MultiKrum",
    "NearestNeighborMixing",
    "PRE_AGGREGATORS",
    "PreAggregator",
    "RULES",
    "Rule",
    "SignGuard",
    "StaticClipping",
    "TrimmedMean",
    "Weighted",
    "get_aggregator",
    "pairwise_sq_distances",
]
