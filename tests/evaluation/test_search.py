"""evaluate_search: one hand-computed case per protocol rule, then properties on random scenes."""

import numpy as np
import pytest
import torch
from evaluation_scenes import PERSON, QUERY_BOX, dets, image, prw_scene

from hf_personsearch.evaluation import evaluate_query_subsets, evaluate_search

# prw_scene ranking (gallery = a, b, c, d): a 0.9 TP, b 0.8 TP, d 0.7 N, a 0.6 N; count_gt = 3 (a, b, c)
# sklearn AP = 1/2 * 1 + 1/2 * 2/2 = 1, times recall 2/3.
EXPECTED_PRW_AP = 2 / 3


def test_prw_hand_computed_ap_is_scaled_by_recall():
    # fails if AP is not multiplied by the recall (would be 1.0), if count_gt skips the image without
    # a kept detection (c: recall 2/2 -> 1.0), if the second match in a counts as TP (0.917),
    # if the query's own image stays in the gallery (0.95 negative first -> 0.389),
    # or if detections below det_thresh are kept (c's 0.99 TP, d's 0.99 negative first)
    result = evaluate_search(*prw_scene(), protocol="prw")
    assert result["mAP"] == pytest.approx(EXPECTED_PRW_AP, abs=1e-12)
    assert result["top1"] == 1.0 and result["top5"] == 1.0 and result["top10"] == 1.0
    entry = result["per_query"][0]
    assert entry["image_id"] == "q.jpg" and entry["person_id"] == PERSON
    assert entry["recall"] == pytest.approx(2 / 3)
    ranked = [(r["image_id"], r["similarity"], r["correct"]) for r in entry["ranked"]]
    assert ranked == [("a.jpg", 0.9, True), ("b.jpg", 0.8, True), ("d.jpg", 0.7, False), ("a.jpg", 0.6, False)]
    assert entry["ranked"][3]["box"] == [0.0, 0.0, 50.0, 90.0]


def test_topk_counts_the_first_true_positive_rank():
    # d's negative now 0.95 -> ranks N, TP, TP, N: top-1 misses, top-2 hits;
    # sklearn AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12, times recall 2/3
    result = evaluate_search(*prw_scene(d_similarity=0.95), protocol="prw", topk=(1, 2))
    assert result["top1"] == 0.0 and result["top2"] == 1.0
    assert result["mAP"] == pytest.approx(7 / 12 * 2 / 3, abs=1e-12)


def test_cross_camera_keeps_only_other_cameras():
    # query camera 1: b (camera 1) leaves the gallery; count_gt = 2 (a, c); ranks a TP, d N, a N -> 1 * 1/2
    result = evaluate_search(*prw_scene(), protocol="prw", cross_camera=True)
    assert result["mAP"] == pytest.approx(0.5, abs=1e-12)
    assert all(r["image_id"] != "b.jpg" for r in result["per_query"][0]["ranked"])


def test_small_box_iou_rule():
    # a 10 x 20 person needs IoU >= 200 / (20 * 30) = 1/3; the detection has IoU 80/200 = 0.4 -> TP.
    # The same IoU on a large person (threshold 0.5) is a miss.
    def scene(gt, det_box):
        gallery = [image("q.jpg", 1, [QUERY_BOX], [PERSON]), image("e.jpg", 2, [gt], [PERSON])]
        detections = [dets([]), dets([(det_box, 0.9, 0.8)])]
        query = {"image_id": "q.jpg", "box": QUERY_BOX, "person_id": PERSON, "embedding": [1.0, 0.0]}
        return gallery, detections, [query]

    assert evaluate_search(*scene([0, 0, 10, 20], [0, 0, 10, 8]), protocol="prw")["mAP"] == 1.0
    assert evaluate_search(*scene([0, 0, 100, 200], [0, 0, 100, 80]), protocol="prw")["mAP"] == 0.0


