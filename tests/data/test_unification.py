import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hf_personsearch.data.identity import IdentitySpace
from hf_personsearch.data.schema import NO_IDENTITY, make_record
from hf_personsearch.data.unification import (
    CanvasPlan,
    expand_resize,
    expand_resize_many,
    fill_canvas,
    random_paste,
    unify_record,
)

FAST = settings(max_examples=40, deadline=None)


def _solid_crop(height, width, colour=(200, 30, 90)):
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


def _painted_box(canvas):
    """Bounding box of the non-zero pixels (the crop, on a zero-filled canvas)."""
    ys, xs = np.nonzero(canvas.any(axis=2))
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@FAST
@given(
    crop_h=st.integers(4, 160),
    crop_w=st.integers(4, 100),
    out_h=st.integers(16, 96),
    out_w=st.integers(16, 96),
    low=st.floats(1.0, 3.0),
    spread=st.floats(0.0, 2.0),
    keep_aspect=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_expand_resize_fixed_size_box_inside_and_matches_pixels(
    crop_h, crop_w, out_h, out_w, low, spread, keep_aspect, seed
):
    rng = np.random.default_rng(seed)
    ratio_range = (low, low + spread)
    canvas, box = expand_resize(
        _solid_crop(crop_h, crop_w),
        rng,
        ratio_range=ratio_range,
        out_size=(out_h, out_w),
        keep_aspect=keep_aspect,
        fill="zero",
    )
    assert canvas.shape == (out_h, out_w, 3) and canvas.dtype == np.uint8
    assert box.dtype == np.float32
    x1, y1, x2, y2 = box.tolist()
    assert 0 <= x1 < x2 <= out_w and 0 <= y1 < y2 <= out_h
    assert _painted_box(canvas) == [x1, y1, x2, y2]
    # The person's height is canvas height / ratio_h with ratio_h in the range (up to rounding).
    person_h, person_w = y2 - y1, x2 - x1
    assert max(1, round(out_h / ratio_range[1]) - 1) <= person_h <= min(out_h, round(out_h / ratio_range[0]) + 1)
    if keep_aspect and person_w < out_w:
        # Same scale on both sides: person_w / person_h == crop_w / crop_h up to rounding of each side.
        assert abs(person_w * crop_h - person_h * crop_w) <= crop_h + crop_w


def test_expand_resize_keeps_aspect_and_hand_checked_scale():
    class FixedRng:
        """uniform() returns 2.0: canvas = 2 x crop height; integers() returns the lowest position."""

        def uniform(self, low, high):
            return 2.0

        def integers(self, low, high):
            return low

        def normal(self, *args, **kwargs):
            raise AssertionError("fill='zero' draws no noise")

    canvas, box = expand_resize(_solid_crop(128, 64), FixedRng(), out_size=(512, 512), fill="zero")
    # 128-px crop on a 256-px-high canvas resized to 512: x2 scale, person 256 x 128.
    assert box.tolist() == [0.0, 0.0, 128.0, 256.0]
    assert (canvas[:256, :128] == (200, 30, 90)).all() and not canvas[256:].any() and not canvas[:, 128:].any()


def test_random_paste_keeps_crop_size_and_pixels():
    rng = np.random.default_rng(0)
    crop = np.random.default_rng(1).integers(1, 255, (40, 20, 3), dtype=np.uint8)
    canvas, box = random_paste(crop, rng, canvas_size=(64, 64), fill="zero")
    x1, y1, x2, y2 = box.astype(int).tolist()
    assert (x2 - x1, y2 - y1) == (20, 40)
    np.testing.assert_array_equal(canvas[y1:y2, x1:x2], crop)
    # Crops bigger than the canvas are shrunk to fit, aspect kept.
    canvas, box = random_paste(_solid_crop(200, 50), rng, canvas_size=(100, 100), fill="zero")
    assert (box[2] - box[0], box[3] - box[1]) == (25, 100)


def test_fill_mean_uses_crop_border_colour():
    crop = _solid_crop(10, 10, (10, 20, 30))
    crop[3:7, 3:7] = 250  # interior does not affect the fill
    canvas, box = expand_resize(crop, np.random.default_rng(0), out_size=(40, 40), fill="mean")
    x1, y1, x2, y2 = box.astype(int).tolist()
    outside = np.ones((40, 40), bool)
    outside[y1:y2, x1:x2] = False
    assert outside.any()
    assert (canvas[outside] == (10, 20, 30)).all()
    with pytest.raises(ValueError, match="fill must be"):
        expand_resize(crop, np.random.default_rng(0), fill="purple")


def test_fill_noise_is_grey_gaussian_noise_around_the_border_colour():
    # Each fill channel is floor(border colour + n), n ~ N(0, 8^2) the same for all three channels.
    crop = np.zeros((8, 8, 3), np.uint8)
    crop[:] = (100, 150, 20)
    crop[0, :4] = (105, 161, 28)  # 5 of the 32 border samples (rows 0, 7, columns 0, 7: the corner twice)
    canvas, box = expand_resize(crop, np.random.default_rng(3), ratio_range=(8.0, 8.0), out_size=(400, 400))
    x1, y1, x2, y2 = box.astype(int).tolist()
    outside = np.ones((400, 400), bool)
    outside[y1:y2, x1:x2] = False
    fill = canvas[outside].astype(np.float64)
    border_mean = np.array([100 + 5 * 5 / 32, 150 + 5 * 11 / 32, 20 + 5 * 8 / 32])
    # E[floor(m + n)] = m - 1/2 + O(e^{-2 pi^2 64}); std of floor(m + n) = sqrt(64 + 1/12).
    np.testing.assert_allclose(fill.mean(axis=0), border_mean - 0.5, atol=0.1)
    np.testing.assert_allclose(fill.std(axis=0), np.sqrt(64 + 1 / 12), atol=0.1)
    noise = fill[:, 0] - border_mean[0]
    assert abs(np.mean(np.abs(noise + 0.5) < 8) - 0.6827) < 0.01  # one sigma: Gaussian, not uniform
    # Grey noise: the channels move together, their differences are the colour's (floor: one of two values).
    assert set(np.unique(fill[:, 1] - fill[:, 0]).tolist()) <= {50.0, 51.0}


@FAST
@given(count=st.integers(1, 5), seed=st.integers(0, 1000))
def test_several_crops_per_canvas_do_not_overlap(count, seed):
    crops = [_solid_crop(30 + 5 * i, 15, (50 * i + 10, 100, 200)) for i in range(count)]
    canvas, boxes = expand_resize_many(crops, np.random.default_rng(seed), out_size=(64, 128), fill="zero")
    assert canvas.shape == (64, 128, 3) and boxes.shape == (count, 4)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 64
        assert (canvas[y1:y2, x1:x2] == (50 * i + 10, 100, 200)).all()  # no other crop painted over it


def test_bad_ratio_range_and_empty_crop_rejected():
    with pytest.raises(ValueError, match="ratio_range"):
        expand_resize(_solid_crop(4, 4), np.random.default_rng(0), ratio_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="non-empty"):
        expand_resize(np.zeros((0, 4, 3), np.uint8), np.random.default_rng(0))


def _crop_record(pid, colour, index):
    crop = _solid_crop(24, 12, colour)
    return make_record(
        image=crop,
        image_id=f"c{index}.jpg",
        width=12,
        height=24,
        boxes=[[0, 0, 12, 24]],
        person_ids=[pid],
        source="msmt17",
        task="reid",
        split="train",
    )


@st.composite
def _sources(draw):
    sources = []
    for s in range(draw(st.integers(1, 4))):
        task = draw(st.sampled_from(["detection", "reid", "search"]))
        n_records = draw(st.integers(1, 5))
        if task == "reid":
            records = [[draw(st.sampled_from([NO_IDENTITY, 0, 1, 2, 40]))] for _ in range(n_records)]
        else:
            records = [
                draw(st.lists(st.sampled_from([NO_IDENTITY, 3, 8]), min_size=0, max_size=4)) for _ in range(n_records)
            ]
        sources.append((f"src{s}", task, records))
    return sources


@settings(max_examples=60, deadline=None)
@given(_sources())
def test_global_ids_unique_across_sources(sources):
    space = IdentitySpace.from_person_ids(sources)
    owner: dict[int, tuple] = {}
    for s, (_, task, records) in enumerate(sources):
        for r, ids in enumerate(records):
            out = space.global_ids(s, r, ids)
            assert len(out) == len(ids)
            for k, (source_id, global_id) in enumerate(zip(ids, out.tolist())):
                assert 0 <= global_id < space.num_identities
                keeps = task != "detection" and source_id != NO_IDENTITY
                key = (s, source_id) if keeps else (s, r, k)
                # Labeled ids map to one global id per (source, id); everything else is unique.
                assert owner.setdefault(global_id, key) == key
    assert len(owner) == space.num_identities


def test_unify_record_reid_and_detection():
    crops = [_crop_record(7, (255, 0, 0), 0), _crop_record(NO_IDENTITY, (0, 255, 0), 1)]
    scene = make_record(
        image=np.full((60, 80, 3), 90, np.uint8),
        image_id="s.jpg",
        width=80,
        height=60,
        boxes=[[1, 2, 11, 32], [40, 5, 60, 55]],
        person_ids=[NO_IDENTITY, NO_IDENTITY],
        source="crowdhuman",
        task="detection",
        split="train",
    )
    space = IdentitySpace.from_records([("crowdhuman", "detection", [scene]), ("msmt17", "reid", crops)])
    rng = np.random.default_rng(0)

    det = unify_record(scene, space, 0, 0, rng)
    np.testing.assert_array_equal(det["boxes"], scene["boxes"])
    assert det["person_ids"].tolist() == [0, 1] and det["person_index"].tolist() == [0, 1]
    assert (det["domain_id"], det["task"], det["has_identity"], det["source"]) == (0, "detection", False, "crowdhuman")

    labeled = unify_record(crops[0], space, 1, 0, rng, canvas_size=(64, 48))
    assert labeled["image"].shape == (64, 48, 3)
    assert labeled["person_ids"].tolist() == [2]  # offset 2 (two detection boxes) + rank 0
    assert (labeled["domain_id"], labeled["task"], labeled["has_identity"]) == (0, "reid", True)
    x1, y1, x2, y2 = labeled["boxes"][0].astype(int)
    assert (labeled["image"][y1:y2, x1:x2] == (255, 0, 0)).all()

    unlabeled = unify_record(crops[1], space, 1, 1, rng, reid_operation="random_paste", canvas_size=(64, 48))
    assert unlabeled["person_ids"].tolist() == [3] and not unlabeled["has_identity"]

    pair = unify_record(crops[0], space, 1, 0, rng, canvas_size=(64, 96), extra_crops=[(1, crops[1])])
    assert pair["person_ids"].tolist() == [2, 3] and pair["person_index"].tolist() == [0, 1]
    assert pair["has_identity"]
    with pytest.raises(ValueError, match="reid_operation"):
        unify_record(crops[0], space, 1, 0, rng, reid_operation="tile")


def test_detection_records_keep_ignore_regions_and_reid_canvases_have_none():
    regions = [[30, 0, 80, 40], [0, 50, 10, 60]]
    scene = make_record(
        image=np.full((60, 80, 3), 90, np.uint8),
        image_id="crowd.jpg",
        width=80,
        height=60,
        boxes=[[1, 2, 11, 32]],
        person_ids=[NO_IDENTITY],
        source="crowdhuman",
        task="detection",
        split="train",
        ignore_regions=regions,
    )
    crop = _crop_record(7, (255, 0, 0), 0)
    space = IdentitySpace.from_records([("crowdhuman", "detection", [scene]), ("msmt17", "reid", [crop])])
    rng = np.random.default_rng(0)

    det = unify_record(scene, space, 0, 0, rng)
    assert det["ignore_regions"].dtype == np.float32
    np.testing.assert_array_equal(det["ignore_regions"], np.array(regions, np.float32))
    reid = unify_record(crop, space, 1, 0, rng, canvas_size=(64, 48))
    assert reid["ignore_regions"].shape == (0, 4)

    # A datasets row stores "no region" as an empty list; a record without the field has none either.
    empty = unify_record({**scene, "ignore_regions": []}, space, 0, 0, rng)
    assert empty["ignore_regions"].shape == (0, 4)
    missing = unify_record({k: v for k, v in scene.items() if k != "ignore_regions"}, space, 0, 0, rng)
    assert missing["ignore_regions"].shape == (0, 4)
    with pytest.raises(ValueError, match=r"crowdhuman\[0\] crowd.jpg: ignore_regions must be a \(k, 4\)"):
        unify_record({**scene, "ignore_regions": [[1, 2, 3]]}, space, 0, 0, rng)


def test_fill_is_the_broadcast_formula_exactly():
    """The per-channel colour table gives the values of the one-line formula, draw for draw."""
    from hf_personsearch.data.unification import _FILL_NOISE, FILL_NOISE_LEVELS, fill_canvas

    rng = np.random.default_rng(7)
    for seed in range(20):
        crop = rng.integers(0, 256, (int(rng.integers(2, 60)), int(rng.integers(2, 40)), 3), dtype=np.uint8)
        border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]).astype(np.float32)
        colours = np.clip(border.mean(axis=0) + _FILL_NOISE[:, None], 0, 255).astype(np.uint8)
        levels = np.random.default_rng(seed).integers(0, FILL_NOISE_LEVELS, size=(37, 53), dtype=np.uint16)
        expected = np.take(colours, levels, axis=0)
        assert np.array_equal(fill_canvas(crop, (37, 53), "mean_noise", np.random.default_rng(seed)), expected)


