"""Run a person search model over a target dataset and return exactly what the protocols consume.

:func:`run_search_inference` turns (model, image processor, gallery records, queries) into the
``gallery``, ``detections`` and ``queries`` arguments of :func:`~.search.evaluate_search` (and the first
two of :func:`~.detection.evaluate_detection`):

* gallery: the ground truth of each gallery record (``image_id``, ``boxes``, ``person_ids``,
  ``camera_id``, ``ignore_regions``), in record order;
* detections: the model's detections of each gallery image, boxes mapped back to ORIGINAL pixels, with
  scores and embeddings (every detection the model returns: the protocols apply their own thresholds);
* queries: the query dicts plus ``embedding``, computed from the ground-truth query box with
  :meth:`PersonSearchModel.embed_boxes` (the protocols' query path), in query order.

The model only ever sees processed images (resized, normalised, padded) in batches; nothing here knows
about a particular dataset.

Several processes (multi-GPU training) share the inference: ``num_processes`` > 1 splits the gallery and
query batches round-robin by batch (batch ``b`` runs on process ``b % num_processes``), then gathers every
process's results to process 0 in record order, where the metric is computed once. Whole batches are
distributed, not images, because an image's outputs depend on its batch (images are padded to the largest
of the batch), so the sharded result equals the one-process result exactly. Process 0's weights and buffers
are first copied to every process: DDP trained with ``broadcast_buffers=False`` leaves each process its own
BatchNorm running statistics, and every shard must be computed by the same model (process 0's, the one that
is saved). The other processes get ``None``. No process idles at a barrier through a whole evaluation, which on PRW or CUHK-SYSU can outlast the
collective timeout of NCCL (10-30 min).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.schema import NO_CAMERA
from ..image_loading import load_image
from .results import SearchResult

logger = logging.getLogger(__name__)


@dataclass
class SearchInputs:
    """The three inputs of ``evaluate_search`` (``gallery``, ``detections``, ``queries``), and ``images``:
    each gallery record's ``image`` (path or image) by ``image_id``, to draw the results.

    ``unreadable_gallery`` / ``unreadable_queries``: image ids whose file could not be read. An unreadable
    gallery image counts as an image where nothing was detected (its persons stay in the ground truth, so the
    score is not flattered); a query whose image cannot be read is left out (``queries`` lacks it)."""

    gallery: list[dict]
    detections: list[dict]
    queries: list[dict]
    images: dict
    unreadable_gallery: list[str] = field(default_factory=list)
    unreadable_queries: list[str] = field(default_factory=list)


def gallery_annotations(records: Sequence[dict]) -> list[dict]:
    """The ground-truth gallery list of ``evaluate_search`` / ``evaluate_detection`` from unified records."""
    gallery = []
    for record in records:
        gallery.append(
            {
                "image_id": str(record["image_id"]),
                "boxes": np.asarray(record["boxes"], np.float32).reshape(-1, 4),
                "person_ids": np.asarray(record["person_ids"], np.int64).reshape(-1),
                "camera_id": int(record.get("camera_id", NO_CAMERA)),
                "ignore_regions": np.asarray(record.get("ignore_regions", np.zeros((0, 4))), np.float32).reshape(
                    -1, 4
                ),
            }
        )
    return gallery


def _batches(count: int, batch_size: int) -> list[range]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def _counted(batches: list[range], desc: str, unit: str, progress: bool):
    """``batches``, one by one, with a progress bar that counts their items (images, queries), not batches."""
    with tqdm(total=sum(map(len, batches)), desc=desc, unit=unit, disable=not progress) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def shard_indices(count: int, batch_size: int, process_index: int, num_processes: int) -> list[int]:
    """The item indices process ``process_index`` runs: those of batches ``process_index``,
    ``process_index + num_processes``, ... Re-batched by ``batch_size``, they form the same batches as in
    one process (only the last batch of all can be short, and it comes last)."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index must be in 0..{num_processes - 1}, got {process_index}")
    return [i for batch in _batches(count, batch_size)[process_index::num_processes] for i in batch]


