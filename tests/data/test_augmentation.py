import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.transforms import v2

from hf_personsearch import PersonSearchImageProcessor
from hf_personsearch.data.augmentation import (
    IgnoreRegions,
    PersonIoUCrop,
    ShortestSideResize,
    SingleViewAugmentation,
    TwoViewAugmentation,
)
from hf_personsearch.image_processing_person_search import IMAGENET_MEAN, IMAGENET_STD, resized_size

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _denormalise(pixel_values):
    return ((pixel_values * STD + MEAN) * 255).round().clamp(0, 255).to(torch.uint8)


def _colour(person):
    return (40 + 50 * person, 250 - 40 * person, 30 + 70 * (person % 3))


@st.composite
def _scene(draw):
    """A grid of non-overlapping persons, each painted in its own solid colour on a grey scene."""
    height, width = draw(st.integers(60, 140)), draw(st.integers(60, 160))
    image = np.full((height, width, 3), 128, np.uint8)
    cells = [(r, c) for r in range(2) for c in range(2)]
    chosen = draw(st.lists(st.sampled_from(cells), min_size=0, max_size=4, unique=True))
    boxes = []
    for person, (row, col) in enumerate(chosen):
        cell_h, cell_w = height // 2, width // 2
        y1, x1 = row * cell_h + 2, col * cell_w + 2
        y2 = y1 + draw(st.integers(12, cell_h - 4))
        x2 = x1 + draw(st.integers(10, cell_w - 4))
        image[y1:y2, x1:x2] = _colour(person)
        boxes.append([x1, y1, x2, y2])
    person_ids = [100 + p for p in range(len(chosen))]
    return image, np.array(boxes, np.float32).reshape(-1, 4), person_ids, draw(st.integers(0, 2**31 - 1))


