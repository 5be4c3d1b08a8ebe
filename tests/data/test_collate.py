import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hf_personsearch import PersonSearchImageProcessor
from hf_personsearch.data.augmentation import SingleViewAugmentation, TwoViewAugmentation
from hf_personsearch.data.collate import HybridPretrainDataset, collate_pretrain, collate_search
from hf_personsearch.data.errors import DataFormatError
from hf_personsearch.data.sampler import HybridSampler
from hf_personsearch.data.schema import NO_IDENTITY, make_record
from hf_personsearch.image_processing_person_search import IMAGENET_MEAN, IMAGENET_STD

SMALL = dict(min_sizes=(64, 80), max_size=128)


def _scene(index, n_persons, width=96, height=72):
    image = np.full((height, width, 3), 60 + index, np.uint8)
    boxes = [[4 + 30 * k, 4, 24 + 30 * k, 60] for k in range(n_persons)]
    return make_record(
        image=image,
        image_id=f"scene{index}.jpg",
        width=width,
        height=height,
        boxes=boxes,
        person_ids=[NO_IDENTITY] * n_persons,
        source="crowdhuman",
        task="detection",
        split="train",
    )


def _crop(index, pid, source="msmt17"):
    image = np.random.default_rng(index).integers(0, 255, (40, 16, 3), dtype=np.uint8)
    return make_record(
        image=image,
        image_id=f"{source}{index}.jpg",
        width=16,
        height=40,
        boxes=[[0, 0, 16, 40]],
        person_ids=[pid],
        source=source,
        task="reid",
        split="train",
    )


def _sources():
    return [
        ("crowdhuman", "detection", [_scene(0, 3), _scene(1, 0), _scene(2, 2)]),
        ("ecp", "detection", [_scene(3, 1)]),
        ("msmt17", "reid", [_crop(0, 4), _crop(1, 9), _crop(2, 4)]),
        ("luperson", "reid", [_crop(3, NO_IDENTITY, "luperson"), _crop(4, NO_IDENTITY, "luperson")]),
    ]


def test_collate_search_values():
    aug = SingleViewAugmentation(PersonSearchImageProcessor(min_size=36, max_size=1000), flip_p=0.0)
    a = aug(np.full((72, 96, 3), 255, np.uint8), [[10, 8, 30, 60]], [7])  # scale 0.5 -> 36 x 48
    b = aug(np.full((36, 24, 3), 0, np.uint8), np.zeros((0, 4)), [])  # short side 24 -> 36: scale 1.5 -> 54 x 36
    batch = collate_search([a, None, b])
    assert set(batch) == {"pixel_values", "image_sizes", "labels"}
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["image_sizes"].dtype == torch.int64
    assert batch["image_sizes"].tolist() == [[36, 48], [54, 36]]
    assert batch["pixel_values"].shape == (2, 3, 54, 48)
    torch.testing.assert_close(batch["labels"][0]["boxes"], torch.tensor([[5.0, 4.0, 15.0, 30.0]]))
    assert batch["labels"][0]["person_ids"].tolist() == [7] and batch["labels"][0]["person_ids"].dtype == torch.int64
    assert batch["labels"][1]["boxes"].shape == (0, 4) and batch["labels"][1]["boxes"].dtype == torch.float32
    # Padding is zero, image content is copied unchanged.
    assert not batch["pixel_values"][0, :, 36:].any() and not batch["pixel_values"][1, :, :, 36:].any()
    white = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch["pixel_values"][0, :, 10, 10], white)
    torch.testing.assert_close(batch["pixel_values"][0, :, :36], a["pixel_values"])
    with pytest.raises(ValueError, match="empty batch"):
        collate_search([None])