def test_cuhk_sysu_uses_the_query_gallery_list():
    gallery, detections, queries = prw_scene()
    # TestG list: a and c contain the person, d is a distractor; b is not in this query's gallery
    queries[0]["gallery"] = [
        {"image_id": "a.jpg", "box": [0, 0, 50, 100]},
        {"image_id": "c.jpg", "box": [0, 0, 50, 100]},
        {"image_id": "d.jpg", "box": None},
    ]
    result = evaluate_search(gallery, detections, queries, protocol="cuhk_sysu")
    assert result["mAP"] == pytest.approx(1.0 * 1 / 2, abs=1e-12)  # a TP, d N, a N; count_gt 2
    assert {r["image_id"] for r in result["per_query"][0]["ranked"]} == {"a.jpg", "d.jpg"}
    # without a list: the full set, every image but the query's own, occurrences by person id
    queries[0]["gallery"] = None
    assert evaluate_search(gallery, detections, queries, protocol="cuhk_sysu")["mAP"] == pytest.approx(2 / 3)


def test_cuhk_sysu_gallery_list_box_decides_the_match():
    gallery, detections, queries = prw_scene()
    # the list puts the person at b's detection position in image a: no detection of a overlaps it
    queries[0]["gallery"] = [{"image_id": "a.jpg", "box": [100, 100, 150, 200]}, {"image_id": "d.jpg", "box": None}]
    assert evaluate_search(gallery, detections, queries, protocol="cuhk_sysu")["mAP"] == 0.0


def test_posetrack21_skips_queries_without_occurrence_and_removes_ignored_detections():
    gallery, detections, queries = prw_scene()
    absent = dict(queries[0], person_id=99)
    # ignore region over d's negative detection: removed -> ranks a TP, b TP, a N -> AP 1 * 2/3 unchanged,
    # but with the negative at 0.95 (first) the removal lifts top-1 from 0 to 1
    gallery, detections, queries = prw_scene(d_similarity=0.95)
    gallery[4]["ignore_regions"] = [[0, 0, 50, 100]]
    gallery[4]["boxes"] = np.zeros((0, 4))
    gallery[4]["person_ids"] = []
    result = evaluate_search(gallery, detections, queries + [absent], protocol="posetrack21")
    assert result["skipped_queries"] == [1] and result["num_queries"] == 1
    assert result["top1"] == 1.0 and result["mAP"] == pytest.approx(2 / 3, abs=1e-12)
    # PRW has no ignore rule: the negative stays first
    assert evaluate_search(gallery, detections, queries, protocol="prw")["top1"] == 0.0
    with pytest.raises(ValueError, match=r"queries\[1\].*occurs in no image"):
        evaluate_search(gallery, detections, queries + [absent], protocol="prw")


def test_cbgm_rescores_with_the_query_context():
    # query person q = e1 with a companion c = e2. Image t holds the person (similarity 0.5) and the
    # companion; image f holds a stranger more similar to the query (0.7). Without CBGM f ranks first.
    # CBGM on t: matching q-t (0.5) + c-companion (1.0) = 1.5 becomes t's similarity; on f only q-f (0.7).
    t_emb, companion, stranger = [0.5, 0.0, np.sqrt(0.75)], [0.0, 1.0, 0.0], [0.7, 0.0, np.sqrt(0.51)]
    gallery = [
        image("q.jpg", 1, [QUERY_BOX, [100, 0, 150, 100]], [PERSON, 5]),
        image("t.jpg", 2, [[0, 0, 50, 100], [100, 0, 150, 100]], [PERSON, 5]),
        image("f.jpg", 2, [[0, 0, 50, 100]], [3]),
    ]
    detections = [
        {"boxes": np.zeros((0, 4)), "scores": [], "embeddings": np.zeros((0, 3))},
        {"boxes": [[0, 0, 50, 100], [100, 0, 150, 100]], "scores": [0.9, 0.9], "embeddings": [t_emb, companion]},
        {"boxes": [[0, 0, 50, 100]], "scores": [0.9], "embeddings": [stranger]},
    ]
    query = {
        "image_id": "q.jpg",
        "box": QUERY_BOX,
        "person_id": PERSON,
        "embedding": [1.0, 0.0, 0.0],
        "context_embeddings": [companion],
    }
    plain = evaluate_search(gallery, detections, [query], protocol="prw")
    assert plain["top1"] == 0.0 and plain["mAP"] == pytest.approx(0.5, abs=1e-12)
    rescored = evaluate_search(gallery, detections, [query], protocol="prw", cbgm=True)
    assert rescored["top1"] == 1.0 and rescored["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert rescored["per_query"][0]["ranked"][0]["similarity"] == pytest.approx(1.5)


def test_float32_near_ties_are_decided_exactly():
    # TP at 0.5 + 1e-9 and a negative at 0.5 round to the same float32: the exact order must win
    gallery = [
        image("q.jpg", 1, [QUERY_BOX], [PERSON]),
        image("a.jpg", 2, [QUERY_BOX], [PERSON]),
        image("d.jpg", 2, [QUERY_BOX], [3]),
    ]
    detections = [
        {"boxes": np.zeros((0, 4)), "scores": [], "embeddings": np.zeros((0, 2))},
        {"boxes": [QUERY_BOX], "scores": [0.9], "embeddings": [[0.5 + 1e-9, 0.0]]},
        {"boxes": [QUERY_BOX], "scores": [0.9], "embeddings": [[0.5, 0.0]]},
    ]
    query = {"image_id": "q.jpg", "box": QUERY_BOX, "person_id": PERSON, "embedding": [1.0, 0.0]}
    result = evaluate_search(gallery, detections, [query], protocol="prw")
    assert result["mAP"] == 1.0 and result["top1"] == 1.0


def test_exact_tie_between_true_positive_and_negative_counts_against_the_query():
    gallery, detections, queries = prw_scene(d_similarity=0.9)  # d's negative ties a's TP at 0.9
    result = evaluate_search(gallery, detections, queries, protocol="prw", topk=(1, 2))
    assert result["top1"] == 0.0 and result["top2"] == 1.0
    # sklearn groups the tie: precision 1/2 at recall 1/2, then 2/3 at recall 1 -> (1/2 + 2/3) / 2 * 2/3
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2 * 2 / 3, abs=1e-12)