@torch.no_grad()
def share_first_process_model(model: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer of ``model`` with process 0's values (torch.distributed must be
    initialised; every process calls it)."""
    import torch.distributed as dist

    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def gather_to_first_process(indices: list[int], items: list, count: int) -> list | None:
    """Every process's ``items`` (the results for its ``indices``) in index order 0..count-1, on process 0
    (torch.distributed must be initialised); ``None`` on the others."""
    import torch.distributed as dist

    rank = dist.get_rank()
    gathered = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object((indices, items), gathered, dst=0)
    if rank != 0:
        return None
    ordered = [None] * count
    for part_indices, part_items in gathered:
        for index, item in zip(part_indices, part_items):
            ordered[index] = item
    missing = [index for index, item in enumerate(ordered) if item is None]
    if missing:
        raise RuntimeError(f"sharded inference: no process returned the results of items {missing[:10]}")
    return ordered


UNREADABLE = "unreadable"
"""Key set (True) on the result of an item whose image could not be read (see :func:`_readable_images`)."""


def _readable_images(items: Sequence, image_of, what: str) -> tuple[list, list]:
    """``(positions, images)`` of the ``items`` whose image loads; the others are logged and left out."""
    positions, images = [], []
    for position, item in enumerate(items):
        where = f"{what} {item['image_id']}"
        try:
            images.append(load_image(image_of(item), where))
        except (OSError, ValueError) as error:  # unreadable, truncated, too large, not an image
            logger.warning("skipped and counted: %s", error)  # the loader's message names the image and file
            continue
        positions.append(position)
    return positions, images


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the whole block, its mode restored after. Held across every batch, not set
    per batch: ``train(True)`` frees the backbone's inference copy (BatchNorms folded), so a model left in
    training mode between batches rebuilt that copy for every query batch (measured on the CPU benchmark's
    fine-tuning evaluation: 41 rebuilds, half of its 9.5 s)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def detect_gallery(
    model, processor, records: Sequence[dict], batch_size: int = 2, progress: bool = True
) -> list[dict]:
    """Detections of every gallery record: ``{"boxes" (m, 4) original pixels, "scores" (m,), "embeddings"
    (m, d)}`` float32 numpy arrays, one dict per record in order. A record whose image cannot be read gets no
    detection and ``UNREADABLE: True`` (logged, never an error: one bad file must not end an evaluation).

    Args:
        model: a :class:`~hf_personsearch.PersonSearchModel` (put in eval mode for the call, then restored).
        processor: its :class:`~hf_personsearch.PersonSearchImageProcessor`.
        batch_size: images per forward (2: the gallery images are full scenes at 900x1500 by default).
        progress: show a tqdm bar.
    """
    device, dtype = _model_device_dtype(model)
    embedding_dim = getattr(getattr(model, "config", None), "embedding_dim", 0)  # of the empty results
    detections = []
    with eval_mode(model):
        for batch in _counted(_batches(len(records), batch_size), "gallery", "image", progress):
            batch_records = [records[i] for i in batch]
            readable, images = _readable_images(batch_records, lambda record: record["image"], "gallery image")
            found = {
                position: {
                    "boxes": np.zeros((0, 4), np.float32),
                    "scores": np.zeros((0,), np.float32),
                    "embeddings": np.zeros((0, embedding_dim), np.float32),
                    UNREADABLE: True,
                }
                for position in range(len(batch))
                if position not in readable
            }
            if not images:
                detections.extend(found[position] for position in range(len(batch)))
                continue
            inputs = processor(images)
            outputs = model(
                pixel_values=inputs["pixel_values"].to(device=device, dtype=dtype),
                image_sizes=inputs["image_sizes"].to(device),
            )
            results = processor.post_process_person_search(
                outputs,
                target_sizes=inputs["original_sizes"],
                image_sizes=inputs["image_sizes"],
                threshold=0.0,
            )
            for position, result in zip(readable, results):
                found[position] = {key: value.float().cpu().numpy() for key, value in result.items()}
            detections.extend(found[position] for position in range(len(batch)))
    return detections


@torch.no_grad()
def embed_queries(
    model,
    processor,
    queries: Sequence[dict],
    records: Sequence[dict],
    batch_size: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Copies of ``queries`` with ``embedding`` (d,) float32: the model's embedding of each query's
    ground-truth box in its image (found among ``records`` by ``image_id``). A query whose image cannot be
    read gets ``UNREADABLE: True`` and no embedding (logged). The model is put in eval mode for the call, then
    restored."""
    image_of = {str(record["image_id"]): record["image"] for record in records}
    for index, query in enumerate(queries):
        if str(query["image_id"]) not in image_of:
            raise ValueError(
                f"queries[{index}]: query image {query['image_id']!r} is not among the {len(records)} records given"
            )
    device, dtype = _model_device_dtype(model)
    out = []
    with eval_mode(model):
        for batch in _counted(_batches(len(queries), batch_size), "queries", "query", progress):
            batch_queries = [queries[i] for i in batch]
            readable, images = _readable_images(
                batch_queries, lambda query: image_of[str(query["image_id"])], "query image"
            )
            embedded = {position: {**query, UNREADABLE: True} for position, query in enumerate(batch_queries)}
            if images:
                boxes = [np.asarray(batch_queries[p]["box"], np.float32).reshape(1, 4) for p in readable]
                inputs = processor(images, boxes=boxes)
                embeddings = model.embed_boxes(
                    inputs["pixel_values"].to(device=device, dtype=dtype),
                    [b.to(device=device, dtype=dtype) for b in inputs["boxes"]],
                    image_sizes=inputs["image_sizes"].to(device),
                )
                for position, embedding in zip(readable, embeddings):
                    embedded[position] = {**batch_queries[position], "embedding": embedding[0].float().cpu().numpy()}
            out.extend(embedded[position] for position in range(len(batch)))
    return out


