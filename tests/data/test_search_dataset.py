"""Target-dataset training wrapper: identity map to OIM rows, train fraction, items, corrupt-image skipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_personsearch import PersonSearchImageProcessor
from hf_personsearch.data.augmentation import SingleViewAugmentation
from hf_personsearch.data.collate import collate_search
from hf_personsearch.data.schema import NO_IDENTITY
from hf_personsearch.data.search_dataset import (
    SearchTrainingDataset,
    TargetIdentityMap,
    load_target_queries,
    load_target_records,
    select_fraction,
    target_dataset,
)
from hf_personsearch.data.synthetic import generate


@pytest.fixture(scope="module")
def prw_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prw")
    generate("prw", folder, seed=0)
    return folder


def test_identity_map_sorts_ids_into_rows_and_keeps_no_identity(tmp_path):
    mapping = TargetIdentityMap([9, NO_IDENTITY, 2, 9, 5])
    assert mapping.num_identities == 3
    assert mapping([5, NO_IDENTITY, 9, 2]).tolist() == [1, NO_IDENTITY, 2, 0]
    with pytest.raises(KeyError, match="image x.jpg: person id 7"):
        mapping([7], where="image x.jpg")
    mapping.save(tmp_path / "map.json")
    assert TargetIdentityMap.load(tmp_path / "map.json").person_ids == [2, 5, 9]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        TargetIdentityMap.load(tmp_path / "bad.json")


def test_select_fraction_is_seeded_sorted_and_at_least_one():
    chosen = select_fraction(10, 0.6, seed=3)
    assert len(chosen) == 6 and chosen == sorted(set(chosen)) and all(0 <= i < 10 for i in chosen)
    assert select_fraction(10, 0.6, seed=3) == chosen
    assert select_fraction(10, 1.0, seed=0) == list(range(10))
    assert len(select_fraction(10, 0.01, seed=0)) == 1
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="train_fraction"):
            select_fraction(10, bad, seed=0)


def test_unknown_target_dataset_and_gallery_size_for_prw_are_errors(prw_dir):
    with pytest.raises(ValueError, match="unknown target dataset 'msmt17'"):
        target_dataset("msmt17")
    with pytest.raises(ValueError, match="gallery_size applies to CUHK-SYSU only"):
        load_target_queries("prw", prw_dir, gallery_size=50)


def test_items_map_ids_to_rows_and_scale_boxes(prw_dir):
    records = load_target_records("prw", prw_dir, "train")
    dataset = SearchTrainingDataset(
        records, augmentation=SingleViewAugmentation(PersonSearchImageProcessor(min_size=128, max_size=256), flip_p=0)
    )
    train_ids = sorted({int(i) for r in records for i in r["person_ids"] if i != NO_IDENTITY})
    assert dataset.identity_map.person_ids == train_ids
    for index in range(len(records)):
        record, item = records[index], dataset[index]
        height, width = record["height"], record["width"]
        scale = min(128 / min(height, width), 256 / max(height, width))
        # The processor's rule: each side rounded to the nearest pixel.
        assert item["pixel_values"].shape == (3, round(height * scale), round(width * scale))
        expected_ids = [train_ids.index(i) if i != NO_IDENTITY else NO_IDENTITY for i in record["person_ids"]]
        assert item["person_ids"].tolist() == expected_ids
        sx, sy = item["pixel_values"].shape[2] / width, item["pixel_values"].shape[1] / height
        expected = np.asarray(record["boxes"]) * np.array([sx, sy, sx, sy])
        np.testing.assert_allclose(item["boxes"].numpy(), expected, atol=1e-3)
    batch = collate_search([dataset[0], dataset[1]])
    assert batch["labels"][1]["person_ids"].tolist() == dataset[1]["person_ids"].tolist()


def test_corrupt_image_is_skipped_counted_and_replaced_by_the_next(prw_dir, tmp_path):
    records = [dict(r) for r in load_target_records("prw", prw_dir, "train")]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    records[0]["image"] = str(broken)
    dataset = SearchTrainingDataset(
        records, augmentation=SingleViewAugmentation(PersonSearchImageProcessor(min_size=64, max_size=128), flip_p=0)
    )
    item = dataset[0]
    assert dataset.skips.total == 1 and "broken.jpg" in dataset.skips.examples["unreadable image"][0]
    torch.testing.assert_close(item["boxes"], dataset[1]["boxes"])
    strict = SearchTrainingDataset(records, strict=True)
    with pytest.raises(ValueError, match="broken.jpg"):
        strict[0]
    all_broken = [dict(records[0]) for _ in range(3)]
    with pytest.raises(ValueError, match="3 consecutive unreadable images"):
        SearchTrainingDataset(all_broken, max_attempts=3)[0]


def test_posetrack21_items_carry_the_ignore_regions_scaled_like_the_boxes(tmp_path):
    generate("posetrack21", tmp_path, seed=0)
    records = load_target_records("posetrack21", tmp_path, "train")
    with_regions = [index for index, record in enumerate(records) if len(record["ignore_regions"])]
    assert with_regions, "the synthetic PoseTrack21 has an ignore polygon on each video's first frame"
    dataset = SearchTrainingDataset(
        records, augmentation=SingleViewAugmentation(PersonSearchImageProcessor(min_size=128, max_size=256), flip_p=0)
    )
    for index in with_regions[:2] + [next(i for i in range(len(records)) if i not in with_regions)]:
        record, item = records[index], dataset[index]
        sx = item["pixel_values"].shape[2] / record["width"]
        sy = item["pixel_values"].shape[1] / record["height"]
        expected = np.asarray(record["ignore_regions"]).reshape(-1, 4) * np.array([sx, sy, sx, sy])
        np.testing.assert_allclose(item["ignore_regions"].numpy(), expected, atol=1e-3)
    batch = collate_search([dataset[with_regions[0]]])
    np.testing.assert_allclose(
        batch["labels"][0]["ignore_regions"].numpy(), dataset[with_regions[0]]["ignore_regions"]
    )
