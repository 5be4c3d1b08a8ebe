"""GalleryIndex: exact search against hand computations, FAISS = torch, save/load, compatibility checks."""

import json

import numpy as np
import pytest
import torch

from hf_personsearch import search_similarity
from hf_personsearch.pipelines import GalleryIndex, faiss_available


def _index(embeddings, scores=None, settings=None, fingerprint="abc") -> GalleryIndex:
    embeddings = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    n = embeddings.shape[0]
    return GalleryIndex(
        embeddings=embeddings,
        boxes=torch.arange(4 * n, dtype=torch.float32).reshape(n, 4),
        scores=torch.full((n,), 0.9) if scores is None else torch.as_tensor(scores, dtype=torch.float32),
        image_index=torch.arange(n) % 2,
        images=["a.jpg", "b.jpg"],
        model_id="org/model",
        model_fingerprint=fingerprint,
        settings=settings or {"threshold": 0.5, "min_size": 128, "max_size": 256, "embedding_dim": 2},
    )


def test_torch_search_ranks_by_cosine_as_computed_by_hand():
    # unit vectors at 0, 90, 45 and 180 degrees; query at 30 degrees: cosines cos(30), cos(60), cos(15), cos(150)
    angles = np.deg2rad([0, 90, 45, 180])
    index = _index(np.stack([np.cos(angles), np.sin(angles)], 1))
    query = torch.tensor([np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))], dtype=torch.float32)
    similarities, rows = index.search(query, top_k=3, backend="torch")
    assert rows.tolist() == [[2, 0, 1]]
    expected = np.cos(np.deg2rad([15, 30, 60]))
    np.testing.assert_allclose(similarities[0].numpy(), expected, atol=1e-6)


def test_one_similarity_is_detection_score_times_cosine():
    # norm-aware gallery embeddings: unit directions at 0 and 60 degrees scaled by detection scores 0.5 and 1.0;
    # the query (any length) at 0 degrees. Score x cosine: 0.5 x 1 = 0.5 and 1.0 x cos(60) = 0.5 -> a tie that
    # cosine alone would break for the weak detection, a raw dot product with an unnormalised query would scale.
    gallery = torch.tensor([[0.5, 0.0], [np.cos(np.pi / 3), np.sin(np.pi / 3)], [0.0, -0.9]], dtype=torch.float32)
    query = torch.tensor([3.0, 0.0])
    np.testing.assert_allclose(search_similarity(query, gallery).numpy(), [0.5, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(search_similarity(query[None], gallery).numpy(), [[0.5, 0.5, 0.0]], atol=1e-6)
    index = GalleryIndex(
        gallery, torch.zeros(3, 4), gallery.norm(dim=1), torch.zeros(3, dtype=torch.long), ["a"], "m", "f"
    )
    similarities, rows = index.search(query, top_k=3)
    assert rows.tolist()[0][2] == 2
    np.testing.assert_allclose(similarities.numpy(), [[0.5, 0.5, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match=r"same d, got \(3,\) and \(3, 2\)"):
        search_similarity(torch.ones(3), gallery)


def test_top_k_larger_than_gallery_returns_every_person():
    index = _index([[1.0, 0.0], [0.0, 1.0]])
    similarities, rows = index.search(torch.tensor([1.0, 0.0]), top_k=10, backend="torch")
    assert rows.tolist() == [[0, 1]]
    np.testing.assert_allclose(similarities.numpy(), [[1.0, 0.0]], atol=1e-6)


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (pip install 'hf-personsearch[faiss]')")
def test_faiss_gives_the_same_ranking_and_similarities_as_torch():
    generator = torch.Generator().manual_seed(0)
    index = _index(torch.randn(3000, 32, generator=generator), settings={"embedding_dim": 32})
    queries = torch.nn.functional.normalize(torch.randn(5, 32, generator=generator), dim=1)
    torch_similarities, torch_rows = index.search(queries, top_k=20, backend="torch")
    faiss_similarities, faiss_rows = index.search(queries, top_k=20, backend="faiss")
    assert torch.equal(torch_rows, faiss_rows)
    np.testing.assert_allclose(torch_similarities.numpy(), faiss_similarities.numpy(), atol=1e-5)


def test_save_load_round_trip(tmp_path):
    index = _index([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], scores=[0.9, 0.7, 0.55])
    index.skipped = [{"image": "/photos/broken.jpg", "reason": "truncated"}]
    index.save(tmp_path / "index")
    loaded = GalleryIndex.load(tmp_path / "index")
    for name in ("embeddings", "boxes", "scores", "image_index"):
        assert torch.equal(getattr(loaded, name), getattr(index, name)), name
    assert (loaded.images, loaded.model_id, loaded.model_fingerprint, loaded.settings, loaded.skipped) == (
        index.images,
        index.model_id,
        index.model_fingerprint,
        index.settings,
        index.skipped,
    )
    query = torch.tensor([0.8, 0.6])
    assert torch.equal(loaded.search(query, 3)[1], index.search(query, 3)[1])


def test_files_of_two_saves_are_refused_and_a_save_leaves_no_temporary_file(tmp_path):
    first, second = _index([[1.0, 0.0], [0.0, 1.0]]), _index([[0.6, 0.8]])
    first.save(tmp_path / "first")
    second.save(tmp_path / "second")
    assert sorted(path.name for path in (tmp_path / "first").iterdir()) == [
        "gallery_index.json",
        "gallery_index.safetensors",
    ]
    # An interrupted re-save: the new tensors are in place, the old image list is not yet replaced.
    (tmp_path / "first" / "gallery_index.safetensors").write_bytes(
        (tmp_path / "second" / "gallery_index.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="come from different saves .* rebuild the index"):
        GalleryIndex.load(tmp_path / "first")
    # An index written before the write id existed still loads.
    metadata = json.loads((tmp_path / "second" / "gallery_index.json").read_text())
    del metadata["write_id"]
    (tmp_path / "second" / "gallery_index.json").write_text(json.dumps(metadata))
    assert torch.equal(GalleryIndex.load(tmp_path / "second").embeddings, second.embeddings)


def test_check_compatible_names_the_difference():
    index = _index([[1.0, 0.0]])
    index.check_compatible("another/name", "abc", dict(index.settings))  # same weights, other id: fine
    with pytest.raises(ValueError, match="another model"):
        index.check_compatible("org/model", "def", dict(index.settings))
    with pytest.raises(ValueError, match="min_size: index 128, now 900"):
        index.check_compatible("org/model", "abc", {**index.settings, "min_size": 900})


def test_bad_queries_and_files(tmp_path):
    index = _index([[1.0, 0.0]])
    with pytest.raises(ValueError, match="do not match the index's dimension 2"):
        index.search(torch.ones(3), 1)
    with pytest.raises(ValueError, match="backend must be one of"):
        index.search(torch.ones(2), 1, backend="annoy")
    with pytest.raises(FileNotFoundError, match="is not a gallery index"):
        GalleryIndex.load(tmp_path)
    index.save(tmp_path / "index")
    metadata = json.loads((tmp_path / "index" / "gallery_index.json").read_text())
    (tmp_path / "index" / "gallery_index.json").write_text(json.dumps({**metadata, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99, expected 2: rebuild the index"):
        GalleryIndex.load(tmp_path / "index")
    with pytest.raises(ValueError, match="image_index points outside"):
        GalleryIndex(torch.ones(1, 2), torch.ones(1, 4), torch.ones(1), torch.tensor([5]), ["a"], "m", "f")