def run_search_inference(
    model,
    processor,
    gallery_records: Sequence[dict],
    queries: Sequence[dict],
    batch_size: int = 2,
    progress: bool = True,
    *,
    process_index: int = 0,
    num_processes: int = 1,
) -> SearchInputs | None:
    """Gallery ground truth, gallery detections and embedded queries (see the module docstring).

    Args:
        process_index, num_processes: this process and how many share the work (every one must call; see the
            module docstring); the result is returned on process 0 only, ``None`` elsewhere.
    """
    if len(gallery_records) == 0:
        raise ValueError("run_search_inference: the gallery has no images")
    with eval_mode(model):  # one BatchNorm-folded inference copy for the gallery and the queries
        if num_processes == 1:
            detections = detect_gallery(model, processor, gallery_records, batch_size, progress)
            embedded = embed_queries(model, processor, queries, gallery_records, batch_size, progress)
        else:
            share_first_process_model(model)
            gallery_part = shard_indices(len(gallery_records), batch_size, process_index, num_processes)
            query_part = shard_indices(len(queries), batch_size, process_index, num_processes)
            part_detections = detect_gallery(
                model, processor, [gallery_records[i] for i in gallery_part], batch_size, progress
            )
            part_queries = embed_queries(
                model, processor, [queries[i] for i in query_part], gallery_records, batch_size, progress
            )
            detections = gather_to_first_process(gallery_part, part_detections, len(gallery_records))
            embedded = gather_to_first_process(query_part, part_queries, len(queries))
            if process_index != 0:
                return None
    unreadable_gallery = [str(r["image_id"]) for r, d in zip(gallery_records, detections) if d.pop(UNREADABLE, False)]
    unreadable_queries = [str(q["image_id"]) for q in embedded if q.get(UNREADABLE)]
    if unreadable_gallery or unreadable_queries:
        logger.warning(
            "evaluation: %d gallery image(s) could not be read (no detections there: their persons count as "
            "missed) and %d query image(s) (those queries are left out); first: %s",
            len(unreadable_gallery),
            len(unreadable_queries),
            (unreadable_gallery + unreadable_queries)[:5],
        )
    return SearchInputs(
        gallery=gallery_annotations(gallery_records),
        detections=detections,
        queries=[query for query in embedded if not query.get(UNREADABLE)],
        images={str(record["image_id"]): record["image"] for record in gallery_records},
        unreadable_gallery=unreadable_gallery,
        unreadable_queries=unreadable_queries,
    )