GEOMETRY_ONLY = dict(min_sizes=(48, 64, 96), max_size=200, color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


@settings(max_examples=15, deadline=None)
@given(_scene(), st.booleans())
def test_views_stay_in_correspondence(scene, photometric_in_step):
    image, boxes, person_ids, seed = scene
    torch.manual_seed(seed)
    augmentation = TwoViewAugmentation(min_box_size=6.0, photometric_in_step=photometric_in_step, **GEOMETRY_ONLY)
    views = augmentation(image, boxes, person_ids)
    for view in views:
        # The worker's uint8 view when the photometric part is left to the step (none is drawn here).
        pixels = view["pixel_values"] if photometric_in_step else _denormalise(view["pixel_values"])
        height, width = pixels.shape[-2:]
        assert view["pixel_values"].dtype == (torch.uint8 if photometric_in_step else torch.float32)
        # The processor's rule, sides rounded: the short side is a listed size exactly, or the long side the cap.
        assert min(height, width) in (48, 64, 96) or max(height, width) == 200
        assert view["boxes"].shape == (len(view["person_ids"]), 4) and len(view["person_index"]) == len(
            view["person_ids"]
        )
        for box, pid, index in zip(view["boxes"], view["person_ids"].tolist(), view["person_index"].tolist()):
            assert pid == person_ids[index]  # ids and indices stay in sync through sanitisation
            x1, y1, x2, y2 = box.tolist()
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            # The box still covers that person's pixels: its centre has the person's colour.
            cy, cx = int((y1 + y2) / 2), int((x1 + x2) / 2)
            np.testing.assert_allclose(pixels[:, cy, cx].tolist(), _colour(index), atol=12)


def test_person_below_min_box_size_is_dropped_with_its_labels():
    # A 4-px-wide person is 1 px wide once the image is scaled down by 4: min_box_size=2 drops it.
    image = np.full((200, 200, 3), 128, np.uint8)
    boxes = np.array([[10, 10, 90, 190], [150, 20, 154, 60]], np.float32)
    view = SingleViewAugmentation(PersonSearchImageProcessor(min_size=50, max_size=51), flip_p=0.0)
    small = TwoViewAugmentation(min_sizes=(50,), max_size=51, crop_p=0.0, min_box_size=2.0)
    big = TwoViewAugmentation(min_sizes=(200,), max_size=201, crop_p=0.0, min_box_size=2.0)
    v_small, _ = small(image, boxes, [5, 6])
    v_big, _ = big(image, boxes, [5, 6])
    assert v_small["person_index"].tolist() == [0] and v_small["person_ids"].tolist() == [5]
    assert v_big["person_index"].tolist() == [0, 1]
    assert view(image, boxes, [5, 6])["boxes"].shape == (2, 4)  # the single view keeps boxes >= 1 px


def test_multi_scale_training_draws_paired_bounds_and_boxes_follow():
    """AlignPS's recipe: one (shortest, longest) pair per image. A 1080x1920 frame is bounded by its longest side:
    (400, 667) gives 375x667 (scale 667/1920), (1200, 2000) gives 1125x2000; boxes scale with the image."""
    image = np.zeros((1080, 1920, 3), np.uint8)
    boxes = np.array([[192.0, 108.0, 384.0, 540.0]], np.float32)
    view = SingleViewAugmentation(
        PersonSearchImageProcessor(min_size=900, max_size=1500),
        flip_p=0.0,
        min_sizes=[400, 1200],
        max_size=[667, 2000],
    )
    seen = {}
    torch.manual_seed(0)
    for _ in range(20):
        out = view(image, boxes, [3])
        height, width = out["pixel_values"].shape[-2:]
        seen[(height, width)] = out["boxes"][0]
    assert set(seen) == {(375, 667), (1125, 2000)}
    for (height, width), box in seen.items():
        torch.testing.assert_close(box, torch.tensor(boxes[0]) * torch.tensor([width / 1920, height / 1080] * 2))
    # one longest side for every size, and mismatched lists are refused
    assert SingleViewAugmentation(flip_p=0.0, min_sizes=[400], max_size=2000)(image, boxes, [3])["pixel_values"].shape[
        -2:
    ] == (400, 711)
    with pytest.raises(ValueError, match="one per min_sizes entry"):
        SingleViewAugmentation(min_sizes=[400, 600], max_size=[667])


def test_single_view_resize_flip_hand_checked():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = 255
    boxes = np.array([[20, 10, 60, 90]], np.float32)
    out = SingleViewAugmentation(PersonSearchImageProcessor(min_size=50, max_size=1000), flip_p=1.0)(image, boxes, [3])
    assert out["pixel_values"].shape == (3, 50, 100)
    # Scale 0.5, then mirrored: x -> 100 - x.
    torch.testing.assert_close(out["boxes"], torch.tensor([[70.0, 5.0, 90.0, 45.0]]))
    pixels = _denormalise(out["pixel_values"])
    assert pixels[:, 25, 90].tolist() == [255, 255, 255] and pixels[:, 25, 10].tolist() == [0, 0, 0]
    # max_size caps the longest side: 100 x 200 with min 900 would be 1800 wide -> 1500.
    capped = SingleViewAugmentation(flip_p=0.0)(image, boxes, [3])
    assert capped["pixel_values"].shape == (3, 750, 1500)
    torch.testing.assert_close(capped["boxes"], torch.tensor([[150.0, 75.0, 450.0, 675.0]]))


def test_normalisation_values():
    image = np.full((10, 10, 3), 255, np.uint8)
    out = SingleViewAugmentation(PersonSearchImageProcessor(min_size=10, max_size=11), flip_p=0.0)(
        image, np.zeros((0, 4)), []
    )
    expected = (1.0 - MEAN) / STD
    torch.testing.assert_close(out["pixel_values"][:, 5, 5], expected.view(3))
    assert out["boxes"].shape == (0, 4) and out["person_ids"].dtype == torch.int64


@pytest.mark.parametrize(
    "height, width, min_size, max_size",
    [
        (1080, 1920, 900, 1500),  # full-HD frame: 843.75 rows -> 844 (truncation gave 843)
        (1920, 1080, 900, 1500),  # portrait
        (100, 309, 900, 1500),  # 309 * 1500 / 309 = 1499.9999999999998 -> 1500, not 1499
        (333, 777, 96, 160),  # odd sizes, capped by max_size
        (501, 499, 128, 256),  # near-square, odd, downscaled
        (37, 53, 64, 128),  # upscaled
    ],
)
def test_evaluation_view_is_the_processor_output(height, width, min_size, max_size):
    # The training view without random scale or flip and the processor share the size rule, the resize
    # kernel and the normalisation: same (h, w), same boxes, bit-identical pixels.
    rng = np.random.default_rng(height * width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxes = np.array([[0.2 * width, 0.1 * height, 0.6 * width, 0.9 * height]], np.float32)
    processor = PersonSearchImageProcessor(min_size=min_size, max_size=max_size)
    batch = processor([image], boxes=[boxes])
    view = SingleViewAugmentation(processor, flip_p=0.0)(image, boxes, [3])
    size = resized_size(height, width, min_size, max_size)
    assert tuple(batch["image_sizes"][0].tolist()) == size == tuple(view["pixel_values"].shape[1:])
    assert min(size) == min_size or max(size) == max_size
    assert torch.equal(batch["pixel_values"][0], view["pixel_values"])
    torch.testing.assert_close(batch["boxes"][0], view["boxes"])


def test_processor_mean_std_reach_both_augmentations():
    processor = PersonSearchImageProcessor(
        min_size=16, max_size=32, image_mean=(0.5, 0.25, 0.0), image_std=(0.25, 0.5, 2.0)
    )
    white = np.full((16, 16, 3), 255, np.uint8)
    expected = torch.tensor([2.0, 1.5, 0.5])  # (1 - mean) / std by hand
    single = SingleViewAugmentation(processor, flip_p=0.0)(white, np.zeros((0, 4)), [])
    torch.testing.assert_close(single["pixel_values"][:, 8, 8], expected)
    views = TwoViewAugmentation(
        processor, min_sizes=(16,), max_size=32, crop_p=0.0, color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0
    )(white, np.zeros((0, 4)), [])
    for view in views:
        torch.testing.assert_close(view["pixel_values"][:, 8, 8], expected)


def test_negative_image_two_views():
    views = TwoViewAugmentation(min_sizes=(32,), max_size=64)(np.zeros((40, 40, 3), np.uint8), np.zeros((0, 4)), [])
    assert all(v["boxes"].shape == (0, 4) and v["person_index"].numel() == 0 for v in views)


def test_two_views_differ_and_mismatched_lengths_rejected():
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    v1, v2 = TwoViewAugmentation(min_sizes=(64,), max_size=65, crop_p=0.0)(image, [[0, 0, 30, 60]], [1])
    assert not torch.equal(v1["pixel_values"], v2["pixel_values"])
    with pytest.raises(ValueError, match="2 boxes, 1 person ids"):
        SingleViewAugmentation()(image, [[0, 0, 5, 5], [1, 1, 6, 6]], [1])


NO_PHOTOMETRY = {"color_jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}


def test_ignore_regions_resized_and_flipped_like_boxes_hand_checked():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = [[20, 10, 60, 90]]
    regions = [[20, 10, 60, 90], [150, 0, 200, 50]]
    views = TwoViewAugmentation(min_sizes=[50], max_size=1000, crop_p=0.0, flip_p=1.0, **NO_PHOTOMETRY)(
        image, boxes, [3], ignore_regions=regions
    )
    single = SingleViewAugmentation(PersonSearchImageProcessor(min_size=50, max_size=1000), flip_p=1.0)(
        image, boxes, [3], ignore_regions=regions
    )
    for view in (*views, single):
        # Scale 0.5, then mirrored in a 100-px wide view: x -> 100 - x, as the person box.
        torch.testing.assert_close(view["boxes"], torch.tensor([[70.0, 5.0, 90.0, 45.0]]))
        torch.testing.assert_close(
            view["ignore_regions"], torch.tensor([[70.0, 5.0, 90.0, 45.0], [0.0, 0.0, 25.0, 25.0]])
        )
        assert view["ignore_regions"].dtype == torch.float32
    # No region given: an empty (0, 4) field, as from a record without regions.
    assert SingleViewAugmentation(flip_p=0.0)(image, boxes, [3])["ignore_regions"].shape == (0, 4)
    with pytest.raises(ValueError, match=r"ignore_regions must be a \(k, 4\)"):
        SingleViewAugmentation(flip_p=0.0)(image, boxes, [3], ignore_regions=[[1, 2, 3]])


def test_iou_crop_chosen_on_persons_moves_and_clips_ignore_regions():
    """PersonIoUCrop draws exactly RandomIoUCrop's crop from the persons alone (a region covering the whole
    image would otherwise satisfy any IoU option), then translates every region by it: none is dropped
    for its centre, ClampBoundingBoxes clips them to the crop."""
    image = tv_tensors.Image(torch.zeros((3, 100, 200), dtype=torch.uint8))
    persons = tv_tensors.BoundingBoxes([[90, 30, 110, 70]], format="XYXY", canvas_size=(100, 200))
    regions = torch.tensor([[0, 0, 200, 100], [0, 0, 30, 100], [170, 0, 200, 100], [60, 20, 140, 80.0]])
    crop_and_clip = v2.Compose([PersonIoUCrop(), v2.ClampBoundingBoxes()])
    cropped_seeds = 0
    for seed in range(30):
        torch.manual_seed(seed)
        params = v2.RandomIoUCrop().make_params([image, persons])
        torch.manual_seed(seed)
        target = {"boxes": persons, "ignore_regions": IgnoreRegions(regions, format="XYXY", canvas_size=(100, 200))}
        out_image, out = crop_and_clip(image, target)
        if not params:  # RandomIoUCrop's "keep the whole image" option
            torch.testing.assert_close(out["ignore_regions"].as_subclass(torch.Tensor), regions)
            continue
        left, top, width, height = params["left"], params["top"], params["width"], params["height"]
        assert out_image.shape[-2:] == (height, width)
        expected = regions - torch.tensor([left, top, left, top], dtype=torch.float32)
        expected[:, 0::2] = expected[:, 0::2].clamp(0, width)
        expected[:, 1::2] = expected[:, 1::2].clamp(0, height)
        torch.testing.assert_close(out["ignore_regions"].as_subclass(torch.Tensor), expected)
        cropped_seeds += 1
    assert cropped_seeds >= 10


def test_two_views_keep_regions_inside_the_view_and_drop_regions_cut_away():
    image = np.zeros((100, 200, 3), np.uint8)
    person = [90, 30, 110, 70]
    # The first region is the person's own box: it must land exactly where the person does.
    regions = [person, [0, 0, 12, 12], [0, 0, 200, 100]]
    augmentation = TwoViewAugmentation(min_sizes=[100], max_size=1000, crop_p=1.0, **NO_PHOTOMETRY)
    corner_lost = 0
    for seed in range(25):
        torch.manual_seed(seed)
        for view in augmentation(image, [person], [0], ignore_regions=regions):
            height, width = view["pixel_values"].shape[-2:]
            out = view["ignore_regions"]
            assert ((out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])).all()
            assert (out >= 0).all() and (out[:, 0::2] <= width).all() and (out[:, 1::2] <= height).all()
            if len(view["boxes"]):
                torch.testing.assert_close(out[0], view["boxes"][0])
            # The whole-image region always covers the whole view; the corner one may be cut away.
            torch.testing.assert_close(out[-1], torch.tensor([0.0, 0.0, width, height]), atol=1e-3, rtol=0)
            corner_lost += len(out) < len(regions)
    assert corner_lost > 0


def _torchvision_two_view_pipeline(min_sizes, max_size) -> v2.Compose:
    """The two-view augmentation as one torchvision pipeline, photometric ops in the worker (SimSiam's
    settings): the reference the split pipeline (geometry here, photometry here or in the step) must equal."""
    return v2.Compose(
        [
            v2.RandomApply([PersonIoUCrop()], p=0.5),
            ShortestSideResize(min_sizes, max_size),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=0.5),
            v2.ClampBoundingBoxes(),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def _labels_of(inputs):
    """SanitizeBoundingBoxes' labels_getter: the per-person tensors that must follow the boxes."""
    target = inputs[1]
    return target["person_ids"], target["person_index"]


def _run_reference(pipeline, image, boxes, person_ids, regions, min_box_size=2.0) -> dict:
    """``pipeline`` on tv_tensors (persons as BoundingBoxes, regions as IgnoreRegions), then SanitizeBoundingBoxes on
    the persons and the regions left without area dropped: a view dict of plain tensors."""
    tensor = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
    size = tuple(tensor.shape[-2:])
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=size),
        "person_ids": torch.tensor(person_ids, dtype=torch.int64),
        "person_index": torch.arange(len(person_ids)),
        "ignore_regions": IgnoreRegions(torch.tensor(regions, dtype=torch.float32), format="XYXY", canvas_size=size),
    }
    out_image, out = pipeline(tensor, target)
    kept = out.pop("ignore_regions").as_subclass(torch.Tensor)
    sanitize = v2.SanitizeBoundingBoxes(min_size=min_box_size, min_area=min_box_size**2, labels_getter=_labels_of)
    out_image, out = sanitize(out_image, out)
    out = {key: value.as_subclass(torch.Tensor) for key, value in out.items()}
    out["pixel_values"] = out_image.as_subclass(torch.Tensor)
    out["ignore_regions"] = kept[(kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])]
    return out


