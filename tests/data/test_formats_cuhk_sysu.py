"""CUHK-SYSU: synthetic .mat files -> parser round trip, public-loader nesting, gallery order, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from format_checks import assert_same, generated_dataset
from scipy.io import loadmat, savemat

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import cuhk_sysu
from hf_personsearch.data.schema import NO_IDENTITY
from hf_personsearch.data.synthetic import generate

PROTOCOL = "annotation/test/train_test"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generated_dataset(tmp_path_factory, "cuhk_sysu", seed=5)


def test_round_trip_records(dataset):
    root, truth = dataset
    parsed = list(cuhk_sysu.parse(root, "train")) + list(cuhk_sysu.parse(root, "test"))
    assert_same(parsed, truth["records"])
    train_ids = {i for r in parsed if r["split"] == "train" for i in r["person_ids"]} - {NO_IDENTITY}
    test_ids = {i for r in parsed if r["split"] == "test" for i in r["person_ids"]} - {NO_IDENTITY}
    assert train_ids == {0, 1, 2, 3} and test_ids == {4, 5, 6}  # test ids follow the Train.mat ids


@pytest.mark.parametrize("gallery_size", [10, 50, None])
def test_round_trip_queries_every_gallery_size(dataset, gallery_size):
    root, truth = dataset
    queries = cuhk_sysu.load_queries(root, gallery_size=gallery_size)
    assert_same(queries, truth["queries"][gallery_size])
    if gallery_size is not None:
        assert all(len(q["gallery"]) == gallery_size for q in queries)
        assert all(q["image_id"] not in [g["image_id"] for g in q["gallery"]] for q in queries)


def test_query_subsets(dataset):
    root, truth = dataset
    assert_same(cuhk_sysu.load_queries(root, gallery_size=50, subset="occlusion"), truth["queries"]["occlusion"])
    full = cuhk_sysu.load_queries(root, gallery_size=None, subset="resolution")
    assert_same(full, [dict(q, gallery=None) for q in truth["queries"]["resolution"]])
    with pytest.raises(ValueError, match="galleries have 50 images, not gallery_size=100"):
        cuhk_sysu.load_queries(root, subset="occlusion")
    with pytest.raises(FileNotFoundError, match=r"present: \[10, 50\]"):
        cuhk_sysu.load_queries(root, gallery_size=4000)


def test_public_loader_nesting_and_gallery_order(dataset):
    """SeqNet/NAE-style indexing reads the files; galleries list matches first, so a loader that stops at
    the first empty box sees every match."""
    root, truth = dataset
    images = loadmat(root / "annotation/Images.mat")["Img"].squeeze()
    by_name = {r["image_id"].split("/")[-1]: r for r in truth["records"]}
    for img_name, _, boxes in images:
        xywh = np.asarray([b[0] for b in boxes[0]]).reshape(-1, 4)
        expected = by_name[str(img_name[0])]["boxes"]
        assert np.array_equal(xywh, np.concatenate([expected[:, :2], expected[:, 2:] - expected[:, :2]], 1))
    assert [str(a[0]) for a in loadmat(root / "annotation/pool.mat")["pool"].squeeze()] == [
        r["image_id"].split("/")[-1] for r in truth["records"] if r["split"] == "test"
    ]
    for item in loadmat(root / PROTOCOL / "Train.mat")["Train"].squeeze():
        assert len([str(name[0]) for name, _, _ in item[0, 0][2].squeeze()]) == 2
    protocol = loadmat(root / PROTOCOL / "TestG50.mat")["TestG50"].squeeze()
    for q, item in enumerate(protocol):
        query = truth["queries"][50][q]
        assert "Image/SSM/" + str(item["Query"][0, 0][0][0]) == query["image_id"]
        roi = item["Query"][0, 0][1].squeeze()
        assert np.array_equal(np.concatenate([roi[:2], roi[:2] + roi[2:]]), query["box"])
        seen = []
        for im_name, box, _ in item["Gallery"].squeeze():
            if box.size == 0:
                break
            seen.append("Image/SSM/" + str(im_name[0]))
        assert seen == [g["image_id"] for g in query["gallery"] if g["box"] is not None]
        boxes = [g["box"] is None for g in query["gallery"]]
        assert boxes == sorted(boxes)  # every match (False) before every distractor (True)


def test_gallery_with_a_match_after_a_distractor_is_rejected(tmp_path):
    truth = generate("cuhk_sysu", tmp_path, seed=2, gallery_sizes=(10,))
    path = tmp_path / PROTOCOL / "TestG10.mat"
    protocol = loadmat(path)["TestG10"]
    gallery = protocol["Gallery"][0, 1]
    protocol["Gallery"][0, 1] = gallery[:, ::-1].copy()  # query 1: distractors first, match last
    savemat(path, {"TestG10": protocol})
    skips = SkipCounter()
    queries = cuhk_sysu.load_queries(tmp_path, gallery_size=10, skips=skips)
    assert [q["person_id"] for q in queries] == [q["person_id"] for k, q in enumerate(truth["queries"][10]) if k != 1]
    assert skips.counts == {"gallery lists a match after a distractor": 1}
    with pytest.raises(DataFormatError, match=r"TestG10.mat TestG10\[1\]: gallery lists a match after a distractor"):
        cuhk_sysu.load_queries(tmp_path, gallery_size=10, strict=True)


def test_bad_boxes_and_malformed_keys(tmp_path):
    truth = generate("cuhk_sysu", tmp_path, seed=2, gallery_sizes=(10,))
    path = tmp_path / "annotation/Images.mat"
    images = loadmat(path)["Img"]
    box = images["box"][0, 0]
    box["idlocate"][0, 0] = np.array([[5.0, 5.0, 0.0, 30.0]])  # s1.jpg, first person: zero width
    savemat(path, {"Img": images})
    skips = SkipCounter()
    first = next(iter(cuhk_sysu.parse(tmp_path, "train", skips=skips)))
    assert np.array_equal(first["boxes"], truth["records"][0]["boxes"][1:])
    assert first["person_ids"].tolist() == truth["records"][0]["person_ids"][1:].tolist()
    # the Train.mat box of that person no longer matches any Images.mat box: counted too
    assert skips.counts == {"box has width or height <= 0": 1, "identity box not in Images.mat": 1}
    with pytest.raises(DataFormatError, match="identity box not in Images.mat"):
        next(iter(cuhk_sysu.parse(tmp_path, "train", strict=True)))
    savemat(path, {"Images": images})
    with pytest.raises(DataFormatError, match=r"Images.mat: expected key 'Img', found keys \['Images'\]"):
        next(iter(cuhk_sysu.parse(tmp_path, "train")))
    with pytest.raises(FileNotFoundError, match="ShuangLI59/person_search"):
        next(iter(cuhk_sysu.parse(tmp_path / "missing", "train")))