def resolve_gallery_size(dataset: str, gallery_size: int | str | None) -> int | None:
    """The ``gallery_size`` passed to the query loader: a per-query gallery size (CUHK-SYSU's TestG{N}) or None
    (full set / not applicable).

    ``None`` means the dataset's standard protocol: its ``default_gallery_size`` for a dataset with per-query
    galleries (CUHK-SYSU: TestG100, the size published tables report), every other image for the others.
    ``"full"`` is the full-set protocol. A number for a dataset without gallery sizes is an error, so a
    requested protocol is never silently ignored.
    """
    from ..data.search_dataset import datasets_with_gallery_sizes, target_dataset

    target = target_dataset(dataset)
    if not target.gallery_sizes:
        if gallery_size not in (None, "full"):
            raise ValueError(
                f"gallery_size={gallery_size!r}: only {datasets_with_gallery_sizes()} has gallery sizes; "
                f"{dataset} searches every other image of its gallery split"
            )
        return None
    if gallery_size is None:
        return target.default_gallery_size
    if gallery_size == "full":
        return None
    if isinstance(gallery_size, bool) or not isinstance(gallery_size, int) or gallery_size < 1:
        raise ValueError(f"gallery_size must be a positive integer, 'full' or None, got {gallery_size!r}")
    return gallery_size


def evaluate_on_target(
    model,
    processor,
    dataset: str,
    data_dir: str,
    *,
    gallery_size: int | str | None = None,
    cross_camera: bool = False,
    det_thresh: float = 0.5,
    batch_size: int = 2,
    progress: bool = True,
    process_index: int = 0,
    num_processes: int = 1,
) -> tuple[dict, SearchInputs] | tuple[None, None]:
    """Search and detection evaluation of ``model`` on a target dataset's raw folder.

    With ``num_processes`` > 1 every process must call it: the inference is sharded over the processes (see
    the module docstring) and the metric computed on process 0, which gets the result; the others get
    ``(None, None)``.

    Returns ``(summary, inputs)``: ``summary`` is the JSON-ready result in the model card's form
    (``dataset``, ``protocol``, ``split``, ``mAP``, ``top1``/``top5``/``top10``, ``detection_ap``,
    ``detection_recall``, ``num_queries``, ``settings``) plus ``search`` (the full
    :class:`~.results.SearchResult`, per-query lists included) and ``detection``; ``inputs`` the
    :class:`SearchInputs` it was computed from.
    """
    from ..data.search_dataset import load_target_queries, load_target_records, target_dataset
    from .detection import evaluate_detection
    from .search import evaluate_search

    target = target_dataset(dataset)
    protocol = target.protocol_of(data_dir)
    size = resolve_gallery_size(dataset, gallery_size)
    records = load_target_records(dataset, data_dir, target.gallery_split)
    queries = load_target_queries(dataset, data_dir, size)
    inputs = run_search_inference(
        model,
        processor,
        records,
        queries,
        batch_size,
        progress,
        process_index=process_index,
        num_processes=num_processes,
    )
    if inputs is None:
        return None, None
    kept = sum(int((d["scores"] >= det_thresh).sum()) for d in inputs.detections)
    if kept:
        search = evaluate_search(
            inputs.gallery,
            inputs.detections,
            inputs.queries,
            protocol,
            det_thresh=det_thresh,
            cross_camera=cross_camera,
        )
    else:
        # No gallery detection reaches det_thresh (an untrained or collapsed model): by the protocol every
        # query's AP and top-k are 0. Stated here because evaluate_search cannot size an empty gallery.
        logger.warning("no gallery detection has score >= %s: mAP and top-k are 0", det_thresh)
        search = SearchResult(mAP=0.0, top1=0.0, top5=0.0, top10=0.0, protocol=protocol)
        search.update(num_queries=len(inputs.queries), skipped_queries=[], per_query=[])
    detection = evaluate_detection(inputs.gallery, inputs.detections)
    settings = {"cross_camera": cross_camera, "det_thresh": det_thresh}
    if target.gallery_sizes:
        settings["gallery_size"] = "full" if size is None else size
    summary = {
        "dataset": target.display_name,
        "protocol": protocol,
        "split": target.gallery_split,
        "mAP": float(search["mAP"]),
        **{key: float(search[key]) for key in search.topk_keys()},
        "detection_ap": float(detection["ap"]),
        "detection_recall": float(detection["recall"]),
        "num_queries": int(search["num_queries"]),
        "unreadable_images": {"gallery": inputs.unreadable_gallery, "queries": inputs.unreadable_queries},
        "settings": settings,
        "search": search,
        "detection": detection,
    }
    return summary, inputs
