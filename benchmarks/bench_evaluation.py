"""Speed of ``evaluate_search`` at PRW scale against a straightforward per-query reference loop.

The reference loop follows the community's ``eval_func.py`` line by line (one query at a time, one
gallery image at a time, sort by similarity, first IoU match is the true positive, sklearn-style AP x
recall). The script asserts that both give the same mAP, top-k and per-query AP (1e-6), then prints the
times and their ratio. Data: synthetic identities (prototype + noise embeddings, jittered boxes), so the
true positives rank like a trained model's, not like random vectors.

    .venv/bin/python benchmarks/bench_evaluation.py                 # PRW scale, reference on a query subset
    .venv/bin/python benchmarks/bench_evaluation.py --reference-queries 2057   # reference on all queries
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hf_personsearch.evaluation import evaluate_search

try:  # the reference loop uses scikit-learn's own AP when it is installed (what the community code calls)
    from sklearn.metrics import average_precision_score as reference_average_precision

    REFERENCE_AP = "sklearn.metrics.average_precision_score"
except ImportError:
    from hf_personsearch.evaluation import average_precision as reference_average_precision

    REFERENCE_AP = "hf_personsearch average_precision (sklearn not installed)"


def make_prw_like(
    num_images: int, dets_per_image: int, dim: int, num_queries: int, num_people: int, noise: float, seed: int = 0
):
    """Synthetic PRW-like gallery, detections and queries (6 cameras, ~5 labeled persons per image)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(num_people, dim))
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    gallery, detections = [], []
    for g in range(num_images):
        num_persons = 5
        person_ids = rng.choice(num_people, size=num_persons, replace=False)
        x = rng.uniform(0, 1700, num_persons)
        y = rng.uniform(0, 700, num_persons)
        w = rng.uniform(20, 150, num_persons)
        h = w * rng.uniform(2.0, 3.0, num_persons)
        boxes = np.stack([x, y, x + w, y + h], 1)
        gallery.append(
            {
                "image_id": f"c{g % 6 + 1}s1_{g:06d}.jpg",
                "boxes": boxes,
                "person_ids": person_ids,
                "camera_id": g % 6 + 1,
            }
        )
        jitter = rng.normal(scale=0.08, size=(num_persons, 4)) * np.stack([w, h, w, h], 1)
        fp = dets_per_image - num_persons
        fx, fy = rng.uniform(0, 1800, fp), rng.uniform(0, 800, fp)
        fw = rng.uniform(20, 150, fp)
        false_boxes = np.stack([fx, fy, fx + fw, fy + 2.5 * fw], 1)
        det_boxes = np.concatenate([boxes + jitter, false_boxes])
        emb = np.concatenate([prototypes[person_ids], rng.normal(size=(fp, dim)) / np.sqrt(dim)])
        emb = emb + rng.normal(scale=noise / np.sqrt(dim), size=emb.shape)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        scores = np.concatenate([rng.uniform(0.6, 1.0, num_persons), rng.uniform(0.0, 1.0, fp)])
        detections.append(
            {"boxes": det_boxes, "scores": scores, "embeddings": (emb * scores[:, None]).astype(np.float32)}
        )
    queries = []
    for _ in range(num_queries):
        g = int(rng.integers(num_images))
        k = int(rng.integers(5))
        person = int(gallery[g]["person_ids"][k])
        emb = prototypes[person] + rng.normal(scale=noise / np.sqrt(dim), size=dim)
        queries.append(
            {
                "image_id": gallery[g]["image_id"],
                "box": gallery[g]["boxes"][k],
                "person_id": person,
                "camera_id": gallery[g]["camera_id"],
                "embedding": (emb / np.linalg.norm(emb)).astype(np.float32),
            }
        )
    return gallery, detections, queries


def _iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _kept_detections(gallery, detections, det_thresh):
    """image_id -> (boxes, embeddings) of the detections scoring at least det_thresh."""
    kept = {}
    for item, det in zip(gallery, detections):
        keep = np.asarray(det["scores"]) >= det_thresh
        if keep.any():
            kept[item["image_id"]] = (
                np.asarray(det["boxes"], np.float64)[keep],
                np.asarray(det["embeddings"], np.float64)[keep],
            )
    return kept


