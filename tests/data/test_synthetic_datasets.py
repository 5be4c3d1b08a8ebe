"""The synthetic datasets together: one appearance space, crops cut from scenes, dataset styles, drawn ignore
regions, determinism and the benchmark sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hf_personsearch.data.schema import NO_IDENTITY
from hf_personsearch.data.synthetic import crowdhuman, generate, render
from hf_personsearch.data.synthetic.benchmark import BENCHMARK_SIZES, write_benchmark
from hf_personsearch.data.synthetic.render import APPEARANCE_BLOCKS, CROWD_PERSON_HEIGHT, AppearancePool

WRITERS = [name for name, _ in APPEARANCE_BLOCKS]
"""All nine writers: every one owns an appearance block."""


def _record_drawing(monkeypatch) -> list[tuple]:
    """Make every drawn person append ``(image, box xyxy, appearance)`` to the returned list."""
    calls = []
    original = render.draw_person

    def recording(image, x0, y0, w, h, identity, domain, rng):
        calls.append((image, (x0, y0, x0 + w, y0 + h), identity))
        original(image, x0, y0, w, h, identity, domain, rng)

    monkeypatch.setattr(render, "draw_person", recording)
    monkeypatch.setattr(crowdhuman, "draw_person", recording)  # its person cut by the image border
    return calls


def _per_image(calls: list[tuple]) -> list[list[tuple]]:
    """The drawing calls grouped by image, in drawing order (the writers' record order)."""
    groups: dict[int, list] = {}
    for image, box, identity in calls:  # ``calls`` holds the images, so no id() is reused meanwhile
        groups.setdefault(id(image), []).append((box, identity))
    return list(groups.values())


def _identity_key(record: dict, person_id: int) -> tuple:
    """The identity a label names: MSMT17 numbers train and test identities from 0 separately."""
    if record["source"] == "msmt17":
        return ("train" if record["split"] in ("train", "val") else "test", person_id)
    return (person_id,)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every writer at seed 0 with its default sizes: ``{name: (truth, drawn appearances)}``."""
    monkeypatch = pytest.MonkeyPatch()
    calls = _record_drawing(monkeypatch)
    root = tmp_path_factory.mktemp("synthetic")
    result = {}
    try:
        for name in WRITERS:
            calls.clear()
            truth = generate(name, root / name, seed=0)
            result[name] = (truth, {identity for _, _, identity in calls}, _per_image(calls))
    finally:
        monkeypatch.undo()
    return result


def test_no_appearance_is_shared_between_datasets_and_an_identity_is_one_appearance(written):
    for k, name in enumerate(WRITERS):
        truth, drawn, _ = written[name]
        pool = AppearancePool(name)
        assert drawn and min(drawn) >= pool.start and max(drawn) < pool.stop, name
        for other in WRITERS[k + 1 :]:
            assert not drawn & written[other][1], (name, other)
        assert len(truth["appearances"]) == len(truth["records"])
        looks: dict[tuple, set] = {}
        for record, appearances in zip(truth["records"], truth["appearances"]):
            assert len(appearances) == len(record["boxes"]) and set(appearances) <= drawn
            for person_id, appearance in zip(record["person_ids"], appearances):
                if person_id != NO_IDENTITY:
                    looks.setdefault(_identity_key(record, int(person_id)), set()).add(appearance)
        if name in ("crowdhuman", "ecp", "luperson"):
            assert not looks  # no identities in the files
            continue
        assert all(len(v) == 1 for v in looks.values()), (name, looks)  # one identity = one appearance
        assert len({next(iter(v)) for v in looks.values()}) == len(looks)  # two identities never look alike
        assert len(looks) >= 5, name


def test_reid_crops_show_scene_background_at_their_border(written):
    for name in ("msmt17", "cuhk03", "luperson"):
        borders = []
        for record in written[name][0]["records"]:
            crop = np.asarray(Image.open(record["image"]).convert("RGB"), np.float32)
            border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
            assert border.std(0).min() > 5, (name, record["image_id"])  # no uniform fill, no frame
            borders.append(border.mean(0))
        assert np.std(borders, axis=0).min() > 5, name  # a different piece of scene around every crop


def _mean_colours(records: list[dict], border_only: bool = False) -> np.ndarray:
    means = []
    for record in records:
        pixels = np.asarray(Image.open(record["image"]).convert("RGB"), np.float32)
        if border_only:  # a crop's border is its background: the style without the person's clothes
            pixels = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        means.append(pixels.reshape(-1, 3).mean(0))
    return np.array(means)


def test_dataset_styles_are_separated_by_mean_colour_and_resolution(written):
    def red_over_blue(name, border_only=False):
        means = _mean_colours(written[name][0]["records"], border_only)
        return means[:, 0] / means[:, 2]

    # Detection domains: ECP's blue cast (day and night) against CrowdHuman's neutral street, image by image.
    assert red_over_blue("ecp").max() < 0.9 < red_over_blue("crowdhuman").min()
    # Re-ID domains, crop by crop from the background around the person: MSMT17 warm, CUHK03 neutral, LUPerson cool.
    assert red_over_blue("luperson", True).max() < 0.9 < red_over_blue("cuhk03", True).min()
    assert red_over_blue("cuhk03", True).max() < 1.4 < red_over_blue("msmt17", True).min()
    # CUHK03: half the resolution of MSMT17.
    cuhk03 = np.median([r["height"] for r in written["cuhk03"][0]["records"]])
    msmt17 = np.median([r["height"] for r in written["msmt17"][0]["records"]])
    assert 0.4 < cuhk03 / msmt17 < 0.6
    # PRW: every other frame is at dusk (dim, red-violet), a style no pre-training dataset has; the other
    # frames have CrowdHuman's street style.
    prw = _mean_colours(written["prw"][0]["records"])
    dusk, street = prw[0::2], prw[1::2]  # the first frame has frame index 1 (odd: dusk)
    assert dusk.mean(1).max() < 120 < street.mean(1).min()
    assert (dusk[:, 0] / dusk[:, 2]).min() > 1.3
    seen = np.concatenate([_mean_colours(written[name][0]["records"]) for name in ("crowdhuman", "ecp")])
    assert min(np.abs(seen - frame).sum(1).min() for frame in dusk) > 60  # unseen
    assert max(np.abs(seen - frame).sum(1).min() for frame in street) < 60  # seen


def test_ignore_regions_hold_drawn_persons(written):
    # The persons drawn inside each ignore region, in the region order the parsers give: CrowdHuman
    # [unclear person, "mask" crowd], ECP [rider, depiction, "person-group-far-away"], custom [ignore box],
    # PoseTrack21 [ignore polygon]; the crowds are small, far-away persons.
    expected = {"crowdhuman": [1, 3], "ecp": [1, 1, 3], "custom": [3], "posetrack21": [3]}
    crowds = {"crowdhuman": [0, 1], "ecp": [2], "custom": [0], "posetrack21": [0]}
    for name, minimum in expected.items():
        truth, _, images = written[name]
        regions = 0
        for record, drawn in zip(truth["records"], images):
            if not len(record["ignore_regions"]):
                continue
            assert len(record["ignore_regions"]) == len(minimum), (name, record["image_id"])
            for k, (x1, y1, x2, y2) in enumerate(record["ignore_regions"]):
                inside = [b for b, _ in drawn if x1 <= b[0] and y1 <= b[1] and b[2] <= x2 and b[3] <= y2]
                assert len(inside) >= minimum[k], (name, record["image_id"], k)
                if k in crowds[name]:
                    tallest = CROWD_PERSON_HEIGHT[1] * record["height"] + 1
                    assert all(b[3] - b[1] <= tallest for b in inside), (name, record["image_id"], k)
                regions += 1
        assert regions >= 2, name


@pytest.mark.parametrize("name", ["crowdhuman", "prw", "cuhk03"])  # jpg + odgt; v5 .mat; png + v7.3 HDF5
def test_same_seed_writes_byte_identical_files(tmp_path, name):
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    generate(name, tmp_path / "a", seed=5)
    generate(name, tmp_path / "b", seed=5)
    generate(name, tmp_path / "c", seed=6)
    first, second, other = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(first) > 5 and first == second
    assert first != other


@pytest.mark.slow
def test_benchmark_data_set_has_the_documented_sizes(tmp_path):
    truth = write_benchmark(tmp_path, seed=0)
    assert set(truth) == set(BENCHMARK_SIZES)

    def split(name, *splits):
        return [r for r in truth[name]["records"] if r["split"] in splits]

    crowd = split("crowdhuman", "train")
    assert len(crowd) == 80 and (crowd[0]["width"], crowd[0]["height"]) == (192, 128)
    assert all(2 <= len(r["boxes"]) <= 5 for r in crowd)  # 2-4 persons + one cut by the border where it fits
    heights = np.concatenate([r["boxes"][:, 3] - r["boxes"][:, 1] for r in crowd])
    assert heights.min() >= 30 and heights.max() <= 80
    assert len(split("ecp", "train")) == 80
    msmt17 = split("msmt17", "train")
    assert len(msmt17) == 160 and len({int(r["person_ids"][0]) for r in msmt17}) == 40
    cuhk03 = split("cuhk03", "train")
    assert len(cuhk03) == 80 and len({int(r["person_ids"][0]) for r in cuhk03}) == 20
    assert len(split("luperson", "train")) == 160
    prw_train, prw_test = split("prw", "train"), split("prw", "test")
    assert len(prw_train) == 60 and len(prw_test) == 120
    assert len({int(i) for r in prw_train for i in r["person_ids"] if i != NO_IDENTITY}) == 40
    queries = truth["prw"]["queries"]
    assert len(queries) == 80
    for query in queries:  # 2 gallery matches per query (the frames other than the query's)
        frames = [r["image_id"] for r in prw_test if query["person_id"] in r["person_ids"]]
        assert len(frames) == 3 and query["image_id"] in frames


def test_unknown_sizes_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"prw: unknown synthetic size\(s\) \['num_frames'\]; its writer takes \["):
        generate("prw", tmp_path / "prw", seed=0, num_frames=3)
    assert not (tmp_path / "prw").exists()
