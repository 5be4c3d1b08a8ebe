"""The building blocks every person search protocol shares: IoU, the small-box rule and sklearn-style AP.

The community's evaluation code (NAE / SeqNet ``eval_func.py``) computes average precision with
``sklearn.metrics.average_precision_score``: a step-wise sum over the distinct score thresholds,
``sum_n (R_n - R_{n-1}) * P_n``, with no interpolation. sklearn is not a dependency of this package, so
:func:`average_precision` re-implements exactly that definition in numpy (the vectorised search
evaluation gets the same number from the true positives' ranks alone, see ``search.py``).
"""

from __future__ import annotations

import numpy as np

SMALL_BOX_MARGIN = 10.0
"""Pixels added to the width and height of a ground-truth box in the small-box IoU rule (community value)."""

MAX_SEARCH_IOU = 0.5
"""The IoU a detection needs to match a ground-truth box that is not small (community value)."""


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes_a`` (n, 4) with every box in ``boxes_b`` (m, 4), xyxy, no +1 convention.

    Same arithmetic as the community's ``_compute_iou``. A pair whose union is 0 (two empty boxes) gets
    IoU 0 instead of a division by zero.
    """
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    left = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    top = np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    right = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    bottom = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    inter = np.maximum(right - left, 0.0) * np.maximum(bottom - top, 0.0)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    safe_union = np.where(union > 0, union, 1.0)
    return np.where(union > 0, inter / safe_union, 0.0)


def paired_box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of ``boxes_a[i]`` with ``boxes_b[i]`` for each row i (both (n, 4) xyxy): (n,), union 0 -> IoU 0."""
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    width = np.maximum(np.minimum(boxes_a[:, 2], boxes_b[:, 2]) - np.maximum(boxes_a[:, 0], boxes_b[:, 0]), 0.0)
    height = np.maximum(np.minimum(boxes_a[:, 3], boxes_b[:, 3]) - np.maximum(boxes_a[:, 1], boxes_b[:, 1]), 0.0)
    inter = width * height
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def search_iou_threshold(gt_boxes: np.ndarray) -> np.ndarray:
    """The IoU a detection needs to match each ground-truth box in person search: ``min(0.5, wh / ((w+10)(h+10)))``.

    ``gt_boxes``: (..., 4) xyxy; returns an array of shape (...). Small persons get a lower threshold
    because a few pixels of box error are a large IoU loss for them.
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64)
    width = gt_boxes[..., 2] - gt_boxes[..., 0]
    height = gt_boxes[..., 3] - gt_boxes[..., 1]
    small_box_iou = (width * height) / ((width + SMALL_BOX_MARGIN) * (height + SMALL_BOX_MARGIN))
    return np.minimum(MAX_SEARCH_IOU, small_box_iou)


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """sklearn's ``average_precision_score`` for binary labels, in numpy.

    Items are grouped by distinct score (tied scores form one threshold, as in sklearn's
    ``precision_recall_curve``); AP = sum over thresholds of (recall gain) x (precision at that threshold).
    Returns 0.0 when there is no positive (sklearn warns and returns a meaningless value there; every
    protocol here sets such a query's AP to 0 anyway).
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"average_precision: {y_true.size} labels but {y_score.size} scores")
    n_positive = int(y_true.sum())
    if n_positive == 0:
        return 0.0
    order = np.argsort(-y_score, kind="mergesort")
    sorted_scores = y_score[order]
    sorted_true = y_true[order]
    # the last item of each run of equal scores closes one threshold group
    group_ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_positives = np.cumsum(sorted_true)[group_ends]
    retrieved = group_ends + 1
    precision = true_positives / retrieved
    recall = true_positives / n_positive
    recall_gain = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_gain * precision))