def test_two_views_are_the_torchvision_pipeline_seed_for_seed_with_photometry_here_or_in_the_step():
    """Same seed: the same crops, scales, flips and photometric parameters as the one-pipeline reference, so
    the same boxes, ids, person indices and ignore regions exactly and the same pixels to float rounding;
    with ``photometric_in_step`` the views are the uint8 geometry plus parameters that give those pixels."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    boxes = [[10, 10, 40, 80], [50, 20, 75, 85], [80, 5, 110, 60]]
    person_ids, regions = [7, 8, 9], [[0, 0, 30, 30], [60, 40, 120, 90]]
    for person, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1:y2, x1:x2] = _colour(person)
    reference = _torchvision_two_view_pipeline((48, 64, 96), 160)
    here = TwoViewAugmentation(min_sizes=(48, 64, 96), max_size=160)
    in_step = TwoViewAugmentation(min_sizes=(48, 64, 96), max_size=160, photometric_in_step=True)
    cropped = 0
    for seed in range(40):
        torch.manual_seed(seed)
        expected = [_run_reference(reference, image, boxes, person_ids, regions) for _ in range(2)]
        torch.manual_seed(seed)
        views = here(image, boxes, person_ids, ignore_regions=regions)
        torch.manual_seed(seed)
        deferred = in_step(image, boxes, person_ids, ignore_regions=regions)
        for target, view, raw in zip(expected, views, deferred):
            for key in ("boxes", "person_ids", "person_index", "ignore_regions"):
                assert torch.equal(view[key], target[key]) and torch.equal(raw[key], view[key])
            torch.testing.assert_close(view["pixel_values"], target["pixel_values"], atol=2e-5, rtol=0)
            assert raw["pixel_values"].dtype == torch.uint8 and "photometric" not in view
            assert torch.equal(
                in_step.photometric.apply(raw["pixel_values"], raw["photometric"]), view["pixel_values"]
            )
            cropped += len(target["boxes"]) < len(boxes)
    assert cropped > 0  # the IoU crop did drop persons in some views


def test_person_iou_crop_is_random_iou_crop_on_the_persons_exactly():
    """Same seed, random scenes of 1-13 persons: the same crop (and the same RNG draws) as torchvision's
    RandomIoUCrop on the persons alone, whatever ignore regions come along."""
    rng = np.random.default_rng(1)
    for seed in range(120):
        height, width, count = int(rng.integers(40, 700)), int(rng.integers(40, 900)), int(rng.integers(1, 14))
        x1, y1 = rng.uniform(0, 0.9 * width, count), rng.uniform(0, 0.9 * height, count)
        corners = [x1, y1, np.minimum(x1 + rng.uniform(1, width / 3, count), width)]
        corners.append(np.minimum(y1 + rng.uniform(1, height / 2, count), height))
        boxes = torch.tensor(np.stack(corners, 1), dtype=torch.float32)
        image = tv_tensors.Image(torch.zeros((3, height, width), dtype=torch.uint8))
        persons = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
        regions = IgnoreRegions([[0, 0, width, height]], format="XYXY", canvas_size=(height, width))
        torch.manual_seed(seed)
        expected = v2.RandomIoUCrop().make_params([image, persons])
        next_expected = torch.rand(1)
        torch.manual_seed(seed)
        params = PersonIoUCrop().make_params([image, persons, regions])
        assert torch.rand(1) == next_expected
        assert params.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(params[key], value) if key == "is_within_crop_area" else params[key] == value


def _random_scene(rng, max_persons=8):
    """A random image with 0-``max_persons`` boxes anywhere (some tiny, some at the border) and 0-3 regions."""
    height, width = int(rng.integers(30, 300)), int(rng.integers(30, 400))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

    def boxes(count):
        x1, y1 = rng.uniform(0, width - 1, count), rng.uniform(0, height - 1, count)
        x2 = np.minimum(x1 + rng.uniform(0.5, width / 2, count), width)
        y2 = np.minimum(y1 + rng.uniform(0.5, height / 2, count), height)
        return np.stack([x1, y1, x2, y2], 1).astype(np.float32)

    count = int(rng.integers(0, max_persons + 1))
    return image, boxes(count), list(range(10, 10 + count)), boxes(int(rng.integers(0, 4)))


def _reference_geometry(image, boxes, person_ids, regions, crop_p, flip_p, min_sizes, max_size, min_box_size):
    """The geometric half of a view as the transforms.v2 pipeline it replaces: tv_tensors through RandomApply(
    PersonIoUCrop) (persons only), ShortestSideResize, RandomHorizontalFlip, ClampBoundingBoxes, then
    SanitizeBoundingBoxes on the persons and the empty regions dropped."""
    steps = [v2.RandomApply([PersonIoUCrop()], p=crop_p)] if crop_p is not None and len(boxes) else []
    pipeline = v2.Compose(
        steps + [ShortestSideResize(min_sizes, max_size), v2.RandomHorizontalFlip(p=flip_p), v2.ClampBoundingBoxes()]
    )
    return _run_reference(pipeline, image, boxes, person_ids, regions, min_box_size)


def _assert_same_view(view, expected):
    for key in ("pixel_values", "boxes", "person_ids", "person_index", "ignore_regions"):
        assert view[key].dtype == expected[key].dtype and torch.equal(view[key], expected[key]), key


def test_two_view_geometry_is_the_transforms_v2_pipeline_bit_for_bit():
    """Random scenes (no person to eight, boxes cut by the border, sub-pixel persons, ignore regions), every crop
    probability: the uint8 pixels, boxes, ids, indices and regions of both views are the transforms.v2 pipeline's
    exactly, and torch's RNG ends where it does (the same draws, in the same order)."""
    rng = np.random.default_rng(0)
    cropped = 0
    for seed in range(150):
        image, boxes, person_ids, regions = _random_scene(rng)
        crop_p = [0.0, 0.5, 1.0][seed % 3]
        augmentation = TwoViewAugmentation(
            min_sizes=(40, 64, 100), max_size=300, crop_p=crop_p, min_box_size=2.0, photometric_in_step=True
        )
        torch.manual_seed(seed)
        expected = []
        for _ in range(2):
            expected.append(_reference_geometry(image, boxes, person_ids, regions, crop_p, 0.5, (40, 64, 100), 300, 2))
            expected[-1]["photometric"] = augmentation.photometric.draw()
        after = torch.rand(1)
        torch.manual_seed(seed)
        views = augmentation(image, boxes, person_ids, ignore_regions=regions)
        assert torch.rand(1) == after
        for view, reference in zip(views, expected):
            _assert_same_view(view, reference)
            assert view["photometric"] == reference["photometric"]
            cropped += len(view["boxes"]) < len(boxes)
    assert cropped > 20