def _score_image(boxes, feats, feat, gt, y_true, y_score) -> int:
    """Append one gallery image's labels and similarities; only the most similar detection matching the
    ground truth ``gt`` (None: the person is absent) is a true positive. Returns 1 for a true positive."""
    sim = feats @ feat
    label = np.zeros(len(sim), dtype=int)
    found = 0
    if gt is not None:
        w, h = gt[2] - gt[0], gt[3] - gt[1]
        thresh = min(0.5, w * h / ((w + 10) * (h + 10)))
        order = np.argsort(sim)[::-1]
        sim, boxes = sim[order], boxes[order]
        for j, box in enumerate(boxes):
            if _iou(box, gt) >= thresh:
                label[j] = 1
                found = 1
                break
    y_true.extend(label.tolist())
    y_score.extend(sim.tolist())
    return found


def _query_result(y_true, y_score, count_tp, count_gt, topk):
    """(AP x recall, top-k hits) of one query from its ranked lists."""
    recall = count_tp / count_gt
    ap = 0.0 if count_tp == 0 else reference_average_precision(y_true, y_score) * recall
    order = np.argsort(y_score)[::-1]
    ranked = np.asarray(y_true)[order]
    return ap, [min(1, int(ranked[:k].sum())) for k in topk]


def reference_prw(gallery, detections, queries, det_thresh=0.5, cross_camera=False, topk=(1, 5, 10)):
    """The straightforward per-query loop of the community's PRW evaluation (no vectorisation)."""
    kept = _kept_detections(gallery, detections, det_thresh)
    aps, accs = [], []
    for query in queries:
        feat = np.asarray(query["embedding"], np.float64)
        occurrences = {}
        for item in gallery:
            if item["image_id"] != query["image_id"] and query["person_id"] in item["person_ids"]:
                occurrences[item["image_id"]] = item["boxes"][np.asarray(item["person_ids"]) == query["person_id"]][0]
        y_true, y_score = [], []
        count_gt = count_tp = 0
        for item in gallery:
            name = item["image_id"]
            if name == query["image_id"] or (cross_camera and item["camera_id"] == query["camera_id"]):
                continue
            count_gt += name in occurrences
            if name not in kept:
                continue
            count_tp += _score_image(*kept[name], feat, occurrences.get(name), y_true, y_score)
        ap, acc = _query_result(y_true, y_score, count_tp, count_gt, topk)
        aps.append(ap)
        accs.append(acc)
    accs = np.mean(accs, axis=0)
    return {"mAP": float(np.mean(aps)), "aps": aps, **{f"top{k}": float(a) for k, a in zip(topk, accs)}}


def add_cuhk_gallery_lists(gallery, queries, gallery_size: int, seed: int = 1) -> list[dict]:
    """CUHK-SYSU-style TestG lists: every image holding the query person (box given) first, then distractors.

    Returns the queries whose person occurs in another image (CUHK-SYSU queries always do).
    """
    rng = np.random.default_rng(seed)
    occurrences: dict[int, list[tuple[str, np.ndarray]]] = {}
    for item in gallery:
        for box, person in zip(item["boxes"], item["person_ids"]):
            occurrences.setdefault(int(person), []).append((item["image_id"], box))
    kept = []
    for query in queries:
        positives = [(name, box) for name, box in occurrences[query["person_id"]] if name != query["image_id"]]
        if not positives:
            continue
        excluded = {name for name, _ in positives} | {query["image_id"]}
        distractors = []
        while len(distractors) < gallery_size - len(positives):
            name = gallery[int(rng.integers(len(gallery)))]["image_id"]
            if name not in excluded:
                excluded.add(name)
                distractors.append(name)
        query["gallery"] = [{"image_id": name, "box": box} for name, box in positives]
        query["gallery"] += [{"image_id": name, "box": None} for name in distractors]
        kept.append(query)
    return kept


def reference_cuhk(gallery, detections, queries, det_thresh=0.5, topk=(1, 5, 10)):
    """The straightforward per-query loop of the community's CUHK-SYSU evaluation (TestG lists)."""
    kept = _kept_detections(gallery, detections, det_thresh)
    aps, accs = [], []
    for query in queries:
        feat = np.asarray(query["embedding"], np.float64)
        y_true, y_score = [], []
        count_gt = count_tp = 0
        for entry in query["gallery"]:
            gt = entry["box"]
            count_gt += gt is not None
            if entry["image_id"] not in kept:
                continue
            count_tp += _score_image(*kept[entry["image_id"]], feat, gt, y_true, y_score)
        ap, acc = _query_result(y_true, y_score, count_tp, count_gt, topk)
        aps.append(ap)
        accs.append(acc)
    accs = np.mean(accs, axis=0)
    return {"mAP": float(np.mean(aps)), "aps": aps, **{f"top{k}": float(a) for k, a in zip(topk, accs)}}