def test_hybrid_dataset_items_and_collate_pretrain():
    torch.manual_seed(0)
    dataset = HybridPretrainDataset(_sources(), augmentation=TwoViewAugmentation(**SMALL), canvas_size=(64, 48))
    assert dataset.source_sizes == [3, 1, 3, 2] and len(dataset) == 9
    space = dataset.identity_space
    assert space.num_identities == 6 + 2 + 2  # 6 detection boxes, msmt {4, 9}, 2 luperson crops
    keys = [(0, 0), (1, 0), (2, 2), (3, 1), (0, 1)]
    batch = collate_pretrain([dataset[k] for k in keys])
    expected_keys = {"pixel_values", "image_sizes", "labels", "pixel_values_2", "image_sizes_2", "labels_2"}
    assert set(batch) == expected_keys | {"domain_ids", "is_reid", "has_identity", "sources"}
    assert batch["domain_ids"].tolist() == [0, 1, 0, 1, 0] and batch["domain_ids"].dtype == torch.int64
    assert batch["is_reid"].tolist() == [False, False, True, True, False]
    assert batch["has_identity"].tolist() == [False, False, True, False, False]
    assert batch["sources"] == ["crowdhuman", "ecp", "msmt17", "luperson", "crowdhuman"]
    expected_ids = {0: [0, 1, 2], 1: [5], 2: [6], 3: [9], 4: []}  # msmt id 4 -> offset 6 + rank 0
    for suffix in ("", "_2"):
        pixel_values, sizes = batch["pixel_values" + suffix], batch["image_sizes" + suffix]
        assert pixel_values.shape[:2] == (5, 3) and sizes.shape == (5, 2) and sizes.dtype == torch.int64
        assert pixel_values.shape[2:] == tuple(sizes.max(dim=0).values.tolist())
        for b, labels in enumerate(batch["labels" + suffix]):
            h, w = sizes[b].tolist()
            assert not pixel_values[b, :, h:].any() and not pixel_values[b, :, :, w:].any()
            assert labels["boxes"].dtype == torch.float32 and labels["person_index"].dtype == torch.int64
            assert labels["person_ids"].tolist() == [expected_ids[b][i] for i in labels["person_index"].tolist()]
            if len(labels["boxes"]):
                assert (labels["boxes"][:, 2] <= w).all() and (labels["boxes"][:, 3] <= h).all()
    # Re-ID canvases always keep their one person: the IoU crop keeps a box, flips/resizes cannot lose it.
    assert batch["labels"][2]["person_index"].tolist() == [0] == batch["labels_2"][2]["person_index"].tolist()


def test_dataloader_with_sampler_end_to_end():
    torch.manual_seed(0)
    dataset = HybridPretrainDataset(_sources(), augmentation=TwoViewAugmentation(**SMALL), canvas_size=(64, 48))
    sampler = HybridSampler(dataset.source_sizes, [1, 1, 1, 1], seed=0, num_samples=8)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate_pretrain)
    batches = list(loader)
    assert len(batches) == 2 and all(len(b["sources"]) == 4 for b in batches)


def test_several_crops_per_canvas_in_dataset():
    torch.manual_seed(0)
    dataset = HybridPretrainDataset(
        _sources(), augmentation=TwoViewAugmentation(crop_p=0.0, **SMALL), canvas_size=(64, 96), crops_per_canvas=3
    )
    item = dataset[(2, 0)]
    assert len(item["view1"]["person_ids"]) == 3 and item["view1"]["person_ids"][0].item() == 6


def test_corrupt_image_skipped_counted_and_replaced(tmp_path):
    broken = tmp_path / "broken.jpg"
    Image.new("RGB", (16, 40)).save(broken)
    broken.write_bytes(broken.read_bytes()[:30])
    bad = _crop(0, 4)
    bad["image"] = str(broken)
    sources = [("msmt17", "reid", [bad, _crop(1, 9)])]
    torch.manual_seed(0)
    dataset = HybridPretrainDataset(sources, augmentation=TwoViewAugmentation(**SMALL), canvas_size=(64, 48))
    item = dataset[(0, 0)]
    assert item["view1"]["person_ids"].tolist() == [1]  # replaced by the next crop (id 9 -> global 1)
    assert dataset.skips.counts["unreadable image"] == 1
    assert "msmt17[0]" in dataset.skips.report("msmt17")
    strict = HybridPretrainDataset(sources, augmentation=TwoViewAugmentation(**SMALL), strict=True)
    with pytest.raises(DataFormatError, match="msmt17\\[0\\]"):
        strict[(0, 0)]
    all_bad = HybridPretrainDataset([("msmt17", "reid", [bad])], max_attempts=3)
    with pytest.raises(DataFormatError, match="3 consecutive unreadable"):
        all_bad[(0, 0)]


