"""evaluate_detection: one-to-one matching, AP x recall, labeled_only, ignore regions, errors."""

import numpy as np
import pytest

from hf_personsearch.evaluation import evaluate_detection


def scene():
    """Image 0: two persons; det 0.9 on person 1 (TP), det 0.8 also on person 1 (IoU 0.8: not the best
    partner -> FP), det 0.3 on person 2 (TP). Image 1: one unlabeled person, no detection at all."""
    gallery = [
        {"image_id": "a.jpg", "boxes": [[0, 0, 50, 100], [200, 0, 250, 100]], "person_ids": [4, -1]},
        {"image_id": "b.jpg", "boxes": [[0, 0, 50, 100]], "person_ids": [-1]},
    ]
    detections = [
        {"boxes": [[0, 0, 50, 100], [0, 0, 50, 80], [200, 0, 250, 100]], "scores": [0.9, 0.8, 0.3]},
        {"boxes": np.zeros((0, 4)), "scores": []},
    ]
    return gallery, detections


def test_detection_ap_and_recall_hand_computed():
    # ranks T F T: sklearn AP = 1/2 * 1 + 1/2 * 2/3 = 5/6; recall 2 of 3 GT boxes (b's person is missed)
    result = evaluate_detection(*scene())
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["ap"] == pytest.approx(5 / 6 * 2 / 3, abs=1e-12)
    assert (result["num_gt"], result["num_tp"]) == (3, 2)


def test_detection_threshold_drops_low_scores():
    result = evaluate_detection(*scene(), det_thresh=0.5)  # person 2's 0.3 detection is gone
    assert result["recall"] == pytest.approx(1 / 3)
    assert result["ap"] == pytest.approx(1.0 * 1 / 3, abs=1e-12)  # ranks T F: the only TP is first -> AP 1


def test_one_to_one_matching_uses_max_iou_both_ways():
    # two detections overlap one person with IoU 0.8 and 1.0; only the 1.0 one is its partner even though
    # the 0.8 one scores higher
    gallery = [{"image_id": "a.jpg", "boxes": [[0, 0, 50, 100]], "person_ids": [1]}]
    detections = [{"boxes": [[0, 0, 50, 80], [0, 0, 50, 100]], "scores": [0.9, 0.5]}]
    result = evaluate_detection(gallery, detections)
    assert result["recall"] == 1.0
    assert result["ap"] == pytest.approx(1 / 2, abs=1e-12)  # ranks F T


def test_labeled_only_counts_labeled_persons_and_skips_unlabeled_images():
    # only person 4 in a.jpg counts; b.jpg (unlabeled only) is skipped with its detections;
    # a.jpg's matching is computed against person 4 alone: 0.9 TP, 0.8 F, 0.3 F
    result = evaluate_detection(*scene(), labeled_only=True)
    assert result["recall"] == 1.0 and result["num_gt"] == 1
    assert result["ap"] == pytest.approx(1.0, abs=1e-12)


def test_unmatched_detections_in_ignore_regions_are_dropped():
    gallery, detections = scene()
    gallery[0]["ignore_regions"] = [[0, 0, 50, 80]]  # covers the 0.8 false positive (and the TP, kept)
    result = evaluate_detection(gallery, detections)
    assert result["ap"] == pytest.approx(1.0 * 2 / 3, abs=1e-12)  # ranks T T


def test_detection_result_table_and_errors():
    assert "| all       | 55.56 | 66.67  | 3        |" in str(evaluate_detection(*scene()))
    gallery, detections = scene()
    with pytest.raises(ValueError, match=r"detections\[0\] \(image 'a.jpg'\): 3 boxes but 2 scores"):
        evaluate_detection(gallery, [dict(detections[0], scores=[0.9, 0.8]), detections[1]])
    with pytest.raises(ValueError, match="detections: 1 entries but the gallery has 2"):
        evaluate_detection(gallery, detections[:1])
