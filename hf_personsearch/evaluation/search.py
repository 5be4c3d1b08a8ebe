"""Person search protocols of PRW, CUHK-SYSU and PoseTrack21, exact and vectorised across queries.

The rules (those of the NAE/SeqNet ``eval_func.py`` and of PoseTrack21's person search evaluation):

* gallery detections with score >= ``det_thresh`` are kept; similarity = dot product of the query
  embedding with the detection embedding as given (L2-normalised x score in NAE-style models);
* a detection is a positive candidate when its IoU with the query person's ground-truth box in that
  image is >= min(0.5, w*h / ((w+10)*(h+10))); per gallery image only the highest-similarity candidate
  is a true positive, every other detection there is a negative;
* count_gt = number of gallery images that contain the query person, detected or not; AP per query =
  step-wise AP over all kept gallery detections x count_tp / count_gt (0 when count_tp = 0);
* top-k = at least one true positive among the k most similar detections of the query's whole gallery.

Galleries: PRW = every gallery image but the query's own (``cross_camera=True``: only other cameras);
CUHK-SYSU = each query's own TestG{N} list (``query["gallery"]``) or, when that is None, the full set
(every image but the query's own, occurrences found by person id); PoseTrack21 = every image but the
query's own, queries without any occurrence are skipped, and detections lying in ignore regions
(IoU > 0.1 with one, matching no ground-truth box) are removed first.

Speed: one (queries x detections) similarity matrix per chunk of queries; true positives come from the
few candidates that overlap a ground-truth box; the counts AP needs (how many detections score at least
as high as each true positive) come from the entries above the query's lowest true positive only.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..data.schema import NO_IDENTITY
from .average_precision import paired_box_iou, search_iou_threshold
from .detection import in_ignore_regions, one_to_one_matches
from .inputs import Gallery, checked_array, read_detections, read_gallery_annotations, require, to_numpy
from .results import SearchResult

PROTOCOLS = ("prw", "cuhk_sysu", "posetrack21")

CBGM_DEFAULTS = {"prw": (30, 4), "cuhk_sysu": (10, 3), "posetrack21": (30, 4)}
"""SeqNet's CBGM settings per dataset: (k1 = most similar detections whose images are re-scored,
k2 = persons of the query image in the graph, the query included)."""

IGNORE_MATCH_DET_THRESH = 0.01
"""PoseTrack21 finds the detections in ignore regions during its detection evaluation, which keeps
detections with score >= 0.01; the one-to-one GT matching that protects true detections uses the same set."""


def build_gallery(gallery, detections, det_thresh: float, remove_ignored: bool) -> Gallery:
    """Check gallery + detections and flatten the kept detections image after image.

    Embeddings are checked (NaN, dimension) only for kept detections: the others are never read.
    """
    image_ids, index_of, cameras, gt_boxes, gt_person_ids, ignores = read_gallery_annotations(gallery)
    per_image = read_detections(detections, len(image_ids), image_ids, need_embeddings=False)
    boxes, scores, embeddings, counts = [], [], [], []
    dim = None
    for index, ((det_boxes, det_scores, _), gt, ignore) in enumerate(zip(per_image, gt_boxes, ignores)):
        where = f"detections[{index}] (image {image_ids[index]!r})"
        kept = det_scores >= det_thresh
        if remove_ignored and len(ignore):
            candidates = det_scores >= IGNORE_MATCH_DET_THRESH
            ignored = np.zeros(len(det_boxes), dtype=bool)
            matched = one_to_one_matches(gt, det_boxes[candidates], 0.5)
            ignored[candidates] = in_ignore_regions(det_boxes[candidates], ignore, matched)
            kept &= ~ignored
        det_embeddings = to_numpy(require(detections[index], "embeddings", where), None, f"{where}['embeddings']")
        if det_embeddings.ndim != 2 or len(det_embeddings) != len(det_boxes):
            if not (det_embeddings.size == 0 and len(det_boxes) == 0):
                raise ValueError(
                    f"{where}['embeddings']: expected shape ({len(det_boxes)}, d) for {len(det_boxes)} boxes, "
                    f"got {tuple(det_embeddings.shape)}"
                )
            det_embeddings = det_embeddings.reshape(0, dim or 0)
        if kept.any():
            if dim is not None and det_embeddings.shape[1] != dim:
                raise ValueError(f"{where}['embeddings']: dimension {det_embeddings.shape[1]}, earlier images {dim}")
            dim = det_embeddings.shape[1]
            boxes.append(det_boxes[kept])
            scores.append(det_scores[kept])
            embeddings.append(det_embeddings[kept])
        counts.append(int(kept.sum()))
    det_start = np.r_[0, np.cumsum(counts)].astype(np.int64)
    det_image = np.repeat(np.arange(len(image_ids)), counts)
    all_embeddings = np.concatenate(embeddings).astype(np.float64) if embeddings else np.zeros((0, dim or 0))
    finite = np.isfinite(all_embeddings).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        image = int(det_image[row])
        raise ValueError(
            f"detections[{image}] (image {image_ids[image]!r})['embeddings']: kept detection "
            f"{row - det_start[image]} (score >= det_thresh) has NaN or infinite values"
        )
    return Gallery(
        image_ids=image_ids,
        index_of=index_of,
        camera_ids=cameras,
        gt_boxes=gt_boxes,
        gt_person_ids=gt_person_ids,
        ignore_regions=ignores,
        det_start=det_start,
        det_image=det_image,
        det_boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        det_scores=np.concatenate(scores) if scores else np.zeros(0),
        det_embeddings=all_embeddings,
    )


def _person_occurrences(gallery: Gallery) -> dict[int, list[tuple[int, np.ndarray]]]:
    """person id -> [(gallery image index, its box in that image)], first box if listed twice in an image."""
    occurrences: dict[int, list[tuple[int, np.ndarray]]] = {}
    for image_index, (boxes, person_ids) in enumerate(zip(gallery.gt_boxes, gallery.gt_person_ids)):
        seen = set()
        for box, person_id in zip(boxes, person_ids.tolist()):
            if person_id != NO_IDENTITY and person_id not in seen:
                seen.add(person_id)
                occurrences.setdefault(person_id, []).append((image_index, box))
    return occurrences


def _read_gallery_list(gallery_list, where: str, index_of: dict[str, int]) -> tuple[list[int], list]:
    """One query's TestG list -> (gallery image indices, [(image index, GT box)] of the entries with a box).

    Error messages are only built on error: full-set lists have thousands of entries per query.
    """
    member: list[int] = []
    positives = []
    for ei, entry in enumerate(gallery_list):
        entry_id = str(require(entry, "image_id", f"{where}['gallery'][{ei}]"))
        image_index = index_of.get(entry_id)
        if image_index is None:
            raise ValueError(f"{where}['gallery'][{ei}]: image {entry_id!r} is not in the gallery list")
        member.append(image_index)
        box = entry.get("box")
        if box is not None:
            positives.append((image_index, checked_array(box, np.float64, (4,), f"{where}['gallery'][{ei}]['box']")))
    if len(set(member)) != len(member):
        seen: set[int] = set()
        for ei, image_index in enumerate(member):
            if image_index in seen:
                raise ValueError(
                    f"{where}['gallery'][{ei}]: image {gallery_list[ei]['image_id']!r} listed twice in this query's gallery"
                )
            seen.add(image_index)
    return member, positives


def _read_queries(queries, protocol: str, gallery: Gallery, cross_camera: bool, cbgm: bool) -> dict:
    """Check queries; return their embeddings and, per query, its gallery (own image or list) and occurrences."""
    if not isinstance(queries, (list, tuple)) or len(queries) == 0:
        raise ValueError("queries: expected a non-empty list of dicts")
    dim = gallery.det_embeddings.shape[1] if len(gallery.det_embeddings) else None
    occurrences = (
        _person_occurrences(gallery)
        if protocol != "cuhk_sysu" or any(isinstance(q, dict) and q.get("gallery") is None for q in queries)
        else {}
    )
    embeddings, own_image, camera, members, contexts, info = [], [], [], [], [], []
    pair_query, pair_image, pair_box = [], [], []
    for qi, query in enumerate(queries):
        where = f"queries[{qi}]"
        image_id = str(require(query, "image_id", where))
        person_id = int(require(query, "person_id", where))
        where = f"queries[{qi}] (image {image_id!r}, person {person_id})"
        embedding = checked_array(require(query, "embedding", where), np.float64, (-1,), f"{where}['embedding']")
        if dim is not None and embedding.shape[0] != dim:
            raise ValueError(f"{where}['embedding']: dimension {embedding.shape[0]}, gallery embeddings have {dim}")
        dim = embedding.shape[0] if dim is None else dim
        box = checked_array(require(query, "box", where), np.float64, (4,), f"{where}['box']")
        own = gallery.index_of.get(image_id)
        query_camera = int(query["camera_id"]) if query.get("camera_id") is not None else None
        if query_camera is None and own is not None:
            query_camera = int(gallery.camera_ids[own])
        gallery_list = query.get("gallery")
        if gallery_list is not None and protocol != "cuhk_sysu":
            raise ValueError(
                f"{where}: a 'gallery' list is a CUHK-SYSU notion; protocol {protocol!r} uses the whole gallery"
            )
        member = None
        if gallery_list is not None:
            member, positives = _read_gallery_list(gallery_list, where, gallery.index_of)
            for image_index, gt_box in positives:
                pair_query.append(qi)
                pair_image.append(image_index)
                pair_box.append(gt_box)
        else:
            if own is None:
                raise ValueError(
                    f"{where}: query image {image_id!r} is not in the gallery; protocol {protocol!r} needs it there "
                    "(its gallery is every other image)"
                )
            if cross_camera and query_camera is None:
                raise ValueError(f"{where}: cross_camera needs a camera_id")
            for image_index, gt_box in occurrences.get(person_id, []):
                if image_index == own or (cross_camera and gallery.camera_ids[image_index] == query_camera):
                    continue
                pair_query.append(qi)
                pair_image.append(image_index)
                pair_box.append(gt_box)
        context = np.zeros((0, dim))
        if cbgm and query.get("context_embeddings") is not None:
            context = checked_array(
                query["context_embeddings"], np.float64, (-1, dim), f"{where}['context_embeddings']"
            )
        embeddings.append(embedding)
        own_image.append(-1 if own is None else own)
        camera.append(query_camera)
        members.append(member)
        contexts.append(context)
        info.append((image_id, person_id, box.tolist()))
    return {
        "embeddings": np.stack(embeddings),
        "own_image": np.asarray(own_image),
        "camera": camera,
        "members": members,
        "contexts": contexts,
        "info": info,
        "pair_query": np.asarray(pair_query, dtype=np.int64),
        "pair_image": np.asarray(pair_image, dtype=np.int64),
        "pair_box": np.asarray(pair_box, dtype=np.float64).reshape(-1, 4),
    }


def _positive_candidates(gallery: Gallery, pair_image: np.ndarray, pair_box: np.ndarray) -> tuple:
    """(candidate pair index, candidate detection index): detections passing the IoU rule of their pair's GT box."""
    num_dets = gallery.det_start[pair_image + 1] - gallery.det_start[pair_image]
    cand_pair = np.repeat(np.arange(len(pair_image)), num_dets)
    first = np.repeat(gallery.det_start[pair_image], num_dets)
    offset = np.arange(len(cand_pair)) - np.repeat(np.cumsum(num_dets) - num_dets, num_dets)
    cand_det = first + offset
    iou = paired_box_iou(gallery.det_boxes[cand_det], pair_box[cand_pair])
    keep = iou >= search_iou_threshold(pair_box)[cand_pair]
    return cand_pair[keep], cand_det[keep]