def test_torch_inputs_give_the_same_result():
    gallery, detections, queries = prw_scene()
    as_torch = [{k: torch.tensor(v, dtype=torch.float32) for k, v in d.items()} for d in detections]
    queries_torch = [dict(queries[0], embedding=torch.tensor([1.0, 0.0]), box=torch.tensor(QUERY_BOX))]
    result = evaluate_search(gallery, as_torch, queries_torch, protocol="prw")
    assert result["mAP"] == pytest.approx(EXPECTED_PRW_AP, abs=1e-6)


def test_result_renders_as_a_table():
    text = str(evaluate_search(*prw_scene(), protocol="prw"))
    assert "| protocol | queries | mAP   | top-1  | top-5  | top-10 |" in text
    assert "| prw      | 1       | 66.67 | 100.00 | 100.00 | 100.00 |" in text


def test_query_subsets_take_embeddings_from_the_full_query_list():
    gallery, detections, queries = prw_scene()
    subset_query = {
        "image_id": "q.jpg",
        "box": QUERY_BOX,
        "person_id": PERSON,
        "gallery": [{"image_id": "a.jpg", "box": [0, 0, 50, 100]}, {"image_id": "d.jpg", "box": None}],
    }
    results = evaluate_query_subsets(gallery, detections, queries, {"occlusion": [subset_query]})
    assert results["all"]["mAP"] == pytest.approx(2 / 3)
    assert results["occlusion"]["mAP"] == pytest.approx(1.0)  # a TP 0.9, d N 0.7, a N 0.6; count_gt 1
    with pytest.raises(ValueError, match=r"subsets\['low_resolution'\]\[0\].*no query"):
        evaluate_query_subsets(
            gallery, detections, queries, {"low_resolution": [dict(subset_query, box=[1, 1, 2, 2])]}
        )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda g, d, q: d.pop(), r"detections: 4 entries but the gallery has 5"),
        (lambda g, d, q: g[1].update(boxes=[[0, 0, 1]]), r"gallery\[1\] \(image 'a.jpg'\)\['boxes'\]: expected shape"),
        (lambda g, d, q: g[1].update(person_ids=[1, 2]), r"gallery\[1\].*1 boxes but 2 person_ids"),
        (lambda g, d, q: d[1].update(scores=[0.9, float("nan")]), r"detections\[1\].*\['scores'\].*NaN"),
        (lambda g, d, q: d[2].update(embeddings=[[float("nan"), 0.0]]), r"detections\[2\] \(image 'b.jpg'\).*NaN"),
        (lambda g, d, q: d[2].update(embeddings=[[1.0, 0.0, 0.0]]), r"detections\[2\].*dimension 3"),
        (lambda g, d, q: q[0].update(image_id="zz.jpg"), r"queries\[0\].*'zz.jpg' is not in the gallery"),
        (lambda g, d, q: q[0].update(embedding=[1.0, 0.0, 0.0]), r"queries\[0\].*\['embedding'\]: dimension 3"),
        (lambda g, d, q: q[0].pop("box"), r"queries\[0\].*missing key 'box'"),
        (lambda g, d, q: g[2].update(image_id="a.jpg"), r"gallery\[2\].*already used by gallery\[1\]"),
    ],
)
def test_malformed_input_names_the_item(mutate, message):
    gallery, detections, queries = prw_scene()
    mutate(gallery, detections, queries)
    with pytest.raises(ValueError, match=message):
        evaluate_search(gallery, detections, queries, protocol="prw")


