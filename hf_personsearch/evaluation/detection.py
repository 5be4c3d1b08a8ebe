"""Detection protocol of the person search codebases (NAE/SeqNet ``eval_detection``), vectorised per image.

Per image: keep detections with score >= ``det_thresh``; a detection is a true positive when it and a
ground-truth box are each other's highest-IoU partner and that IoU is >= ``iou_thresh`` (one-to-one
matching, max IoU both ways). Over the whole gallery: AP (step-wise, on the detection scores) is
multiplied by the recall count_tp / count_gt, and the recall is reported too.
"""

from __future__ import annotations

import numpy as np

from ..data.schema import NO_IDENTITY
from .average_precision import average_precision, box_iou
from .inputs import read_detections, read_gallery_annotations
from .results import DetectionResult

IGNORE_REGION_IOU = 0.1
"""A detection overlapping an ignore region by more than this IoU (and matching no ground-truth box) is
neither positive nor negative: PoseTrack21's evaluation uses 0.1."""


def one_to_one_matches(gt_boxes: np.ndarray, det_boxes: np.ndarray, iou_thresh: float) -> np.ndarray:
    """(num_gt, num_det) bool: gt i and det j are each other's highest-IoU partner with IoU >= ``iou_thresh``.

    IoUs are stored in float32 like the reference code, so a tie or a value at the threshold resolves
    the same way; argmax takes the first index on ties, as the reference's ``np.argmax`` loop does.
    """
    num_gt, num_det = len(gt_boxes), len(det_boxes)
    if num_gt == 0 or num_det == 0:
        return np.zeros((num_gt, num_det), dtype=bool)
    ious = box_iou(gt_boxes, det_boxes).astype(np.float32)
    matched = ious >= iou_thresh
    matched &= np.arange(num_gt)[:, None] == np.argmax(ious, axis=0)[None, :]
    matched &= np.arange(num_det)[None, :] == np.argmax(ious, axis=1)[:, None]
    return matched


def in_ignore_regions(det_boxes: np.ndarray, ignore_regions: np.ndarray, matched: np.ndarray) -> np.ndarray:
    """(num_det,) bool: detections to drop, i.e. overlapping an ignore region (IoU > 0.1) and matching no GT.

    ``matched`` is the (num_gt, num_det) output of :func:`one_to_one_matches`. PoseTrack21 stores ignore
    regions as polygons; the unified schema keeps their bounding boxes, so the IoU here is box-to-box.
    """
    if len(ignore_regions) == 0 or len(det_boxes) == 0:
        return np.zeros(len(det_boxes), dtype=bool)
    overlaps = (box_iou(ignore_regions, det_boxes) > IGNORE_REGION_IOU).any(axis=0)
    return overlaps & ~matched.any(axis=0)


def evaluate_detection(
    gallery: list[dict],
    detections: list[dict],
    det_thresh: float = 0.01,
    iou_thresh: float = 0.5,
    labeled_only: bool = False,
) -> DetectionResult:
    """Detection AP and recall over the gallery, as the person search codebases compute them.

    Args:
        gallery: one dict per image: ``image_id``, ``boxes`` (n, 4) xyxy, ``person_ids`` (n,), and
            optionally ``ignore_regions`` (k, 4) xyxy (PoseTrack21): unmatched detections there are dropped.
        detections: aligned with ``gallery``: ``boxes`` (m, 4) xyxy, ``scores`` (m,).
        det_thresh: minimum score of a kept detection; 0.01 as the codebases use for detection
            evaluation (low, so AP sees almost the whole precision/recall curve).
        iou_thresh: IoU for a true positive; 0.5 is the PASCAL/person-search standard.
        labeled_only: count only ground-truth persons with an identity (``person_ids != NO_IDENTITY``);
            images without any such person are skipped entirely, detections included, as the reference
            does. The reference reports only the recall in this mode.

    Returns:
        DetectionResult with ``ap`` (AP x recall), ``recall``, ``num_gt``, ``num_tp``.
    """
    image_ids, _, _, gt_boxes, gt_person_ids, ignores = read_gallery_annotations(gallery)
    dets = read_detections(detections, len(image_ids), image_ids, need_embeddings=False)
    y_true, y_score = [], []
    count_gt = count_tp = 0
    for boxes, person_ids, ignore, (det_boxes, det_scores, _) in zip(gt_boxes, gt_person_ids, ignores, dets):
        if labeled_only:
            boxes = boxes[person_ids != NO_IDENTITY]
            if len(boxes) == 0:
                continue
        kept = det_scores >= det_thresh
        det_boxes, det_scores = det_boxes[kept], det_scores[kept]
        matched = one_to_one_matches(boxes, det_boxes, iou_thresh)
        dropped = in_ignore_regions(det_boxes, ignore, matched)
        y_true.append(matched.any(axis=0)[~dropped])
        y_score.append(det_scores[~dropped])
        count_tp += int(matched.sum())
        count_gt += len(boxes)
    if count_gt == 0:
        raise ValueError("gallery: no ground-truth box to detect (all images empty or, with labeled_only, unlabeled)")
    recall = count_tp / count_gt
    y_true_all = np.concatenate(y_true) if y_true else np.zeros(0, bool)
    y_score_all = np.concatenate(y_score) if y_score else np.zeros(0)
    ap = average_precision(y_true_all, y_score_all) * recall if count_tp else 0.0
    return DetectionResult(ap=ap, recall=recall, num_gt=count_gt, num_tp=count_tp, labeled_only=labeled_only)
