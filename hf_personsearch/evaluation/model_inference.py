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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.schema import NO_CAMERA
from ..data.search_dataset import load_image


@dataclass
class SearchInputs:
    """The three inputs of ``evaluate_search`` (``gallery``, ``detections``, ``queries``)."""

    gallery: list[dict]
    detections: list[dict]
    queries: list[dict]


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


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@torch.no_grad()
def detect_gallery(
    model, processor, records: Sequence[dict], batch_size: int = 2, progress: bool = True
) -> list[dict]:
    """Detections of every gallery record: ``{"boxes" (m, 4) original pixels, "scores" (m,), "embeddings"
    (m, d)}`` float32 numpy arrays, one dict per record in order.

    Args:
        model: a :class:`~hf_personsearch.PersonSearchModel` (put in eval mode for the call, then restored).
        processor: its :class:`~hf_personsearch.PersonSearchImageProcessor`.
        batch_size: images per forward (2: the gallery images are full scenes at 900x1500 by default).
        progress: show a tqdm bar.
    """
    device, dtype = _model_device_dtype(model)
    was_training = model.training
    model.eval()
    detections = []
    try:
        for batch in tqdm(_batches(len(records), batch_size), desc="gallery", disable=not progress):
            images = [load_image(records[i]["image"], f"gallery image {records[i]['image_id']}") for i in batch]
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
            for result in results:
                detections.append({key: value.float().cpu().numpy() for key, value in result.items()})
    finally:
        model.train(was_training)
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
    ground-truth box in its image (found among ``records`` by ``image_id``)."""
    image_of = {str(record["image_id"]): record["image"] for record in records}
    for index, query in enumerate(queries):
        if str(query["image_id"]) not in image_of:
            raise ValueError(
                f"queries[{index}]: query image {query['image_id']!r} is not among the {len(records)} records given"
            )
    device, dtype = _model_device_dtype(model)
    out = []
    for batch in tqdm(_batches(len(queries), batch_size), desc="queries", disable=not progress):
        images = [
            load_image(image_of[str(queries[i]["image_id"])], f"query image {queries[i]['image_id']}") for i in batch
        ]
        boxes = [np.asarray(queries[i]["box"], np.float32).reshape(1, 4) for i in batch]
        inputs = processor(images, boxes=boxes)
        embeddings = model.embed_boxes(
            inputs["pixel_values"].to(device=device, dtype=dtype),
            [b.to(device=device, dtype=dtype) for b in inputs["boxes"]],
            image_sizes=inputs["image_sizes"].to(device),
        )
        for i, embedding in zip(batch, embeddings):
            out.append({**queries[i], "embedding": embedding[0].float().cpu().numpy()})
    return out


def run_search_inference(
    model,
    processor,
    gallery_records: Sequence[dict],
    queries: Sequence[dict],
    batch_size: int = 2,
    progress: bool = True,
) -> SearchInputs:
    """Gallery ground truth, gallery detections and embedded queries (see the module docstring)."""
    if len(gallery_records) == 0:
        raise ValueError("run_search_inference: the gallery has no images")
    return SearchInputs(
        gallery=gallery_annotations(gallery_records),
        detections=detect_gallery(model, processor, gallery_records, batch_size, progress),
        queries=embed_queries(model, processor, queries, gallery_records, batch_size, progress),
    )