def test_works_on_a_datasets_dataset():
    import datasets

    from hf_personsearch.data.schema import features

    records = [_crop(i, pid) for i, pid in enumerate([3, 5])]
    for record in records:
        record["image"] = Image.fromarray(record["image"])
    data = datasets.Dataset.from_list(records, features=features())
    torch.manual_seed(0)
    dataset = HybridPretrainDataset([("msmt17", "reid", data)], augmentation=TwoViewAugmentation(**SMALL))
    assert dataset.identity_space.num_identities == 2
    assert dataset[1]["view2"]["person_ids"].tolist() == [1]


def test_ignore_regions_reach_every_labels_dict():
    aug = SingleViewAugmentation(PersonSearchImageProcessor(min_size=36, max_size=1000), flip_p=0.0)
    a = aug(np.zeros((72, 96, 3), np.uint8), [[10, 8, 30, 60]], [7], ignore_regions=[[40, 0, 96, 40]])
    b = aug(np.zeros((36, 24, 3), np.uint8), np.zeros((0, 4)), [])
    legacy = {key: value for key, value in a.items() if key != "ignore_regions"}  # a dataset of another kind
    labels = collate_search([a, b, legacy])["labels"]
    torch.testing.assert_close(labels[0]["ignore_regions"], torch.tensor([[20.0, 0.0, 48.0, 20.0]]))  # scale 0.5
    for image_labels in labels[1:]:
        assert image_labels["ignore_regions"].shape == (0, 4)
        assert image_labels["ignore_regions"].dtype == torch.float32

    crowd = make_record(
        image=np.full((72, 96, 3), 60, np.uint8),
        image_id="crowd.jpg",
        width=96,
        height=72,
        boxes=[[4, 4, 24, 60]],
        person_ids=[NO_IDENTITY],
        source="crowdhuman",
        task="detection",
        split="train",
        ignore_regions=[[0, 0, 96, 72]],  # the whole image: present in every view, whatever the crop
    )
    sources = [("crowdhuman", "detection", [crowd]), ("msmt17", "reid", [_crop(0, 4)])]
    torch.manual_seed(0)
    dataset = HybridPretrainDataset(sources, augmentation=TwoViewAugmentation(**SMALL), canvas_size=(64, 48))
    batch = collate_pretrain([dataset[(0, 0)], dataset[(1, 0)]])
    for suffix in ("", "_2"):
        scene, reid = batch["labels" + suffix]
        height, width = batch["image_sizes" + suffix][0].tolist()
        torch.testing.assert_close(
            scene["ignore_regions"], torch.tensor([[0.0, 0.0, width, height]]), atol=1e-3, rtol=0
        )
        assert reid["ignore_regions"].shape == (0, 4)


@pytest.mark.parametrize("crops_per_canvas", [1, 2])
def test_canvas_in_step_plans_reid_items_only_and_the_step_paints_them(crops_per_canvas):
    """Detection items are the same whether re-ID canvases are painted in the step or not (same seed: same pixels,
    labels and torch RNG); re-ID items carry their plan, keep their labels' form, and the step gives float views
    of the planned sizes with zero padding, through a DataLoader worker (the plans cross a process boundary)."""
    augmentation = TwoViewAugmentation(photometric_in_step=True, **SMALL)
    options = dict(augmentation=augmentation, canvas_size=(64, 48), crops_per_canvas=crops_per_canvas)
    painted = HybridPretrainDataset(_sources(), **options)
    planned = HybridPretrainDataset(_sources(), canvas_in_step=True, **options)
    keys = [(0, 0), (1, 0), (2, 2), (3, 1), (0, 2)]
    # One seed per item: a re-ID canvas' persons are placed after its noise (painted) or its noise seed (planned),
    # so elsewhere, and the IoU crop's trials on them draw from torch's RNG a different number of times.
    reference, items = [], []
    for seed, key in enumerate(keys):
        torch.manual_seed(seed)
        reference.append(painted[key])
        torch.manual_seed(seed)
        items.append(planned[key])
    for item, expected, (source, _) in zip(items, reference, keys):
        for view, expected_view in ((item["view1"], expected["view1"]), (item["view2"], expected["view2"])):
            own = {"canvas_plan", "view_params", "image_size", "pixel_values"}
            assert view.keys() - own == expected_view.keys() - own
            if source < 2:  # detection
                assert torch.equal(view["pixel_values"], expected_view["pixel_values"])
                for key in ("boxes", "person_ids", "person_index", "ignore_regions"):
                    assert torch.equal(view[key], expected_view[key])
            else:
                assert view["canvas_plan"].size == (64, 48) and len(view["canvas_plan"].crops) == crops_per_canvas
                assert set(view["person_index"].tolist()) <= set(range(crops_per_canvas))
    loader = DataLoader([items], batch_size=None, num_workers=1, collate_fn=collate_pretrain)
    batch = next(iter(loader))
    assert [index for index, _, _ in batch["planned_views"]] == [2, 3]
    stepped = augmentation.in_step(batch)
    assert not {"planned_views", "planned_views_2", "photometric", "photometric_2"} & stepped.keys()
    for suffix in ("", "_2"):
        pixel_values, sizes = stepped["pixel_values" + suffix], stepped["image_sizes" + suffix]
        assert pixel_values.dtype == torch.float32
        for b, (height, width) in enumerate(sizes.tolist()):
            assert pixel_values[b, :, :height, :width].abs().sum() > 0
            assert not pixel_values[b, :, height:].any() and not pixel_values[b, :, :, width:].any()