def test_single_view_is_the_transforms_v2_pipeline_bit_for_bit():
    """Fine-tuning's view (multi-scale pairs, flip, float normalisation) against the pipeline it replaces."""
    rng = np.random.default_rng(1)
    processor = PersonSearchImageProcessor(min_size=64, max_size=200)
    for seed in range(60):
        image, boxes, person_ids, regions = _random_scene(rng)
        min_sizes, max_size = ((48, 96), (150, 250)) if seed % 2 else (None, None)
        augmentation = SingleViewAugmentation(processor, flip_p=0.5, min_sizes=min_sizes, max_size=max_size)
        torch.manual_seed(seed)
        expected = _reference_geometry(
            image, boxes, person_ids, regions, None, 0.5, min_sizes or [64], max_size or 200, 1.0
        )
        expected["pixel_values"] = v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)(
            v2.ToDtype(torch.float32, scale=True)(tv_tensors.Image(expected["pixel_values"]))
        ).as_subclass(torch.Tensor)
        after = torch.rand(1)
        torch.manual_seed(seed)
        view = augmentation(image, boxes, person_ids, ignore_regions=regions)
        assert torch.rand(1) == after
        _assert_same_view(view, expected)


def test_kept_persons_is_sanitize_bounding_boxes():
    from hf_personsearch.data.augmentation import kept_persons

    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand((400, 4), generator=generator) * 70 - 10  # some negative, some beyond the 50 x 60 canvas
    boxes[:, 2:] += boxes[:, :2].clamp(min=0) * torch.rand((400, 2), generator=generator).round()
    for min_size in (1.0, 2.0, 6.5):
        image = tv_tensors.Image(torch.zeros((3, 50, 60), dtype=torch.uint8))
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(50, 60)),
            "person_ids": torch.arange(400),
            "person_index": torch.arange(400),
        }
        sanitize = v2.SanitizeBoundingBoxes(min_size=min_size, min_area=min_size**2, labels_getter=_labels_of)
        expected = sanitize(image, target)[1]["person_index"]
        keep = kept_persons(boxes, (50, 60), min_size)
        assert torch.equal(torch.arange(400)[keep], expected) and 0 < keep.sum() < 400