def test_unknown_protocol_and_missing_list_image():
    with pytest.raises(ValueError, match="protocol: expected one of"):
        evaluate_search(*prw_scene(), protocol="market1501")
    gallery, detections, queries = prw_scene()
    queries[0]["gallery"] = [{"image_id": "nowhere.jpg", "box": None}]
    with pytest.raises(ValueError, match=r"queries\[0\].*\['gallery'\]\[0\]: image 'nowhere.jpg' is not in"):
        evaluate_search(gallery, detections, queries, protocol="cuhk_sysu")


# ---------------------------------------------------------------- properties on random scenes


def random_scene(seed: int, num_images: int = 30, num_people: int = 8, dim: int = 16, perfect: bool = False):
    """Random gallery (3 cameras); detections = jittered GT boxes + false positives; 10 queries."""
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=(num_people, dim))
    identity /= np.linalg.norm(identity, axis=1, keepdims=True)
    if perfect:
        identity = np.eye(num_people, dim)
    gallery, detections = [], []
    for g in range(num_images):
        n = int(rng.integers(1, 4))
        people = rng.choice(num_people, n, replace=False)
        x0 = np.arange(n) * 120.0 + rng.uniform(0, 20, n)
        boxes = np.stack([x0, np.zeros(n), x0 + 50, np.full(n, 120.0)], 1)
        gallery.append(image(f"img{g:03d}.jpg", g % 3, boxes, people))
        if perfect:
            detections.append({"boxes": boxes, "scores": np.ones(n), "embeddings": identity[people]})
            continue
        det_boxes = np.concatenate([boxes + rng.normal(scale=4, size=boxes.shape), [[500, 0, 550, 100]]])
        emb = np.concatenate([identity[people], rng.normal(size=(1, dim)) / 4]) + rng.normal(
            scale=0.5, size=(n + 1, dim)
        )
        detections.append({"boxes": det_boxes, "scores": rng.uniform(0.3, 1, n + 1), "embeddings": emb})
    queries = []
    for qi in range(10):
        g = gallery[(qi * 7) % num_images]
        k = int(rng.integers(len(g["person_ids"])))
        emb = identity[g["person_ids"][k]] + (0 if perfect else rng.normal(scale=0.5, size=dim))
        queries.append(
            {
                "image_id": g["image_id"],
                "box": g["boxes"][k],
                "person_id": int(g["person_ids"][k]),
                "camera_id": g["camera_id"],
                "embedding": emb,
            }
        )
    return gallery, detections, queries


def queries_with_occurrences(gallery, queries):
    return [
        q
        for q in queries
        if any(q["person_id"] in g["person_ids"] and g["image_id"] != q["image_id"] for g in gallery)
    ]


