"""An untrained model whose detections all fall below det_thresh scores 0, it does not crash."""

import pytest
from evaluation_scenes import prw_scene

from hf_personsearch.evaluation import evaluate_search


def test_no_detection_above_the_threshold_gives_zero_map_and_no_hits():
    gallery, detections, queries = prw_scene()
    result = evaluate_search(gallery, detections, queries, protocol="prw", det_thresh=0.95)
    assert result["mAP"] == 0.0 and result["top1"] == 0.0 and result["top10"] == 0.0


def test_same_scene_with_a_reachable_threshold_scores_above_zero():
    gallery, detections, queries = prw_scene()
    assert evaluate_search(gallery, detections, queries, protocol="prw", det_thresh=0.5)["mAP"] > 0.0


@pytest.mark.parametrize("protocol", ["posetrack21"])
def test_other_protocols_also_score_zero(protocol):
    gallery, detections, queries = prw_scene()
    assert evaluate_search(gallery, detections, queries, protocol=protocol, det_thresh=0.99)["mAP"] == 0.0
