"""The `evaluate` module loads offline by path and returns what the plain functions return."""

import os

import pytest
from evaluation_scenes import prw_scene

from hf_personsearch.evaluation import evaluate_search, metric_path

evaluate = pytest.importorskip("evaluate")


def test_metric_module_loads_offline_and_matches_evaluate_search(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.path.isfile(metric_path())
    metric = evaluate.load(metric_path())
    gallery, detections, queries = prw_scene()
    result = metric.compute(gallery=gallery, detections=detections, queries=queries, protocol="prw", cross_camera=True)
    expected = evaluate_search(gallery, detections, queries, "prw", cross_camera=True)
    assert result["mAP"] == pytest.approx(0.5) and result == dict(expected)
    detection = metric.compute(gallery=gallery, detections=detections, task="detection", det_thresh=0.5)
    assert set(detection) >= {"ap", "recall"}
    with pytest.raises(ValueError, match="task"):
        metric.compute(gallery=gallery, detections=detections, task="tracking")