@pytest.mark.parametrize("seed", range(3))
def test_perfect_detections_and_embeddings_give_map_one(seed):
    gallery, detections, queries = random_scene(seed, perfect=True)
    result = evaluate_search(gallery, detections, queries_with_occurrences(gallery, queries), protocol="prw")
    assert result["mAP"] == pytest.approx(1.0, abs=1e-12) and result["top1"] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_dropping_a_detected_true_positive_scales_ap_by_recall(seed):
    gallery, detections, queries = random_scene(seed, perfect=True)
    query = queries_with_occurrences(gallery, queries)[0]
    occurrences = [
        i
        for i, g in enumerate(gallery)
        if query["person_id"] in g["person_ids"] and g["image_id"] != query["image_id"]
    ]
    victim = occurrences[0]
    keep = np.asarray(gallery[victim]["person_ids"]) != query["person_id"]
    detections[victim] = {k: np.asarray(v)[keep] for k, v in detections[victim].items()}
    result = evaluate_search(gallery, detections, [query], protocol="prw")
    assert result["mAP"] == pytest.approx((len(occurrences) - 1) / len(occurrences), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_permuting_the_gallery_changes_nothing(seed):
    gallery, detections, queries = random_scene(seed)
    queries = queries_with_occurrences(gallery, queries)
    order = np.random.default_rng(seed + 100).permutation(len(gallery))
    before = evaluate_search(gallery, detections, queries, protocol="prw", chunk_size=3)
    after = evaluate_search([gallery[i] for i in order], [detections[i] for i in order], queries, protocol="prw")
    assert after["mAP"] == pytest.approx(before["mAP"], abs=1e-12)
    assert [after[f"top{k}"] for k in (1, 5, 10)] == [before[f"top{k}"] for k in (1, 5, 10)]
    np.testing.assert_allclose([p["ap"] for p in after["per_query"]], [p["ap"] for p in before["per_query"]])


@pytest.mark.parametrize("seed", range(5))
def test_cross_camera_equals_removing_same_camera_images(seed):
    gallery, detections, queries = random_scene(seed)
    for query in queries:
        same_camera = [g["camera_id"] == query["camera_id"] and g["image_id"] != query["image_id"] for g in gallery]
        kept = [i for i, s in enumerate(same_camera) if not s]
        sub_gallery = [gallery[i] for i in kept]
        if not queries_with_occurrences(sub_gallery, [query]):
            continue
        cross = evaluate_search(gallery, detections, [query], protocol="prw", cross_camera=True)
        removed = evaluate_search(sub_gallery, [detections[i] for i in kept], [query], protocol="prw")
        assert cross["mAP"] == pytest.approx(removed["mAP"], abs=1e-12)
        assert cross["top1"] == removed["top1"]
        cameras = {g["image_id"]: g["camera_id"] for g in gallery}
        assert all(cameras[r["image_id"]] != query["camera_id"] for r in cross["per_query"][0]["ranked"])


def test_cross_camera_is_rejected_for_cuhk_sysu():
    with pytest.raises(ValueError, match="CUHK-SYSU has no camera ids"):
        evaluate_search(*prw_scene(), protocol="cuhk_sysu", cross_camera=True)


@pytest.mark.parametrize("seed", range(3))
def test_float32_path_equals_the_float64_path(seed):
    # cbgm=True with k1 = 0 re-scores nothing but computes every similarity in float64
    gallery, detections, queries = random_scene(seed)
    queries = queries_with_occurrences(gallery, queries)
    fast = evaluate_search(gallery, detections, queries, protocol="prw", chunk_size=4)
    exact = evaluate_search(gallery, detections, queries, protocol="prw", cbgm=True, cbgm_top_detections=0)
    np.testing.assert_allclose([p["ap"] for p in fast["per_query"]], [p["ap"] for p in exact["per_query"]], atol=1e-12)
    assert [fast[f"top{k}"] for k in (1, 5, 10)] == [exact[f"top{k}"] for k in (1, 5, 10)]
    for a, b in zip(fast["per_query"], exact["per_query"]):
        assert [r["correct"] for r in a["ranked"]] == [r["correct"] for r in b["ranked"]]


def test_queries_with_and_without_gallery_lists_in_one_call():
    gallery, detections, queries = prw_scene()
    listed = dict(
        queries[0], gallery=[{"image_id": "a.jpg", "box": [0, 0, 50, 100]}, {"image_id": "d.jpg", "box": None}]
    )
    both = evaluate_search(gallery, detections, [listed, queries[0]], protocol="cuhk_sysu")
    assert [p["ap"] for p in both["per_query"]] == pytest.approx([1.0, 2 / 3])
    assert both["mAP"] == pytest.approx((1.0 + 2 / 3) / 2)
