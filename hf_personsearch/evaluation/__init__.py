"""Person search and detection evaluation with the community's exact protocols (pure numpy).

``evaluate_search`` (PRW, CUHK-SYSU, PoseTrack21 mAP/top-k), ``evaluate_detection`` (AP/recall),
``evaluate_query_subsets`` (CUHK-SYSU occlusion / low-resolution queries) and :func:`metric_path`, the
path of the ``evaluate`` module wrapping them (``evaluate.load(metric_path())``, offline).
"""

from __future__ import annotations

from importlib import resources

from .average_precision import average_precision, box_iou
from .detection import evaluate_detection
from .results import DetectionResult, SearchResult
from .search import PROTOCOLS, evaluate_query_subsets, evaluate_search


def metric_path() -> str:
    """Path of the ``evaluate`` metric module shipped with the package (load it with ``evaluate.load``)."""
    return str(resources.files(__name__) / "metric" / "person_search.py")


__all__ = [
    "PROTOCOLS",
    "DetectionResult",
    "SearchResult",
    "average_precision",
    "box_iou",
    "evaluate_detection",
    "evaluate_query_subsets",
    "evaluate_search",
    "metric_path",
]