def bench_cuhk(args) -> None:
    """CUHK-SYSU scale: 2,900 queries, 6,978 gallery images, TestG100 lists."""
    gallery, detections, queries = make_prw_like(6978, args.dets, args.dim, 2900, 2900, args.noise, seed=2)
    queries = add_cuhk_gallery_lists(gallery, queries, 100)
    start, cpu_start = time.perf_counter(), time.process_time()
    fast = evaluate_search(gallery, detections, queries, "cuhk_sysu")
    fast_time, cpu_time = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"evaluate_search cuhk_sysu: {len(queries)} queries x TestG100 lists over 6978 images")
    print(f"  wall {fast_time:.2f} s  (process CPU {cpu_time:.2f} s)  mAP {fast['mAP']:.4f}  top-1 {fast['top1']:.4f}")
    subset = queries[: args.reference_queries * 5]
    start = time.perf_counter()
    reference = reference_cuhk(gallery, detections, subset)
    reference_time = time.perf_counter() - start
    fast_subset = evaluate_search(gallery, detections, subset, "cuhk_sysu")
    for key in ("mAP", "top1", "top5", "top10"):
        assert abs(fast_subset[key] - reference[key]) < 1e-6, (key, fast_subset[key], reference[key])
    assert np.allclose([p["ap"] for p in fast_subset["per_query"]], reference["aps"], atol=1e-6, rtol=0)
    print(
        f"  reference loop on {len(subset)} queries: {reference_time:.2f} s, results equal to 1e-6 (mAP {reference['mAP']:.6f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6112, help="gallery images (PRW test: 6,112)")
    parser.add_argument("--dets", type=int, default=20, help="detections per image")
    parser.add_argument("--dim", type=int, default=256, help="embedding size (NAE: 256)")
    parser.add_argument("--queries", type=int, default=2057, help="queries (PRW: 2,057)")
    parser.add_argument("--people", type=int, default=932, help="identities (PRW test: 932 incl. queries)")
    parser.add_argument(
        "--noise",
        type=float,
        default=2.0,
        help="embedding noise relative to the identity signal (sets how hard the search is)",
    )
    parser.add_argument("--reference-queries", type=int, default=100, help="queries the slow reference loop runs on")
    parser.add_argument("--cuhk", action="store_true", help="also run the CUHK-SYSU TestG100 scenario")
    args = parser.parse_args()
    if args.cuhk:
        bench_cuhk(args)

    gallery, detections, queries = make_prw_like(
        args.images, args.dets, args.dim, args.queries, args.people, args.noise
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    fast = evaluate_search(gallery, detections, queries, "prw")
    fast_time, cpu_time = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"evaluate_search: {args.queries} queries x {args.images} images x {args.dets} dets x {args.dim}-d")
    print(f"  wall {fast_time:.2f} s  (process CPU {cpu_time:.2f} s, all threads)")
    print(f"  mAP {fast['mAP']:.4f}  top-1 {fast['top1']:.4f}  top-10 {fast['top10']:.4f}")

    subset = queries[: args.reference_queries]
    reference_time = fast_subset_time = 0.0
    for cross_camera in (False, True):
        start = time.perf_counter()
        fast_subset = evaluate_search(gallery, detections, subset, "prw", cross_camera=cross_camera)
        fast_subset_time += time.perf_counter() - start
        start = time.perf_counter()
        reference = reference_prw(gallery, detections, subset, cross_camera=cross_camera)
        reference_time += time.perf_counter() - start
        for key in ("mAP", "top1", "top5", "top10"):
            assert abs(fast_subset[key] - reference[key]) < 1e-6, (cross_camera, key, fast_subset[key], reference[key])
        fast_aps = np.array([p["ap"] for p in fast_subset["per_query"]])
        assert np.allclose(fast_aps, reference["aps"], atol=1e-6, rtol=0)
        print(f"  cross_camera={cross_camera}: mAP {fast_subset['mAP']:.6f} (reference {reference['mAP']:.6f})")
    print(f"reference per-query loop (AP: {REFERENCE_AP}) on the first {len(subset)} queries, both camera")
    print("settings (reduced: the loop is slow at full size); mAP, top-k and every query's AP equal to 1e-6")
    print(f"  reference {reference_time:.2f} s   vectorised {fast_subset_time:.2f} s")
    print(
        f"  speed-up on the same queries: {reference_time / fast_subset_time:.1f}x ({reference_time / 2 / len(subset):.2f} s per query)"
    )
    reference_time /= 2
    per_query_reference = reference_time / len(subset)
    print(
        f"  extrapolated reference for all {args.queries} queries: {per_query_reference * args.queries:.0f} s "
        f"-> ratio {per_query_reference * args.queries / fast_time:.0f}x"
    )


if __name__ == "__main__":
    main()
