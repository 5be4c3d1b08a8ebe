"""``pipeline("person-search")``: find the person of a query box in gallery scene images.

    search = pipeline("person-search", model="org/prtps-r50-prw")
    matches = search("query.jpg", query_box=[x1, y1, x2, y2], gallery="gallery/", top_k=10)
    # [{"rank": 1, "image": "/abs/gallery/0003.jpg", "box": [...], "similarity": 0.91, "score": 0.99}, ...]

The gallery is detected once per call (every person with a detection score >= ``threshold``), or once and
for all with :meth:`PersonSearchPipeline.build_index` (a :class:`GalleryIndex`, saved to disk and reused; an update
embeds only the files added or changed since).
The query is embedded from its given box (no detection), as in the person search protocols. Matches are
ranked by :func:`~hf_personsearch.image_processing_person_search.search_similarity`, the toolkit's one
scoring rule. ``search(image)`` without a query box returns the persons detected in the image.

Real photo folders hold broken files: a gallery file that cannot be read is skipped, named in a warning and
counted in ``GalleryIndex.skipped``; only a gallery where nothing can be read is an error.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from ..image_loading import load_image
from ..modeling_person_search import PersonSearchOutput
from .gallery_index import GalleryIndex, model_fingerprint

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_THRESHOLD = 0.5
"""Detection score a gallery person needs: the det_thresh of the PRW / CUHK-SYSU search protocols."""
DEFAULT_BATCH_SIZE = 4
"""Gallery images per forward pass: scene images at 900x1500 are large; 4 fits a 16 GB GPU with a ResNet50."""
PROGRESS_MIN_IMAGES = 4
"""A progress bar (with ETA) is shown, when ``progress`` is None, for galleries of at least this many images:
on CPU a ResNet-50/18 takes several seconds per 900x1500 image, so even a handful of images is a wait."""


def image_from_source(source, what: str) -> Image.Image:
    """An RGB PIL image from what the image processor accepts: a path, a PIL image (any mode) or a numpy array
    (H, W) grayscale, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or float in [0, 1]. The alpha channel
    is dropped, as ``PIL.Image.convert("RGB")`` does; ``what`` names the image in errors."""
    if not isinstance(source, np.ndarray):
        return load_image(source, what)
    array = source
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"{what}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got {source.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (0.0 <= float(array.min()) and float(array.max()) <= 1.0):
            raise ValueError(f"{what}: a float array must hold values in [0, 1], got [{array.min()}, {array.max()}]")
        array = np.round(array * 255.0)
    elif array.dtype != np.uint8:
        raise ValueError(f"{what}: expected a uint8 or float array, got dtype {array.dtype}")
    return Image.fromarray(array.astype(np.uint8)).convert("RGB")


def gallery_sources(gallery, recursive: bool = False) -> list:
    """The gallery as a list of image sources: a folder (its images by file extension, sorted by path; with
    ``recursive`` its subfolders' too), one path, or a list of paths / PIL images / arrays. Files of a folder
    without an image extension are reported once in a warning. An empty gallery is an error."""
    if isinstance(gallery, (str, Path)) and Path(gallery).is_dir():
        folder = Path(gallery)
        # Every entry but folders: a dangling link named like an image is listed, then skipped as unreadable and
        # counted, not dropped unseen.
        files = sorted(path for path in (folder.rglob("*") if recursive else folder.iterdir()) if not path.is_dir())
        sources = [str(path) for path in files if path.suffix.lower() in IMAGE_EXTENSIONS]
        others = [path.relative_to(folder).as_posix() for path in files if path.suffix.lower() not in IMAGE_EXTENSIONS]
        if others:
            shown = ", ".join(others[:5]) + (f", ... ({len(others) - 5} more)" if len(others) > 5 else "")
            logger.warning("gallery folder %s: ignored %d non-image files: %s", folder, len(others), shown)
        if not recursive and any(path.is_dir() for path in folder.iterdir()):
            logger.warning(
                "gallery folder %s has subfolders: they are not searched (use recursive / --recursive)", folder
            )
        if not sources:
            raise ValueError(f"gallery folder {folder} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return sources
    if isinstance(gallery, (str, Path, Image.Image, np.ndarray)):
        return [gallery]
    sources = list(gallery)
    if not sources:
        raise ValueError("the gallery is empty: give a folder, image paths or PIL images")
    return sources


def _file_stats(source) -> list[int] | None:
    """``[size in bytes, modification time in ns]`` of a gallery file (what tells an index update that it
    changed), None for an in-memory image or a file that cannot be read."""
    if not isinstance(source, (str, Path)):
        return None
    try:
        status = os.stat(source)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def _identifier(source, position: int) -> str:
    """Absolute path of a file (so that a saved index works from any working folder), else a name."""
    if isinstance(source, (str, Path)):
        return os.path.abspath(source)
    return getattr(source, "filename", "") or f"image_{position}"


def check_box(box, width: int, height: int, what: str) -> list[float]:
    """``box`` as 4 floats, checked to lie inside a ``width`` x ``height`` image with positive area."""
    values = [float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1)]
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(f"{what}: box {box} must be 4 finite numbers x1, y1, x2, y2")
    x1, y1, x2, y2 = values
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(
            f"{what}: box {values} is not inside the {width}x{height} image "
            f"(expected 0 <= x1 < x2 <= {width}, 0 <= y1 < y2 <= {height})"
        )
    return values


class PersonSearchPipeline(Pipeline):
    """Person search over gallery images with a PersonSearchModel and its PersonSearchImageProcessor.

    Call: ``pipe(query, query_box=..., gallery=... | index=..., top_k=10)`` -> ranked matches
    ``[{"rank", "image", "image_index", "box", "similarity", "score"}]``, box in the gallery image's pixels,
    similarity = :func:`search_similarity` (detection score x cosine of the re-ID embeddings), score =
    detection score. ``pipe(image)`` -> detections ``[{"box", "score"}]``. Images: paths, PIL images or
    grayscale / RGB / RGBA arrays. Options: ``threshold`` (0.5), ``batch_size`` (4), ``progress`` (None = a
    bar for galleries of 4+ images), ``backend`` ("torch", "faiss"), ``best_per_image`` (False: one match per
    gallery image, its best person), ``recursive`` (False: a gallery folder's subfolders too).
    """

    _load_image_processor = True
    _load_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, *args, **kwargs):
        # A pre-training checkpoint folder loads as PersonSearchPretrainModel, whose forward computes the
        # pre-training losses only: search with the person search model it holds (the one it exports).
        export = getattr(model, "export_person_search_model", None)
        if export is not None:
            logger.info("%s is a pre-training model: searching with its person search model", type(model).__name__)
            model = export()
        super().__init__(model, *args, **kwargs)

    def _sanitize_parameters(self, threshold=None, **kwargs):
        postprocess = {} if threshold is None else {"threshold": threshold}
        return {}, {}, postprocess

    # ------------------------------------------------------------------ one batch of images
    def preprocess(self, images):
        images = images if isinstance(images, list) else [images]
        return self.image_processor([np.array(image) for image in images])

    def _forward(self, model_inputs):
        outputs = self.model(pixel_values=model_inputs["pixel_values"], image_sizes=model_inputs["image_sizes"])
        return {
            "boxes": outputs.boxes,
            "scores": outputs.scores,
            "embeddings": outputs.embeddings,
            "image_sizes": model_inputs["image_sizes"],
            "original_sizes": model_inputs["original_sizes"],
        }

    def postprocess(self, model_outputs, threshold: float = DEFAULT_THRESHOLD):
        """Per image {"boxes" (n, 4) original pixels, "scores" (n,), "embeddings" (n, d) norm-aware}."""
        outputs = PersonSearchOutput(
            boxes=model_outputs["boxes"], scores=model_outputs["scores"], embeddings=model_outputs["embeddings"]
        )
        return self.image_processor.post_process_person_search(
            outputs,
            target_sizes=model_outputs["original_sizes"],
            image_sizes=model_outputs["image_sizes"],
            threshold=threshold,
        )

    def detect(self, images: list[Image.Image], threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
        """Detections of a batch of PIL images (one forward pass)."""
        self.model.eval()
        return self.postprocess(self.forward(self.preprocess(list(images))), threshold=threshold)

    # ------------------------------------------------------------------ query and gallery
    def settings(self, threshold: float = DEFAULT_THRESHOLD) -> dict:
        """What a gallery index must share with the queries searched in it (see GalleryIndex.check_compatible)."""
        return {
            "threshold": threshold,
            "min_size": self.image_processor.min_size,
            "max_size": self.image_processor.max_size,
            "embedding_dim": self.model.config.embedding_dim,
        }

    def model_id(self) -> str:
        return str(getattr(self.model.config, "name_or_path", "") or type(self.model).__name__)

    def embed_query(self, image, box) -> torch.Tensor:
        """L2-normalised embedding (d,) of the person in ``box`` (xyxy, pixels of ``image``)."""
        image = image_from_source(image, "query image")
        box = check_box(box, image.width, image.height, "query")
        inputs = self.image_processor([np.array(image)], boxes=[np.asarray([box])])
        self.model.eval()
        with self.device_placement(), torch.no_grad():
            embeddings = self.model.embed_boxes(
                inputs["pixel_values"].to(self.device), [inputs["boxes"][0].to(self.device)], inputs["image_sizes"]
            )
        return embeddings[0][0].float().cpu()

    def build_index(
        self,
        gallery,
        threshold: float = DEFAULT_THRESHOLD,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | None = None,
        recursive: bool = False,
        update: GalleryIndex | None = None,
    ) -> GalleryIndex:
        """Detect and embed every person of the gallery (a folder, paths or images) once. Files that cannot be
        read are skipped (a warning each, listed in the index's ``skipped``); none readable is an error.

        Args:
            update: an index made earlier by this model at these settings (``threshold`` included): an image
                file it holds whose size and modification time are unchanged is taken from it instead of being
                embedded again; new and changed files are embedded, files gone from the gallery are left out and
                files skipped before are tried again. The result is the index a full build would give (the
                images' order, persons and skipped files).
        """
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sources = gallery_sources(gallery, recursive=recursive)
        fingerprint = model_fingerprint(self.model)
        stats = {position: _file_stats(source) for position, source in enumerate(sources)}
        reused = self._reusable_images(update, sources, stats, fingerprint, threshold) if update is not None else {}
        to_embed = [position for position in range(len(sources)) if position not in reused]
        show = len(to_embed) >= PROGRESS_MIN_IMAGES if progress is None else progress
        found: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # position -> embeddings, boxes, scores
        skipped = []
        bar = tqdm(total=len(to_embed), desc="embedding gallery", unit="image", disable=not show)
        for start in range(0, len(to_embed), batch_size):
            chunk = to_embed[start : start + batch_size]
            batch, read = [], []
            for position in chunk:
                source = sources[position]
                try:
                    batch.append(image_from_source(source, f"gallery image {position}"))
                except (OSError, ValueError) as error:
                    if not isinstance(source, (str, Path)):
                        raise  # an in-memory image of the wrong shape is the caller's bug, not a broken file
                    logger.warning("skipped %s", error)
                    skipped.append({"image": os.path.abspath(source), "reason": str(error)})
                    continue
                read.append(position)
            for position, detections in zip(read, self.detect(batch, threshold=threshold) if batch else []):
                found[position] = tuple(detections[key].float().cpu() for key in ("embeddings", "boxes", "scores"))
            bar.update(len(chunk))
        bar.close()
        if reused:  # each held image's rows, found once for all (a mask per image is quadratic on 100k images)
            order = torch.argsort(update.image_index, stable=True)
            counts = torch.bincount(update.image_index, minlength=len(update.images)).tolist()
            starts = [total - count for total, count in zip(itertools.accumulate(counts), counts)]
            for position, old_position in reused.items():
                rows = order[starts[old_position] : starts[old_position] + counts[old_position]]
                found[position] = (update.embeddings[rows], update.boxes[rows], update.scores[rows])
        if not found:
            raise ValueError(
                f"none of the {len(sources)} gallery images could be read: "
                + "; ".join(item["reason"] for item in skipped[:3])
            )
        positions = sorted(found)
        image_index = [torch.full((len(found[p][2]),), row, dtype=torch.long) for row, p in enumerate(positions)]
        return GalleryIndex(
            embeddings=torch.cat([found[p][0] for p in positions]),
            boxes=torch.cat([found[p][1] for p in positions]),
            scores=torch.cat([found[p][2] for p in positions]),
            image_index=torch.cat(image_index),
            images=[_identifier(sources[p], p) for p in positions],
            model_id=self.model_id(),
            model_fingerprint=fingerprint,
            settings=self.settings(threshold),
            skipped=skipped,
            image_files={_identifier(sources[p], p): stats[p] for p in positions if stats[p] is not None},
        )

    def _reusable_images(self, update, sources, stats, fingerprint, threshold) -> dict[int, int]:
        """``{position in sources: position in update.images}`` of the unchanged files ``update`` holds."""
        update.check_compatible(self.model_id(), fingerprint, self.settings(threshold))
        if update.settings.get("threshold") != threshold:
            raise ValueError(
                f"the gallery index to update was made at detection threshold {update.settings.get('threshold')}, "
                f"not {threshold}: update it at its threshold, or build a new index"
            )
        held = {path: position for position, path in enumerate(update.images)}
        reusable = {}
        for position, source in enumerate(sources):
            path = os.path.abspath(source) if isinstance(source, (str, Path)) else None
            if path in held and stats[position] is not None and update.image_files.get(path) == stats[position]:
                reusable[position] = held[path]
        return reusable

    def search(
        self,
        query,
        query_box,
        index: GalleryIndex,
        top_k: int = 10,
        backend: str = "torch",
        threshold: float | None = None,
        best_per_image: bool = False,
    ) -> list[dict]:
        """Ranked matches of the query person in an index (checked to come from this model and settings).
        ``threshold`` above the index's drops weaker detections; below it is an error (they were not kept).
        ``best_per_image`` keeps only the best match of each gallery image (as the protocols count a true
        positive once per image), so that one crowded image cannot fill the top-k."""
        threshold = index.settings.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold
        index.check_compatible(self.model_id(), model_fingerprint(self.model), self.settings(threshold))
        if threshold < index.settings.get("threshold", 0.0):
            raise ValueError(
                f"threshold {threshold} is below the index's {index.settings['threshold']}: the weaker detections "
                "were not kept; rebuild the index with the lower threshold"
            )
        query_embedding = self.embed_query(query, query_box)
        kept = index.scores >= threshold
        candidates = index if bool(kept.all()) else _subset(index, kept)
        if not len(candidates):
            return []
        similarities, rows = candidates.search(
            query_embedding, top_k=len(candidates) if best_per_image else top_k, backend=backend
        )
        ranked, seen_images = [], set()
        for similarity, row in zip(similarities[0].tolist(), rows[0].tolist()):
            image_position = int(candidates.image_index[row])
            if best_per_image and image_position in seen_images:
                continue
            seen_images.add(image_position)
            ranked.append(
                {
                    "rank": len(ranked) + 1,
                    "image": candidates.images[image_position],
                    "image_index": image_position,
                    "box": [round(float(v), 2) for v in candidates.boxes[row]],
                    "similarity": float(similarity),
                    "score": float(candidates.scores[row]),
                }
            )
            if len(ranked) == top_k:
                break
        return ranked

    def __call__(
        self,
        query,
        query_box=None,
        gallery=None,
        index: GalleryIndex | None = None,
        top_k: int = 10,
        threshold: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | None = None,
        backend: str = "torch",
        best_per_image: bool = False,
        recursive: bool = False,
    ):
        if query_box is None:
            if gallery is not None or index is not None:
                raise ValueError("a search needs query_box (x1, y1, x2, y2 of the query person in the query image)")
            images = query if isinstance(query, list) else [query]
            loaded = [image_from_source(source, f"image {i}") for i, source in enumerate(images)]
            detections = self.detect(loaded, threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
            results = [
                [
                    {"box": [round(float(v), 2) for v in box], "score": float(score)}
                    for box, score in zip(d["boxes"], d["scores"])
                ]
                for d in detections
            ]
            return results if isinstance(query, list) else results[0]
        if (gallery is None) == (index is None):
            raise ValueError("give either gallery (a folder, paths or images) or index (a GalleryIndex), not both")
        query = image_from_source(query, "query image")
        check_box(query_box, query.width, query.height, "query")  # before the (long) gallery pass
        if index is None:
            threshold = DEFAULT_THRESHOLD if threshold is None else threshold
            index = self.build_index(
                gallery, threshold=threshold, batch_size=batch_size, progress=progress, recursive=recursive
            )
        return self.search(
            query, query_box, index, top_k=top_k, backend=backend, threshold=threshold, best_per_image=best_per_image
        )


def _subset(index: GalleryIndex, keep: torch.Tensor) -> GalleryIndex:
    return GalleryIndex(
        embeddings=index.embeddings[keep],
        boxes=index.boxes[keep],
        scores=index.scores[keep],
        image_index=index.image_index[keep],
        images=index.images,
        model_id=index.model_id,
        model_fingerprint=index.model_fingerprint,
        settings=index.settings,
        skipped=index.skipped,
    )


def display_path(image: str) -> str:
    """A gallery image as a person reads it: relative to the working folder when it lies below it."""
    if not os.path.isabs(image):
        return image
    relative = os.path.relpath(image)
    return image if relative.startswith("..") else relative


def format_matches_table(matches: Iterable[dict]) -> str:
    """The ranked matches as a plain text table (rank, similarity, detection score, box, image)."""
    lines = [f"{'rank':>4}  {'similarity':>10}  {'det':>5}  {'box (x1, y1, x2, y2)':<30}  image"]
    for match in matches:
        box = ", ".join(f"{v:.0f}" for v in match["box"])
        lines.append(
            f"{match['rank']:>4}  {match['similarity']:>10.4f}  {match['score']:>5.2f}  {box:<30}  "
            f"{display_path(match['image'])}"
        )
    return "\n".join(lines)
