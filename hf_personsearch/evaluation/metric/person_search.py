"""``evaluate`` module for person search: a thin wrapper over :mod:`hf_personsearch.evaluation`.

Load it offline by path (no Hub access needed)::

    import evaluate
    from hf_personsearch.evaluation import metric_path

    metric = evaluate.load(metric_path())
    result = metric.compute(gallery=gallery, detections=detections, queries=queries, protocol="prw")

``compute`` takes the same keyword arguments as ``evaluate_search`` (``task="detection"`` switches to
``evaluate_detection``) and returns the same result dict. The protocol logic lives in the package, not
here, because ``evaluate`` is in maintenance mode: the metric keeps working without it.
"""

import datasets
import evaluate

from hf_personsearch import evaluation

_DESCRIPTION = """Person search mAP / top-k (PRW, CUHK-SYSU, PoseTrack21 protocols) and detection AP / recall,
equal to the community's NAE/SeqNet evaluation code on the same inputs."""

_KWARGS_DESCRIPTION = """
Args:
    gallery: list of {"image_id", "boxes" (n,4) xyxy, "person_ids" (n,), "camera_id"} per gallery image.
    detections: list aligned with gallery of {"boxes" (m,4), "scores" (m,), "embeddings" (m,d)}.
    queries: list of {"image_id", "box" (4,), "person_id", "camera_id", "embedding" (d,), "gallery"?}.
    protocol: "prw" | "cuhk_sysu" | "posetrack21".
    task: "search" (default) or "detection" (then queries/protocol are not used).
    Any other keyword goes to evaluate_search / evaluate_detection (det_thresh, cross_camera, topk, cbgm, ...).
Returns:
    search: {"mAP", "top1", "top5", "top10", "per_query", ...}; detection: {"ap", "recall", ...}.
"""

_CITATION = """@inproceedings{hybrid_pretraining_person_search_2024,
  title={Divide and Conquer: Hybrid Pre-training for Person Search},
  booktitle={AAAI},
  year={2024}
}"""


class PersonSearch(evaluate.Metric):
    """Person search and detection metrics; inputs are whole galleries, so ``compute`` is called directly."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float32")}),
        )

    def compute(self, *, gallery, detections, queries=None, protocol=None, task="search", **kwargs):
        """Evaluate a whole gallery at once (no add_batch: the protocols need every query and image together)."""
        if task == "detection":
            return dict(evaluation.evaluate_detection(gallery, detections, **kwargs))
        if task != "search":
            raise ValueError(f"task: expected 'search' or 'detection', got {task!r}")
        return dict(evaluation.evaluate_search(gallery, detections, queries, protocol, **kwargs))

    def _compute(self, predictions=None, references=None):
        raise NotImplementedError("call compute(gallery=..., detections=..., queries=..., protocol=...)")
