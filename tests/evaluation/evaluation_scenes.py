"""Tiny hand-made galleries shared by the evaluation tests (similarities chosen exactly)."""

import numpy as np

PERSON = 7
QUERY_BOX = [0.0, 0.0, 50.0, 100.0]


def vec(similarity: float) -> list[float]:
    """A 2-d embedding whose dot product with the query embedding [1, 0] is exactly ``similarity``."""
    return [similarity, float(np.sqrt(max(0.0, 1.0 - similarity**2)))]


def image(image_id, camera, boxes, person_ids):
    return {"image_id": image_id, "boxes": boxes, "person_ids": person_ids, "camera_id": camera}


def dets(rows):
    """rows: (box, score, similarity) -> a detections dict."""
    return {
        "boxes": [r[0] for r in rows],
        "scores": [r[1] for r in rows],
        "embeddings": [vec(r[2]) for r in rows] if rows else np.zeros((0, 2)),
    }


def prw_scene(d_similarity: float = 0.7):
    """Query image q (camera 1) and four gallery images; person 7 occurs in a, b and c.

    a (cam 2): best match 0.9 (TP) + a second overlapping detection 0.6 (negative: only the best counts)
    b (cam 1): match 0.8 (TP)
    c (cam 2): person 7 present but only a detection below det_thresh (score 0.2, similarity 0.99)
    d (cam 3): another person, similarity ``d_similarity`` (negative) + a 0.99 detection with score 0.3
    q itself holds a 0.95 detection of the query person (must be excluded: it is the query image).
    """
    gallery = [
        image("q.jpg", 1, [QUERY_BOX, [200, 0, 250, 100]], [PERSON, -1]),
        image("a.jpg", 2, [[0, 0, 50, 100]], [PERSON]),
        image("b.jpg", 1, [[100, 100, 150, 200]], [PERSON]),
        image("c.jpg", 2, [[0, 0, 50, 100]], [PERSON]),
        image("d.jpg", 3, [[0, 0, 50, 100]], [3]),
    ]
    detections = [
        dets([(QUERY_BOX, 0.9, 0.95)]),
        dets([([0, 0, 50, 100], 0.9, 0.9), ([0, 0, 50, 90], 0.9, 0.6)]),
        dets([([100, 100, 150, 200], 0.9, 0.8)]),
        dets([([0, 0, 50, 100], 0.2, 0.99)]),
        dets([([0, 0, 50, 100], 0.9, d_similarity), ([300, 0, 350, 100], 0.3, 0.99)]),
    ]
    query = {"image_id": "q.jpg", "box": QUERY_BOX, "person_id": PERSON, "camera_id": 1, "embedding": [1.0, 0.0]}
    return gallery, detections, [query]