def _detections_of_images(gallery: Gallery, images: np.ndarray) -> np.ndarray:
    """Indices of the kept detections of the given gallery images (their contiguous ranges, concatenated)."""
    starts = gallery.det_start[images]
    counts = gallery.det_start[images + 1] - starts
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets


RANK_SPARE = 8
"""Extra entries taken for the ranked top-k list, so float32 near-ties at the k-th place are re-ranked in float64."""


def _kth_largest_lower_bound(similarity: np.ndarray, k: int, block: int = 128) -> np.ndarray:
    """Per row, a value with at least ``k`` entries >= it (or -inf when the row has fewer than k blocks).

    The row is cut into blocks of ``block`` columns; the k-th largest block maximum is such a value (k
    different blocks reach it). One pass over the matrix instead of a partition of every row.
    """
    num_columns = similarity.shape[1]
    block_max = np.maximum.reduceat(similarity, np.arange(0, num_columns, block), axis=1)
    if block_max.shape[1] < k:
        return np.full(len(similarity), -np.inf)
    return -np.partition(-block_max, k - 1, axis=1)[:, k - 1].astype(np.float64)


def _exact_similarity(queries: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Row-wise float64 dot products; the same arithmetic for every caller, so equal inputs give equal bits."""
    return np.multiply(queries, embeddings).sum(axis=1)


def context_bipartite_graph_matching(
    similarity: np.ndarray,
    query_nodes: np.ndarray,
    gallery: Gallery,
    top_detections: int,
) -> None:
    """SeqNet's CBGM, in place on one query's similarity row (excluded detections hold -inf).

    The gallery images of the ``top_detections`` most similar detections are re-scored: a bipartite
    graph joins the query image's persons (``query_nodes``: the query first, then its context persons)
    to that image's detections with dot-product weights; the maximum-weight matching (Kuhn-Munkres,
    here scipy's ``linear_sum_assignment``) is computed, and the detection matched to the query gets the
    matching's total weight as its new similarity. Other detections keep theirs.
    """
    valid = np.flatnonzero(np.isfinite(similarity))
    if len(valid) == 0 or top_detections < 1:
        return
    if len(valid) > top_detections:
        top = valid[np.argpartition(similarity[valid], len(valid) - top_detections)[-top_detections:]]
    else:
        top = valid
    for image_index in np.unique(gallery.det_image[top]):
        start, end = gallery.det_start[image_index], gallery.det_start[image_index + 1]
        weights = query_nodes @ gallery.det_embeddings[start:end].T
        rows, cols = linear_sum_assignment(weights, maximize=True)
        query_match = cols[rows == 0]
        if len(query_match):
            similarity[start + query_match[0]] = weights[rows, cols].sum()


def _average_precision_and_hits(
    values: np.ndarray, num_higher: int, thresholds: np.ndarray, count_gt: int, topk: tuple[int, ...]
) -> tuple[float, list[bool]]:
    """AP x recall and top-k hits of one query from its sorted true-positive scores ``thresholds``.

    ``values``: the exact similarities of the gallery detections between the lowest and the highest
    true-positive score (true positives included); ``num_higher``: how many score above all of them.
    For true positive i, n_ge = detections scoring >= it and tp_ge = true positives scoring >= it;
    step-wise AP x recall = sum_i (tp_ge / n_ge) / count_gt, equal to sklearn's AP (tied scores form one
    operating point) times count_tp / count_gt.
    """
    num_tp = len(thresholds)
    passed = np.searchsorted(thresholds, values, side="right")
    counts = np.bincount(passed, minlength=num_tp + 1)
    counts[num_tp] += num_higher
    n_ge = np.cumsum(counts[::-1])[::-1][1:]
    tp_ge = num_tp - np.searchsorted(thresholds, thresholds, side="left")
    ap = float(np.sum(tp_ge / n_ge) / count_gt)
    best = thresholds[-1]
    strictly_better = num_higher + int(np.count_nonzero(values > best))
    tied_negatives = int(np.count_nonzero(values == best)) - int(np.count_nonzero(thresholds == best))
    rank = strictly_better + tied_negatives + 1
    return ap, [rank <= k for k in topk]


def evaluate_search(
    gallery: list[dict],
    detections: list[dict],
    queries: list[dict],
    protocol: str,
    det_thresh: float = 0.5,
    cross_camera: bool = False,
    topk: tuple[int, ...] = (1, 5, 10),
    cbgm: bool = False,
    cbgm_top_detections: int | None = None,
    cbgm_query_persons: int | None = None,
    chunk_size: int = 128,
    return_per_query: bool = True,
) -> SearchResult:
    """mAP and top-k of person search, equal to the community's protocol code on the same inputs.

    Args:
        gallery: one dict per gallery image: ``image_id`` str, ``boxes`` (n, 4) xyxy, ``person_ids`` (n,)
            (``NO_IDENTITY`` for persons nobody searches), ``camera_id`` int, optionally
            ``ignore_regions`` (k, 4) xyxy (used by "posetrack21").
        detections: aligned with ``gallery``: ``boxes`` (m, 4) xyxy, ``scores`` (m,), ``embeddings`` (m, d).
        queries: dicts with ``image_id``, ``box`` (4,) xyxy, ``person_id``, ``camera_id`` (optional: taken
            from the gallery image), ``embedding`` (d,), for "cuhk_sysu" ``gallery``: its TestG{N} list of
            ``{"image_id", "box": (4,) or None}`` (None = distractor image; a missing/None list = full set),
            and for CBGM ``context_embeddings`` (k, d): the OTHER persons detected in the query image,
            highest detection score first (the query itself is always the first graph node).
        protocol: "prw", "cuhk_sysu" or "posetrack21".
        det_thresh: minimum detection score; 0.5 is the search setting of every public codebase.
        cross_camera: the gallery keeps only images from other cameras than the query's (PRW; also
            PoseTrack21, whose camera is the video). Default False = the standard setting of the
            published tables (same-camera frames stay in the gallery).
        topk: the k of the top-k accuracies; (1, 5, 10) as published tables report.
        cbgm: re-score with context bipartite graph matching (SeqNet); off by default as in the tables
            of the paper this package implements.
        cbgm_top_detections: CBGM k1 (images of the k1 most similar detections are re-scored); None =
            SeqNet's value for the protocol (:data:`CBGM_DEFAULTS`).
        cbgm_query_persons: CBGM k2 (query + up to k2-1 context persons); None = SeqNet's value.
        chunk_size: queries per similarity block; 128 keeps a PRW-size block (128 x 122k float32) near 60 MB.
        return_per_query: include ``per_query`` (AP, recall and the ranked top-k list of every query).

    Returns:
        SearchResult with ``mAP``, ``top{k}``, ``per_query``, ``num_queries``, ``skipped_queries``.

    Exact ties in similarity: AP treats tied scores as one operating point (as sklearn does); for
    top-k a tie between a true positive and a negative counts against the query (the reference's
    order among exact ties is arbitrary). Similarities are computed in float64.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    topk = tuple(int(k) for k in topk)
    if not topk or min(topk) < 1:
        raise ValueError(f"topk: expected positive integers, got {topk}")
    if cross_camera and protocol == "cuhk_sysu":
        raise ValueError("cross_camera: CUHK-SYSU has no camera ids; the option applies to 'prw' and 'posetrack21'")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
    default_k1, default_k2 = CBGM_DEFAULTS[protocol]
    k1 = default_k1 if cbgm_top_detections is None else int(cbgm_top_detections)
    k2 = default_k2 if cbgm_query_persons is None else int(cbgm_query_persons)

    flat = build_gallery(gallery, detections, det_thresh, remove_ignored=protocol == "posetrack21")
    q = _read_queries(queries, protocol, flat, cross_camera, cbgm)
    num_queries = len(queries)
    count_gt = np.bincount(q["pair_query"], minlength=num_queries)
    skipped = [int(i) for i in np.flatnonzero(count_gt == 0)]
    if skipped and protocol != "posetrack21":
        first = skipped[0]
        raise ValueError(
            f"queries[{first}] (image {q['info'][first][0]!r}, person {q['info'][first][1]}): the person occurs in "
            f"no image of its gallery, so its recall is undefined ({len(skipped)} such queries)"
        )
    evaluated = np.flatnonzero(count_gt > 0)
    cand_pair, cand_det = _positive_candidates(flat, q["pair_image"], q["pair_box"])
    pair_start = np.searchsorted(q["pair_query"], np.arange(num_queries + 1))
    cand_start = np.searchsorted(cand_pair, np.arange(len(q["pair_query"]) + 1))
    det_camera = flat.camera_ids[flat.det_image]
    num_dets = len(flat.det_scores)
    max_k = max(topk)

    # float32 similarities (4x faster matrix product than float64) + exact float64 re-computation of every
    # entry whose float32 value lies within the float32 error bound of a true-positive score, so every
    # comparison the protocol makes is decided in float64. CBGM rewrites similarities, so it runs in float64.
    exact_matrix = cbgm
    query_embeddings = q["embeddings"]
    gallery_embeddings = flat.det_embeddings
    if num_dets == 0:  # nothing reached det_thresh (an untrained model): every query scores AP 0, no hit
        gallery_embeddings = np.zeros((0, query_embeddings.shape[1]))
    matrix_embeddings = gallery_embeddings if exact_matrix else gallery_embeddings.astype(np.float32)
    dim = gallery_embeddings.shape[1]
    # |fl32(q.e) - q.e| <= gamma_(d+2) * |q| * |e| (dot-product error bound incl. rounding inputs to float32),
    # doubled for safety and a tiny absolute term for subnormals
    largest_norm = (
        float(np.sqrt(np.einsum("ij,ij->i", gallery_embeddings, gallery_embeddings).max())) if num_dets else 0.0
    )
    error_scale = 0.0 if exact_matrix else 2.0 * (dim + 2) * 2.0**-24 * largest_norm

    aps, hits, per_query = [], [], []
    for chunk in np.array_split(evaluated, max(1, int(np.ceil(len(evaluated) / chunk_size)))):
        if len(chunk) == 0:
            continue
        chunk_queries = query_embeddings[chunk]
        matrix_queries = chunk_queries.astype(matrix_embeddings.dtype)
        has_list = [q["members"][qi] is not None for qi in chunk]
        if any(has_list):
            # CUHK-SYSU TestG lists: only the listed images' detections are scored, the rest stay -inf
            similarity = np.full((len(chunk), num_dets), -np.inf, dtype=matrix_embeddings.dtype)
        else:
            similarity = matrix_queries @ matrix_embeddings.T
        margin = error_scale * np.sqrt(np.einsum("ij,ij->i", chunk_queries, chunk_queries)) + (
            0.0 if exact_matrix else 1e-30
        )
        for row, qi in enumerate(chunk):
            if has_list[row]:
                listed = _detections_of_images(flat, np.asarray(q["members"][qi], dtype=np.int64))
                similarity[row, listed] = matrix_embeddings[listed] @ matrix_queries[row]
            else:
                if any(has_list):
                    similarity[row] = matrix_embeddings @ matrix_queries[row]
                own = q["own_image"][qi]
                similarity[row, flat.det_start[own] : flat.det_start[own + 1]] = -np.inf
                if cross_camera:
                    similarity[row, det_camera == q["camera"][qi]] = -np.inf
            if cbgm:
                nodes = np.vstack([query_embeddings[qi], q["contexts"][qi][: k2 - 1]])
                context_bipartite_graph_matching(similarity[row], nodes, flat, k1)

        # true positive of each (query, occurrence image): the most similar candidate there
        c0, c1 = cand_start[pair_start[chunk[0]]], cand_start[pair_start[chunk[-1] + 1]]
        pairs, dets = cand_pair[c0:c1], cand_det[c0:c1]
        rows = np.searchsorted(chunk, q["pair_query"][pairs])
        if exact_matrix:
            scores = similarity[rows, dets]
        else:
            scores = _exact_similarity(chunk_queries[rows], gallery_embeddings[dets])
        order = np.lexsort((-scores, pairs))
        first = order[np.r_[True, pairs[order][1:] != pairs[order][:-1]]] if len(order) else order
        tp_rows, tp_dets, tp_scores = rows[first], dets[first], scores[first]

        # one extraction per chunk serves both the AP counts (entries >= the lowest true positive, minus
        # the float32 margin) and the ranked top-k list (entries >= a lower bound of the k-th largest)
        lowest_tp = np.full(len(chunk), np.inf)
        np.minimum.at(lowest_tp, tp_rows, tp_scores)
        extract_from = lowest_tp - margin
        if return_per_query and num_dets:
            extract_from = np.minimum(extract_from, _kth_largest_lower_bound(similarity, max_k + RANK_SPARE))
        # round the threshold down in the matrix dtype so the comparison never upcasts the whole block
        extract_from = np.nextafter(extract_from.astype(similarity.dtype), similarity.dtype.type(-np.inf))
        above_rows, above_cols = np.nonzero(similarity >= extract_from[:, None])
        above_values = similarity[above_rows, above_cols].astype(np.float64)
        above_start = np.searchsorted(above_rows, np.arange(len(chunk) + 1))
        tp_order = np.argsort(tp_rows, kind="stable")
        tp_start = np.searchsorted(tp_rows[tp_order], np.arange(len(chunk) + 1))

        for row, qi in enumerate(chunk):
            mine = tp_order[tp_start[row] : tp_start[row + 1]]
            row_values = above_values[above_start[row] : above_start[row + 1]]
            row_columns = above_cols[above_start[row] : above_start[row + 1]]
            if len(mine):
                thresholds = np.sort(tp_scores[mine])
                # above every true positive even with the float32 error: counted, never compared again
                higher = row_values > thresholds[-1] + margin[row]
                between = ~higher & (row_values >= thresholds[0] - margin[row])
                values, columns = row_values[between], row_columns[between]
                if not exact_matrix:
                    near = np.searchsorted(thresholds, values - margin[row], side="left") < np.searchsorted(
                        thresholds, values + margin[row], side="right"
                    )
                    values[near] = _exact_similarity(chunk_queries[row][None, :], gallery_embeddings[columns[near]])
                num_higher = int(np.count_nonzero(higher))
                ap, hit = _average_precision_and_hits(values, num_higher, thresholds, int(count_gt[qi]), topk)
            else:
                ap, hit = 0.0, [False] * len(topk)
            aps.append(ap)
            hits.append(hit)
            if return_per_query:
                ranked = []
                if num_dets:
                    finite = np.isfinite(row_values)
                    candidates = row_columns[finite]
                    if len(candidates) > max_k + RANK_SPARE:
                        best = np.argpartition(-row_values[finite], max_k + RANK_SPARE - 1)[: max_k + RANK_SPARE]
                        candidates = candidates[best]
                    if exact_matrix:
                        values = similarity[row, candidates]
                    else:
                        values = _exact_similarity(chunk_queries[row][None, :], gallery_embeddings[candidates])
                    ranking = np.argsort(-values, kind="stable")[:max_k]
                    correct = set(tp_dets[mine].tolist())
                    ranked = [
                        {
                            "image_id": flat.image_ids[flat.det_image[d]],
                            "box": flat.det_boxes[d].tolist(),
                            "similarity": float(v),
                            "correct": d in correct,
                        }
                        for d, v in zip(candidates[ranking].tolist(), values[ranking].tolist())
                    ]
                per_query.append(
                    {
                        "query_index": int(qi),
                        "image_id": q["info"][qi][0],
                        "person_id": q["info"][qi][1],
                        "box": q["info"][qi][2],
                        "ap": ap,
                        "recall": len(mine) / int(count_gt[qi]),
                        "ranked": ranked,
                    }
                )

    hits_array = np.asarray(hits, dtype=float).reshape(-1, len(topk))
    result = SearchResult(
        mAP=float(np.mean(aps)) if aps else 0.0,
        protocol=protocol,
        num_queries=len(aps),
        skipped_queries=skipped,
    )
    for i, k in enumerate(topk):
        result[f"top{k}"] = float(hits_array[:, i].mean()) if len(aps) else 0.0
    if return_per_query:
        result["per_query"] = per_query
    return result


