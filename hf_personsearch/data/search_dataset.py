"""Target-dataset training data for fine-tuning (PRW, CUHK-SYSU, PoseTrack21, custom).

Unified records (one per scene image) -> :class:`~.augmentation.SingleViewAugmentation` -> items for
:func:`~.collate.collate_search`. The target dataset's own person ids (PRW 1..932, CUHK-SYSU 0..5531,
anything in custom data) become rows 0..K-1 of the fine-tuned model's OIM lookup table through a
:class:`TargetIdentityMap`; persons without identity keep :data:`~.schema.NO_IDENTITY`, so the OIM loss
sends them to its circular queue as NAE does.

:func:`target_dataset` gives, per dataset, its ``DatasetSpec`` (declared in its parser module): which split
trains, which split is the search gallery, which evaluation protocol applies and how queries are read, so
the fine-tuning and evaluation scripts never hard-code a dataset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..image_loading import load_image
from .augmentation import SingleViewAugmentation
from .errors import DataFormatError, SkipCounter
from .formats import DatasetSpec, get_spec, target_names
from .schema import NO_IDENTITY

logger = logging.getLogger(__name__)


def target_dataset(name: str) -> DatasetSpec:
    """The :class:`~.formats.DatasetSpec` of target dataset ``name`` (its ``train_split``, ``gallery_split``,
    ``protocol``, ``display_name`` ...); other names raise listing the target datasets."""
    if name not in target_names():
        raise ValueError(f"unknown target dataset {name!r}; expected one of {target_names()}")
    return get_spec(name)


def datasets_with_gallery_sizes() -> str:
    """The display names of the target datasets with per-query gallery sizes, for error messages."""
    return " and ".join(get_spec(name).display_name for name in target_names() if get_spec(name).gallery_sizes)


def load_target_records(name: str, data_dir: str | Path, split: str, strict: bool = False) -> list[dict]:
    """Every unified record of one split of a target dataset's raw folder (parsed, not cached)."""
    return list(target_dataset(name).parse(data_dir, split, strict=strict))


def load_target_queries(
    name: str, data_dir: str | Path, gallery_size: int | None = None, strict: bool = False
) -> list[dict]:
    """The queries of a target dataset (schema.py query form), searched in its gallery split.

    ``gallery_size`` is the per-query gallery size of datasets that have them (CUHK-SYSU's TestG{N}; None =
    full set); the other datasets reject one, so a requested protocol is never silently ignored.
    """
    target = target_dataset(name)
    if target.gallery_sizes:
        return target.load_queries(data_dir, target.gallery_split, gallery_size=gallery_size, strict=strict)
    if gallery_size is not None:
        raise ValueError(
            f"{name}: gallery_size applies to {datasets_with_gallery_sizes()} only; {name} searches every other image"
        )
    return target.load_queries(data_dir, target.gallery_split, strict=strict)


