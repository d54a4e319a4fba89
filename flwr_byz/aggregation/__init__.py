"""Robust aggregation in pure torch: rules, pre-aggregators and their composition.

>>> agg = get_aggregator("nnm+cm", f=1)
>>> agg(torch.randn(5, 3)).shape       # (n, d) -> (d)
>>> agg(torch.randn(4, 5, 3)).shape    # (k, n, d) -> (k, d)
"""

from .base import PreAggregator, Rule, pairwise_sq_distances
from .bucketing import Bucketing
from .bulyan import Bulyan
from .centered_clipping import CenteredClipping
from .clipping import StaticClipping
from .geometric_median import GeometricMedian
from .krum import Krum, MultiKrum
from .mean import Mean
from .median import CoordinateMedian
from .nnm import NearestNeighborMixing
from .pipeline import PRE_AGGREGATORS, RULES, Aggregation, get_aggregator
from .trimmed_mean import TrimmedMean

__all__ = [
    "Aggregation",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "CoordinateMedian",
    "GeometricMedian",
    "Krum",
    "Mean",
    "MultiKrum",
    "NearestNeighborMixing",
    "PRE_AGGREGATORS",
    "PreAggregator",
    "RULES",
    "Rule",
    "StaticClipping",
    "TrimmedMean",
    "get_aggregator",
    "pairwise_sq_distances",
]