def _pretrain_item(view1, view2):
    return {"view1": view1, "view2": view2, "domain_id": 0, "is_reid": False, "has_identity": False, "source": ""}


def test_planned_views_are_the_views_of_the_painted_canvas_exactly():
    """A CanvasPlan through the two views draws what its painted canvas does (same seed: the same boxes, ids,
    indices, sizes and torch RNG after), and the step paints those views bit for bit, in a batch mixed with
    ordinary views; the batch then goes through the photometric half as before."""
    from hf_personsearch.data.augmentation import paint_planned_views
    from hf_personsearch.data.collate import collate_pretrain
    from hf_personsearch.data.unification import expand_resize

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (64 + 8 * i, 32 + 4 * i, 3), dtype=np.uint8) for i in range(6)]
    scene, scene_boxes = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), [[10, 10, 40, 80], [50, 20, 75, 85]]
    augmentation = TwoViewAugmentation(min_sizes=(48, 64, 96), max_size=160, photometric_in_step=True)
    for seed, crop in enumerate(crops):
        plan, box = expand_resize(crop, np.random.default_rng(seed), out_size=(96, 96), plan_only=True)
        canvas = plan.paint().permute(1, 2, 0).numpy()
        torch.manual_seed(seed)
        painted = [augmentation(scene, scene_boxes, [1, 2]), augmentation(canvas, box[None], [7])]
        after = torch.rand(1)
        torch.manual_seed(seed)
        planned = [augmentation(scene, scene_boxes, [1, 2]), augmentation(plan, box[None], [7])]
        assert torch.rand(1) == after
        for view, reference in zip(planned[1], painted[1]):
            assert view["canvas_plan"] is plan and "pixel_values" not in view
            assert view["image_size"] == tuple(reference["pixel_values"].shape[-2:])
            for key in ("boxes", "person_ids", "person_index", "ignore_regions", "photometric"):
                assert view[key] == reference[key] if key == "photometric" else torch.equal(view[key], reference[key])
        expected = collate_pretrain([_pretrain_item(*views) for views in painted])
        batch = collate_pretrain([_pretrain_item(*views) for views in planned])
        assert (
            [entry[0] for entry in batch["planned_views"]] == [1] == [entry[0] for entry in batch["planned_views_2"]]
        )
        assert not batch["pixel_values"][1].any()  # the planned view's area waits for the step
        out = paint_planned_views(batch)
        assert "planned_views" not in out and "planned_views_2" not in out
        for key in ("pixel_values", "pixel_values_2", "image_sizes", "image_sizes_2"):
            assert torch.equal(out[key], expected[key]), key
        stepped, reference = augmentation.in_step(batch), augmentation.photometric(expected)
        assert torch.equal(stepped["pixel_values"], reference["pixel_values"])
        assert "photometric" not in stepped and "planned_views" not in stepped


