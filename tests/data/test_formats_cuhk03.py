"""CUHK03: HDF5 v7.3 cuhk-03.mat, extracted pngs and the new-protocol split, with bad input."""

from __future__ import annotations

import io
import shutil

import h5py
import numpy as np
import pytest
import scipy.io
from format_checks import generated_dataset
from PIL import Image

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import cuhk03, record_differences


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generated_dataset(tmp_path_factory, "cuhk03", seed=0)


def _splits(root, **kwargs):
    return [r for split in ("train", "query", "gallery") for r in cuhk03.parse(root, split, strict=True, **kwargs)]


@pytest.mark.parametrize("layout", ["png", "mat"])
def test_round_trip_both_layouts(dataset, layout):
    root, truth = dataset
    assert record_differences(truth["records"], _splits(root, layout=layout)) == []
    everything = list(cuhk03.parse(root, "full", layout=layout, strict=True))
    assert record_differences(truth["records_all"], everything) == []
    labeled = _splits(root, layout=layout, image_type="labeled")
    assert record_differences(truth["records_labeled"], labeled) == []
    assert len(everything) == 40 and {int(r["person_ids"][0]) for r in everything} == set(range(1, 11))


def test_mat_pixels_equal_the_extracted_pngs(dataset):
    root, _ = dataset
    png = {r["image_id"]: r for r in cuhk03.parse(root, "full", layout="png")}
    for record in cuhk03.parse(root, "full", layout="mat"):
        from_mat = np.asarray(Image.open(io.BytesIO(record["image"]["bytes"])))
        np.testing.assert_array_equal(from_mat, np.asarray(Image.open(png[record["image_id"]]["image"])))


def test_mat_file_reads_like_public_reid_code(dataset):
    root, truth = dataset
    path = root / "cuhk03_release" / "cuhk-03.mat"
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    crops = 0
    with h5py.File(path, "r") as mat:
        assert mat["detected"].shape == (1, 5)
        for campid, camp_ref in enumerate(mat["detected"][0]):
            camp = mat[camp_ref][:].T
            assert camp.shape == (2, 10)
            for pid in range(camp.shape[0]):
                for imgid, img_ref in enumerate(camp[pid, :]):
                    img = mat[img_ref][:].T
                    if img.size == 0 or img.ndim < 3:
                        continue
                    crops += 1
                    name = f"{campid + 1}_{pid + 1:03d}_{1 if imgid < 5 else 2}_{imgid + 1:02d}.png"
                    assert img.shape[2] == 3 and img.dtype == np.uint8 and (root / "images_detected" / name).is_file()
    assert crops == 40
    split = scipy.io.loadmat(root / "cuhk03_new_protocol_config_detected.mat")
    filelist = split["filelist"].flatten()
    query = [filelist[i][0] for i in split["query_idx"].flatten() - 1]
    assert query == [r["image_id"] for r in truth["records"] if r["split"] == "query"]


def test_unknown_key_in_protocol_and_bad_index(tmp_path, dataset):
    root, _ = dataset
    shutil.copytree(root / "images_detected", tmp_path / "images_detected")
    config = scipy.io.loadmat(root / "cuhk03_new_protocol_config_detected.mat")
    config = {k: v for k, v in config.items() if not k.startswith("__")}
    config["mystery"] = np.zeros(1)
    config["query_idx"] = np.vstack([config["query_idx"], [[999]]])
    scipy.io.savemat(tmp_path / "cuhk03_new_protocol_config_detected.mat", config)
    skips = SkipCounter()
    assert len(list(cuhk03.parse(tmp_path, "query", skips=skips))) == len(config["query_idx"]) - 1
    assert skips.counts == {"unknown key or label": 1, "malformed annotation line": 1}
    with pytest.raises(DataFormatError, match="cuhk03_new_protocol_config_detected.mat key 'mystery'"):
        list(cuhk03.parse(tmp_path, "query", strict=True))
    del config["mystery"]
    scipy.io.savemat(tmp_path / "cuhk03_new_protocol_config_detected.mat", config)
    with pytest.raises(DataFormatError, match=r"query_idx\[\d+\]: malformed annotation line \(index 999"):
        list(cuhk03.parse(tmp_path, "query", strict=True))
    del config["query_idx"]
    scipy.io.savemat(tmp_path / "cuhk03_new_protocol_config_detected.mat", config)
    with pytest.raises(DataFormatError, match=r"missing key\(s\) \['query_idx'\]"):
        list(cuhk03.parse(tmp_path, "query"))


def test_unknown_key_and_corrupt_cell_in_mat(tmp_path, dataset):
    root, _ = dataset
    (tmp_path / "cuhk03_release").mkdir()
    path = tmp_path / "cuhk03_release" / "cuhk-03.mat"
    shutil.copy(root / "cuhk03_release" / "cuhk-03.mat", path)
    with h5py.File(path, "r+") as mat:
        mat.create_dataset("extra", data=np.zeros(3))
        first_ref = mat[mat["detected"][0][0]][:].T[0, 0]
        target = mat[first_ref].name
        del mat[target]
        mat.create_dataset(target, data=np.zeros((5, 5), np.uint8))  # a 2-D "image": corrupt
    skips = SkipCounter()
    records = list(cuhk03.parse(tmp_path, "full", skips=skips))
    assert len(records) == 39
    assert skips.counts == {"unknown key or label": 1, "corrupt or truncated image": 1}
    with pytest.raises(DataFormatError, match="cuhk-03.mat key 'extra'"):
        list(cuhk03.parse(tmp_path, "full", strict=True))


def test_corrupt_png_and_bad_name(tmp_path, dataset):
    root, _ = dataset
    shutil.copytree(root / "images_detected", tmp_path / "images_detected")
    first = sorted((tmp_path / "images_detected").glob("*.png"))[0]
    first.write_bytes(first.read_bytes()[:100])
    (tmp_path / "images_detected" / "readme.png").write_bytes(b"")
    skips = SkipCounter()
    assert len(list(cuhk03.parse(tmp_path, "full", skips=skips))) == 39
    assert skips.counts == {"corrupt or truncated image": 1, "malformed annotation line": 1}
    with pytest.raises(DataFormatError, match=first.name):
        list(cuhk03.parse(tmp_path, "full", strict=True))


def test_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="CUHK_identification"):
        list(cuhk03.parse(tmp_path / "absent", "train"))
    with pytest.raises(FileNotFoundError, match="neither .* nor cuhk-03.mat"):
        list(cuhk03.parse(tmp_path, "full"))


def test_transposed_cell_array_raises_instead_of_losing_crops(tmp_path, dataset):
    root, _ = dataset
    shutil.copytree(root / "cuhk03_release", tmp_path / "cuhk03_release")
    with h5py.File(tmp_path / "cuhk03_release" / "cuhk-03.mat", "r+") as file:
        top = file["detected"][:]
        name = file[top[0, 1]].name
        cells = file[name][:]
        del file[name]
        top[0, 1] = file.create_dataset(name, data=cells.T).ref  # (num_ids, 10) on disk: MATLAB's transpose
        file["detected"][...] = top
    with pytest.raises(
        DataFormatError, match=r"cuhk-03.mat: key 'detected' camera pair 2: expected a \(num_ids, 10\)"
    ):
        list(cuhk03.parse(tmp_path, "full", layout="mat"))