def evaluate_query_subsets(
    gallery: list[dict],
    detections: list[dict],
    queries: list[dict],
    subsets: dict[str, list[dict]],
    protocol: str = "cuhk_sysu",
    **kwargs,
) -> dict[str, SearchResult]:
    """Evaluate query subsets, e.g. CUHK-SYSU's occlusion and low-resolution queries (annotation/test/subset/Occlusion.mat and Resolution.mat).

    ``subsets`` maps a name ("occlusion", "low_resolution", ...) to the subset's query list as the data
    loaders produce it (image_id, box, person_id and its own ``gallery`` list, no embeddings). Each
    subset query takes the embedding (and context) of the query in ``queries`` with the same image and
    box (exact equality, as the annotation files match boxes), keeps its own gallery list, and the
    subset is evaluated with :func:`evaluate_search` and ``kwargs``. The full query set is under "all".
    """
    lookup = {}
    for qi, query in enumerate(queries):
        box = to_numpy(require(query, "box", f"queries[{qi}]"), np.float64, f"queries[{qi}]['box']").reshape(-1)
        lookup[(str(query["image_id"]), tuple(box.tolist()))] = query
    results = {"all": evaluate_search(gallery, detections, queries, protocol, **kwargs)}
    for name, subset in subsets.items():
        filled = []
        for si, sub in enumerate(subset):
            where = f"subsets[{name!r}][{si}]"
            box = to_numpy(require(sub, "box", where), np.float64, f"{where}['box']").reshape(-1)
            key = (str(require(sub, "image_id", where)), tuple(box.tolist()))
            if key not in lookup:
                raise ValueError(f"{where}: no query in `queries` has image {key[0]!r} and box {list(key[1])}")
            merged = dict(lookup[key])
            if "gallery" in sub:
                merged["gallery"] = sub["gallery"]
            filled.append(merged)
        results[name] = evaluate_search(gallery, detections, filled, protocol, **kwargs)
    return results
