"""From unified records to model batches: the pre-training dataset wrapper and the collate functions.

Batch contract (what ``PersonSearchModel`` / ``PersonSearchPretrainModel`` take):

``collate_search`` -> ``{"pixel_values": float32 (B, 3, H, W) normalised, zero-padded at the bottom/right
to the largest image (``size_divisor=d``: H and W rounded up to multiples of d), "image_sizes": int64 (B, 2) (height, width) before padding, "labels": [B dicts
{"boxes": float32 (n, 4) xyxy, "person_ids": int64 (n,), "ignore_regions": float32 (k, 4) xyxy, k may be
0 (an item without the key has none)}]}``.

``collate_pretrain`` -> the same three keys for view 1 (``size_divisor=d``: H and W rounded up to multiples of
d), ``pixel_values_2``, ``image_sizes_2``, ``labels_2`` for view 2 (every labels dict also has ``person_index``
int64 (n,): the same person has the same index in both views; persons lost by a view's augmentation are absent
from that view), and ``domain_ids`` int64 (B,) (source index within its IAM task), ``is_reid`` bool (B,),
``has_identity`` bool (B,), ``sources`` list[str]. When the two-view augmentation leaves the photometric
part to the training step (``TwoViewAugmentation(photometric_in_step=True)``), the views are uint8 and the
batch also has ``photometric`` and ``photometric_2``: B :class:`~.photometric.PhotometricParams` each, which
the step's :class:`~.photometric.PhotometricAugmentation` applies (and removes) before the model's forward.
When re-ID canvases are painted in the step too (``canvas_in_step``), their views' areas are zero and the batch
has ``planned_views`` / ``planned_views_2``: ``(index, CanvasPlan, ViewParams)`` per such view, which
:meth:`~.augmentation.TwoViewAugmentation.in_step` paints (and removes) first.

Corrupt images met during training never stop the run: :class:`HybridPretrainDataset` counts the
image in its :class:`~hf_personsearch.data.errors.SkipCounter` (logging a warning naming it) and
returns the next image of the same source instead, so batches keep their size (``max_attempts``
consecutive failures mean a broken dataset and raise). The collate functions also drop ``None``
items, for datasets that signal a skipped image that way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .augmentation import TwoViewAugmentation
from .errors import DataFormatError, SkipCounter
from .identity import IdentitySpace
from .unification import DEFAULT_CANVAS_SIZE, DEFAULT_RATIO_RANGE, unify_record

logger = logging.getLogger(__name__)


def pad_images(
    images: Sequence[torch.Tensor | tuple[int, int]], size_divisor: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (3, h, w) images into (B, 3, H, W) zero-padded at the bottom/right; return the sizes.

    H and W are the largest height and width rounded up to multiples of ``size_divisor`` (1: not rounded). An
    entry may be a ``(height, width)`` size instead of an image: its area is left zero, for a view painted
    later on the training device (a uint8 batch when no entry is an image)."""
    if not images:
        raise ValueError("cannot collate an empty batch (every item was None)")
    sizes = torch.tensor(
        [tuple(image.shape[-2:]) if isinstance(image, torch.Tensor) else tuple(image) for image in images],
        dtype=torch.int64,
    )
    height, width = (-(-side // size_divisor) * size_divisor for side in sizes.max(dim=0).values.tolist())
    tensors = [image for image in images if isinstance(image, torch.Tensor)]
    dtype = tensors[0].dtype if tensors else torch.uint8
    batch = torch.zeros((len(images), 3, height, width), dtype=dtype)
    for out, image in zip(batch, images):
        if isinstance(image, torch.Tensor):
            out[:, : image.shape[-2], : image.shape[-1]].copy_(image)
    return batch, sizes


def _labels(view: dict, with_index: bool) -> dict:
    labels = {
        "boxes": torch.as_tensor(view["boxes"], dtype=torch.float32).reshape(-1, 4),
        "person_ids": torch.as_tensor(view["person_ids"], dtype=torch.int64).reshape(-1),
        "ignore_regions": torch.as_tensor(view.get("ignore_regions", ()), dtype=torch.float32).reshape(-1, 4),
    }
    if with_index:
        labels["person_index"] = torch.as_tensor(view["person_index"], dtype=torch.int64).reshape(-1)
    return labels


def collate_search(batch: Sequence[dict | None], size_divisor: int = 1) -> dict:
    """Collate single-view items (``pixel_values``, ``boxes``, ``person_ids``) for PersonSearchModel, padded to
    multiples of ``size_divisor`` (:func:`pad_images`)."""
    items = [item for item in batch if item is not None]
    pixel_values, image_sizes = pad_images([item["pixel_values"] for item in items], size_divisor)
    return {
        "pixel_values": pixel_values,
        "image_sizes": image_sizes,
        "labels": [_labels(item, with_index=False) for item in items],
    }


def collate_pretrain(batch: Sequence[dict | None], size_divisor: int = 1) -> dict:
    """Collate :class:`HybridPretrainDataset` items for PersonSearchPretrainModel (module docstring); each view's
    batch padded to multiples of ``size_divisor`` (:func:`pad_images`; the pre-training config's
    ``data.size_divisor`` says why)."""
    items = [item for item in batch if item is not None]
    out = {}
    for suffix, key in (("", "view1"), ("_2", "view2")):
        views = [item[key] for item in items]
        pixel_values, image_sizes = pad_images(
            [view.get("pixel_values", view.get("image_size")) for view in views], size_divisor
        )
        out["pixel_values" + suffix] = pixel_values
        out["image_sizes" + suffix] = image_sizes
        out["labels" + suffix] = [_labels(view, with_index=True) for view in views]
        planned = [
            (index, view["canvas_plan"], view["view_params"])
            for index, view in enumerate(views)
            if "canvas_plan" in view
        ]
        if planned:
            out["planned_views" + suffix] = planned
        if "photometric" in items[0][key]:
            out["photometric" + suffix] = [item[key]["photometric"] for item in items]
    out["domain_ids"] = torch.tensor([item["domain_id"] for item in items], dtype=torch.int64)
    out["is_reid"] = torch.tensor([item["is_reid"] for item in items], dtype=torch.bool)
    out["has_identity"] = torch.tensor([item["has_identity"] for item in items], dtype=torch.bool)
    out["sources"] = [item["source"] for item in items]
    return out


def _person_ids_column(data) -> list:
    """Every record's person ids without decoding images (a Dataset column read, or a list walk)."""
    if isinstance(data, (list, tuple)):
        return [record["person_ids"] for record in data]
    return list(data["person_ids"])


class HybridPretrainDataset(Dataset):
    """Unification + two views over several pre-training sources; items for :func:`collate_pretrain`.

    Index it with the ``(source_index, sample_index)`` pairs of :class:`~.sampler.HybridSampler`
    (``DataLoader(dataset, sampler=HybridSampler(dataset.source_sizes, ...), collate_fn=collate_pretrain)``)
    or with a flat index into the concatenated sources.

    Args:
        sources: ``(name, task, data)`` per source, ``data`` a ``datasets.Dataset`` or a list of unified
            records; ``task`` the schema task ("detection", "reid" or "search").
        identity_space: the global identity index; built from ``sources`` when ``None`` (pass a saved
            one to resume with identical ids).
        augmentation: the two-view augmentation; default :class:`TwoViewAugmentation` ().
        reid_operation / ratio_range / canvas_size: see :func:`~.unification.unify_record`.
        crops_per_canvas: re-ID crops per canvas (1, the paper; more is the throughput option), the
            extra crops drawn at random from the same source.
        canvas_in_step: re-ID canvases are planned here and painted in the training step
            (:func:`~.unification.unify_record`; the augmentation must leave its photometric half to the step
            too, and the step must run :meth:`~.augmentation.TwoViewAugmentation.in_step`). False (default):
            painted here.
        max_attempts: consecutive unreadable images tolerated before raising (10: a few corrupt files
            are expected in 100k images, ten in a row means the data is broken).
        strict: raise on the first unreadable image instead of skipping it.

    Randomness comes from torch's generator (``torch.manual_seed`` and the DataLoader's per-worker
    seeds make runs reproducible).
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, str, object]],
        *,
        identity_space: IdentitySpace | None = None,
        augmentation: TwoViewAugmentation | None = None,
        reid_operation: str = "expand_resize",
        ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
        canvas_size: tuple[int, int] = DEFAULT_CANVAS_SIZE,
        crops_per_canvas: int = 1,
        canvas_in_step: bool = False,
        max_attempts: int = 10,
        strict: bool = False,
    ):
        self.names = [name for name, _, _ in sources]
        self.data = [data for _, _, data in sources]
        if identity_space is None:
            identity_space = IdentitySpace.from_person_ids(
                [(name, task, _person_ids_column(data)) for name, task, data in sources]
            )
        if [s.name for s in identity_space.sources] != self.names:
            raise ValueError(
                f"identity space sources {[s.name for s in identity_space.sources]} differ from {self.names}"
            )
        for block, data in zip(identity_space.sources, self.data):
            if block.num_records != len(data):
                raise ValueError(
                    f"source {block.name!r}: identity space has {block.num_records} records, data {len(data)}"
                )
        if crops_per_canvas < 1:
            raise ValueError(f"crops_per_canvas must be >= 1, got {crops_per_canvas}")
        self.identity_space = identity_space
        self.augmentation = augmentation if augmentation is not None else TwoViewAugmentation()
        if canvas_in_step and not self.augmentation.photometric_in_step:
            raise ValueError(
                "canvas_in_step needs TwoViewAugmentation(photometric_in_step=True): the planned views get their "
                "pixels in the training step, before the photometric half"
            )
        self.canvas_in_step = canvas_in_step
        self.reid_operation = reid_operation
        self.ratio_range = ratio_range
        self.canvas_size = canvas_size
        self.crops_per_canvas = crops_per_canvas
        self.max_attempts = max_attempts
        self.skips = SkipCounter(strict=strict)
        self._starts = np.cumsum([0] + [len(d) for d in self.data])

    @property
    def source_sizes(self) -> list[int]:
        return [len(data) for data in self.data]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, key) -> tuple[int, int]:
        if isinstance(key, (tuple, list)):
            return int(key[0]), int(key[1])
        if not 0 <= key < len(self):
            raise IndexError(f"index {key} outside 0..{len(self) - 1}")
        source = int(np.searchsorted(self._starts, key, side="right") - 1)
        return source, int(key - self._starts[source])

    def _item(self, source: int, index: int, rng: np.random.Generator) -> dict:
        data = self.data[source]
        extra = []
        if self.identity_space.sources[source].task == "reid" and self.crops_per_canvas > 1:
            others = rng.integers(0, len(data), size=self.crops_per_canvas - 1)
            extra = [(int(i), data[int(i)]) for i in others]
        unified = unify_record(
            data[index],
            self.identity_space,
            source,
            index,
            rng,
            reid_operation=self.reid_operation,
            ratio_range=self.ratio_range,
            canvas_size=self.canvas_size,
            extra_crops=extra,
            canvas_in_step=self.canvas_in_step,
        )
        view1, view2 = self.augmentation(
            unified["image"],
            unified["boxes"],
            unified["person_ids"],
            unified["person_index"],
            ignore_regions=unified["ignore_regions"],
        )
        return {
            "view1": view1,
            "view2": view2,
            "domain_id": unified["domain_id"],
            "is_reid": unified["task"] == "reid",
            "has_identity": unified["has_identity"],
            "source": unified["source"],
        }

    def __getitem__(self, key) -> dict:
        source, index = self._locate(key)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        size = len(self.data[source])
        for attempt in range(self.max_attempts):
            current = (index + attempt) % size
            try:
                return self._item(source, current, rng)
            except (OSError, SyntaxError) as error:
                self.skips.skip("unreadable image", f"{self.names[source]}[{current}]", str(error))
                logger.warning("skipped unreadable image %s[%d]: %s", self.names[source], current, error)
        raise DataFormatError(
            f"source {self.names[source]!r}: {self.max_attempts} consecutive unreadable images from index {index}; "
            f"{self.skips.report(self.names[source])}"
        )