def select_fraction(num_records: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of a random ``fraction`` of ``num_records`` images (paper Fig. 5: 10%..100% of the
    target training data). At least one image is kept; the same seed always gives the same subset."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    if num_records < 1:
        raise ValueError("no training images to select from")
    count = max(1, round(fraction * num_records))
    chosen = np.random.default_rng(seed).choice(num_records, size=count, replace=False)
    return sorted(int(i) for i in chosen)


class TargetIdentityMap:
    """The labeled person ids of a target dataset -> OIM lookup-table rows 0..K-1 (sorted by id).

    :data:`NO_IDENTITY` maps to itself (the OIM queue's persons). Ids never seen when the map was built
    raise: a training label outside the table would be a silent bug.
    """

    def __init__(self, person_ids: Sequence[int]):
        ids = sorted({int(i) for i in person_ids if int(i) != NO_IDENTITY})
        self.person_ids = ids
        self._row = {person_id: row for row, person_id in enumerate(ids)}

    @classmethod
    def from_records(cls, records: Sequence[dict]) -> TargetIdentityMap:
        """The map of every labeled person in ``records``."""
        return cls([int(i) for record in records for i in np.asarray(record["person_ids"]).reshape(-1)])

    @property
    def num_identities(self) -> int:
        return len(self.person_ids)

    def __call__(self, person_ids, where: str = "") -> np.ndarray:
        """Map an array of dataset person ids to OIM rows (``where`` names the image in errors)."""
        ids = np.asarray(person_ids, dtype=np.int64).reshape(-1)
        out = np.full(ids.shape, NO_IDENTITY, dtype=np.int64)
        for position, person_id in enumerate(ids.tolist()):
            if person_id == NO_IDENTITY:
                continue
            if person_id not in self._row:
                raise KeyError(
                    f"{where}: person id {person_id} is not in the identity map ({self.num_identities} ids)"
                )
            out[position] = self._row[person_id]
        return out

    def save(self, path: str | Path) -> None:
        """Write ``{"person_ids": [...]}`` (row r = person_ids[r]) so predictions can be mapped back."""
        Path(path).write_text(json.dumps({"person_ids": self.person_ids}))

    @classmethod
    def load(cls, path: str | Path) -> TargetIdentityMap:
        try:
            content = json.loads(Path(path).read_text())
            return cls(content["person_ids"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: expected a JSON object with a 'person_ids' list ({error})") from error


class SearchTrainingDataset(Dataset):
    """Fine-tuning items for :func:`~.collate.collate_search` from the records of a target dataset.

    Args:
        records: unified records (a list, or a ``datasets.Dataset`` of them).
        identity_map: person id -> OIM row; default: built from ``records`` (pass the map of the full
            training split when ``records`` is a fraction of it, so the OIM table size stays the same).
        augmentation: default :class:`SingleViewAugmentation` () (NAE: 900/1500, flip 0.5).
        max_attempts: consecutive unreadable images tolerated before raising (10, as the pre-training
            dataset: a few broken files are expected, ten in a row means a broken folder).
        strict: raise on the first unreadable image instead of skipping it.

    Item: ``{"pixel_values": (3, H, W) float, "boxes": (n, 4) xyxy on that image, "person_ids": (n,) OIM
    rows or NO_IDENTITY, "person_index": (n,), "ignore_regions": (k, 4) xyxy on that image}`` (the record's
    ignore regions, e.g. PoseTrack21's, moved with the boxes; a record without the field has none). An unreadable image is counted in ``skips`` (with a
    warning naming it) and the next image is returned instead, so batches keep their size.
    """

    def __init__(
        self,
        records,
        *,
        identity_map: TargetIdentityMap | None = None,
        augmentation: SingleViewAugmentation | None = None,
        max_attempts: int = 10,
        strict: bool = False,
    ):
        if len(records) == 0:
            raise ValueError("SearchTrainingDataset: no records")
        self.records = records
        self.identity_map = identity_map if identity_map is not None else TargetIdentityMap.from_records(records)
        self.augmentation = augmentation if augmentation is not None else SingleViewAugmentation()
        self.max_attempts = max_attempts
        self.skips = SkipCounter(strict=strict)

    def __len__(self) -> int:
        return len(self.records)

    def _item(self, index: int) -> dict:
        record = self.records[index]
        where = f"{record.get('source', 'record')} {record.get('image_id', index)}"
        image = load_image(record["image"], where)
        person_ids = self.identity_map(record["person_ids"], where)
        return self.augmentation(image, record["boxes"], person_ids, ignore_regions=record.get("ignore_regions"))

    def __getitem__(self, index: int) -> dict:
        for attempt in range(self.max_attempts):
            current = (index + attempt) % len(self)
            try:
                return self._item(current)
            except (OSError, SyntaxError) as error:
                self.skips.skip("unreadable image", f"record {current}", str(error))
                logger.warning("skipped unreadable image (record %d): %s", current, error)
        raise DataFormatError(
            f"{self.max_attempts} consecutive unreadable images from record {index}; {self.skips.report()}"
        )