def test_canvas_in_step_needs_the_photometric_half_in_the_step():
    with pytest.raises(ValueError, match="canvas_in_step needs TwoViewAugmentation"):
        HybridPretrainDataset(_sources(), canvas_in_step=True)


def test_pad_images_leaves_a_planned_view_zero():
    from hf_personsearch.data.collate import pad_images

    image = torch.full((3, 4, 5), 7, dtype=torch.uint8)
    batch, sizes = pad_images([(6, 2), image])
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 6, 5) and sizes.tolist() == [[6, 2], [4, 5]]
    assert not batch[0].any() and (batch[1, :, :4, :5] == 7).all() and not batch[1, :, 4:].any()
    only_planned, _ = pad_images([(3, 3)])
    assert only_planned.dtype == torch.uint8 and only_planned.shape == (1, 3, 3, 3)


def test_pad_images_rounds_the_batch_up_to_the_size_divisor():
    from hf_personsearch.data.collate import pad_images

    image = torch.full((3, 33, 65), 7, dtype=torch.uint8)
    batch, sizes = pad_images([image, (40, 20)], size_divisor=32)
    assert batch.shape == (2, 3, 64, 96) and sizes.tolist() == [[33, 65], [40, 20]]
    assert (batch[0, :, :33, :65] == 7).all() and not batch[0, :, 33:].any() and not batch[0, :, :, 65:].any()
    assert pad_images([image], size_divisor=1)[0].shape == (1, 3, 33, 65)
    assert pad_images([torch.zeros(3, 64, 32)], size_divisor=32)[0].shape == (1, 3, 64, 32)  # already multiples


def test_collate_pretrain_pads_both_views_to_the_size_divisor():
    augmentation = TwoViewAugmentation(min_sizes=[100], max_size=180)
    dataset = HybridPretrainDataset(_sources(), augmentation=augmentation)
    items = [dataset[0], dataset[len(dataset) - 1]]
    plain = collate_pretrain(items)
    padded = collate_pretrain(items, size_divisor=48)
    for suffix in ("", "_2"):
        height, width = plain["pixel_values" + suffix].shape[-2:]
        assert padded["pixel_values" + suffix].shape[-2:] == (-(-height // 48) * 48, -(-width // 48) * 48)
        assert torch.equal(padded["pixel_values" + suffix][..., :height, :width], plain["pixel_values" + suffix])
        assert not padded["pixel_values" + suffix][..., height:, :].any()
        assert torch.equal(padded["image_sizes" + suffix], plain["image_sizes" + suffix])


def test_collate_search_pads_to_the_size_divisor():
    items = [
        {"pixel_values": torch.ones(3, 50, 70), "boxes": np.zeros((0, 4)), "person_ids": []},
        {"pixel_values": torch.ones(3, 60, 40), "boxes": np.zeros((0, 4)), "person_ids": []},
    ]
    batch = collate_search(items, size_divisor=32)
    assert batch["pixel_values"].shape == (2, 3, 64, 96) and batch["image_sizes"].tolist() == [[50, 70], [60, 40]]
    assert batch["pixel_values"][0, :, :50, :70].eq(1).all() and not batch["pixel_values"][0, :, 50:].any()
    assert collate_search(items)["pixel_values"].shape == (2, 3, 60, 70)