def test_a_canvas_plan_needs_the_photometric_half_in_the_step():
    from hf_personsearch.data.unification import expand_resize

    plan, box = expand_resize(np.zeros((8, 4, 3), np.uint8), np.random.default_rng(0), plan_only=True)
    with pytest.raises(ValueError, match="needs photometric_in_step=True"):
        TwoViewAugmentation()(plan, box[None], [0])


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_planned_views_paint_on_the_batch_device(device):
    """The step paints on the device the batch was moved to: without noise the views painted there are the CPU's up
    to the resize kernels' rounding (a GPU resizes uint8 in float and rounds), and a noisy plan paints the same
    canvas every time on that device, grey noise around the crop's border colour."""
    from hf_personsearch.data.augmentation import paint_planned_views
    from hf_personsearch.data.collate import collate_pretrain
    from hf_personsearch.data.unification import expand_resize
    from hf_personsearch.training.loop import move_to_device

    rng = np.random.default_rng(3)
    augmentation = TwoViewAugmentation(min_sizes=(48, 64, 96), max_size=160, photometric_in_step=True)
    items = []
    for seed in range(4):
        crop = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
        plan, box = expand_resize(crop, np.random.default_rng(seed), out_size=(96, 96), fill="mean", plan_only=True)
        torch.manual_seed(seed)
        items.append(_pretrain_item(*augmentation(plan, box[None], [seed])))
    batch = collate_pretrain(items)
    on_cpu = paint_planned_views(batch)
    on_device = paint_planned_views(move_to_device(batch, torch.device(device)))
    for key in ("pixel_values", "pixel_values_2"):
        assert on_device[key].device.type == device
        difference = (on_device[key].cpu().int() - on_cpu[key].int()).abs()
        assert difference.max() <= 3 and difference.float().mean() < 0.1
    noisy, _ = expand_resize(np.full((40, 20, 3), 120, np.uint8), np.random.default_rng(0), plan_only=True)
    canvas = noisy.paint(device)
    assert canvas.device.type == device and torch.equal(canvas, noisy.paint(device))
    channels = canvas.cpu().int()
    assert (channels[1] == channels[0]).all() and abs(channels.float().mean().item() - 119.5) < 0.5