def _textured_crop(seed, height=256, width=128):
    small = np.random.default_rng(seed).integers(0, 256, (17, 9, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


@pytest.mark.parametrize("fill", ["mean", "zero"])
@pytest.mark.parametrize(
    "operation",
    [
        lambda crop, rng, **kw: expand_resize(crop, rng, **kw),
        lambda crop, rng, **kw: random_paste(crop, rng, canvas_size=(200, 300), **kw),
        lambda crop, rng, **kw: expand_resize_many([crop, crop[::2, ::-1]], rng, out_size=(300, 400), **kw),
    ],
    ids=["expand_resize", "random_paste", "expand_resize_many"],
)
def test_a_canvas_plan_places_the_persons_as_painting_does_and_paints_the_same_canvas(operation, fill):
    """Without noise the plan draws exactly what painting draws: the same boxes; painted, the same fill everywhere
    and the same person up to the resize kernel (torchvision's antialiased bilinear vs PIL's, <= 2 grey levels)."""
    crop = _textured_crop(0)
    for seed in range(6):
        canvas, boxes = operation(crop, np.random.default_rng(seed), fill=fill)
        plan, plan_boxes = operation(crop, np.random.default_rng(seed), fill=fill, plan_only=True)
        assert isinstance(plan, CanvasPlan) and np.array_equal(plan_boxes, boxes)
        painted = plan.paint()
        assert painted.dtype == torch.uint8 and painted.shape == (3, *canvas.shape[:2])
        painted = painted.permute(1, 2, 0).numpy()
        outside = np.ones(canvas.shape[:2], bool)
        for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4).astype(int):
            outside[y1:y2, x1:x2] = False
        assert np.array_equal(painted[outside], canvas[outside])
        difference = np.abs(painted.astype(int) - canvas.astype(int))
        assert difference.max() <= 2 and difference.mean() < 0.05


def test_a_canvas_plan_paints_the_fill_noise_of_painting_from_its_seed():
    """The plan's noise: one draw (its seed) in place of the canvas' noise; the same seed paints the same canvas,
    and the fill follows painting's distribution (the same table of Gaussian levels, the same grey noise)."""
    crop = _textured_crop(1)
    size = (512, 512)
    rng = np.random.default_rng(5)
    plan = CanvasPlan.draw(crop, size, "mean_noise", rng)
    assert plan.noise_seed is not None
    follower = np.random.default_rng(5)
    follower.integers(0, 2**62)
    assert rng.integers(0, 2**62) == follower.integers(0, 2**62)  # exactly one draw of the worker's generator
    again = CanvasPlan.draw(crop, size, "mean_noise", np.random.default_rng(5))
    first = plan.paint()
    assert torch.equal(first, again.paint()) and torch.equal(first, plan.paint())
    other = CanvasPlan.draw(crop, size, "mean_noise", np.random.default_rng(6)).paint()
    assert not torch.equal(first, other)
    reference = fill_canvas(crop, size, "mean_noise", np.random.default_rng(0)).astype(np.int64)
    painted = first.permute(1, 2, 0).numpy().astype(np.int64)
    for channel in range(3):
        expected = np.bincount(reference[..., channel].ravel(), minlength=256) / reference[..., 0].size
        observed = np.bincount(painted[..., channel].ravel(), minlength=256) / painted[..., 0].size
        # 262,144 pixels per canvas: a level of frequency f has a standard error of sqrt(f / 262144) <= 0.0009.
        assert np.abs(observed - expected).max() < 0.005
    np.testing.assert_allclose(painted.mean(axis=(0, 1)), reference.mean(axis=(0, 1)), atol=0.1)
    np.testing.assert_allclose(painted.std(axis=(0, 1)), reference.std(axis=(0, 1)), atol=0.1)
    # grey noise: the channels' differences take the same one or two values in both
    assert set(np.unique(painted[..., 1] - painted[..., 0])) == set(np.unique(reference[..., 1] - reference[..., 0]))


def test_unify_record_plans_reid_canvases_only():
    crop = _crop_record(3, (200, 30, 90), 0)
    scene = {**_crop_record(NO_IDENTITY, (90, 90, 90), 1), "source": "crowdhuman", "task": "detection"}
    space = IdentitySpace.from_records([("crowdhuman", "detection", [scene]), ("msmt17", "reid", [crop])])
    painted = unify_record(crop, space, 1, 0, np.random.default_rng(0))
    planned = unify_record(crop, space, 1, 0, np.random.default_rng(0), canvas_in_step=True)
    assert isinstance(planned["image"], CanvasPlan) and planned["image"].size == (512, 512)
    assert planned["boxes"].shape == painted["boxes"].shape == (1, 4)
    assert planned.keys() == painted.keys()
    for key in ("person_ids", "person_index"):
        assert np.array_equal(planned[key], painted[key])
    scene_planned = unify_record(scene, space, 0, 0, np.random.default_rng(0), canvas_in_step=True)
    assert isinstance(scene_planned["image"], np.ndarray)  # a detection image is decoded as always
