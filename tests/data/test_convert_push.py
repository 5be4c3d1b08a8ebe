"""``python -m hf_personsearch.data.convert ... --push-to-hub ID`` against the offline fake Hub."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq

from hf_personsearch.data.formats import record_differences
from hf_personsearch.data.synthetic import generate
from tests.support.fake_hub import FakeHub

REPO_ROOT = Path(__file__).resolve().parents[2]


def _records(dataset: datasets.Dataset) -> list[dict]:
    rows = dataset.remove_columns("image").to_list()
    for row in rows:
        row["boxes"] = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
        row["ignore_regions"] = np.asarray(row["ignore_regions"], np.float32).reshape(-1, 4)
    return rows


def test_push_to_hub_uploads_parquet_that_reads_back_the_same_rows(tmp_path):
    truth = generate("msmt17", tmp_path / "raw", seed=0, num_train_ids=2, num_test_ids=2, num_cameras=2)
    command = [sys.executable, "-m", "hf_personsearch.data.convert", "msmt17", str(tmp_path / "raw")]
    command += [str(tmp_path / "out"), "--split", "train", "--split", "query", "--cache-dir", str(tmp_path / "c")]
    command += ["--push-to-hub", "org/msmt17-parquet"]
    with FakeHub() as hub:
        env = {**os.environ, **hub.environment(), "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        uploaded = hub.repos["org/msmt17-parquet"]
        created = hub.created["org/msmt17-parquet"]
        lfs_puts = [path for method, path in hub.requests if method == "PUT"]
    assert "pushed to org/msmt17-parquet (private)" in result.stdout
    # not redistributable: private by default (huggingface_hub 2 sends "visibility", 1.x sent "private")
    assert created["type"] == "dataset"
    assert created.get("visibility") == "private" or created.get("private") is True

    shards = sorted(path for path in uploaded if path.endswith(".parquet"))
    assert [path.split("-")[0] for path in shards] == ["data/query", "data/train"]
    assert len(lfs_puts) == len(shards)  # the shards went through the LFS upload, as on the real Hub
    assert "README.md" in uploaded  # the dataset card datasets writes (features, splits)

    for split in ("train", "query"):
        (shard,) = [path for path in shards if path.startswith(f"data/{split}-")]
        pushed = pq.read_table(io.BytesIO(uploaded[shard])).to_pylist()
        local = pq.read_table(tmp_path / "out" / "data" / f"{split}-00000-of-00001.parquet").to_pylist()
        assert pushed == local  # same rows, images included

    hub_copy = tmp_path / "hub_copy"
    for path, content in uploaded.items():
        (hub_copy / path).parent.mkdir(parents=True, exist_ok=True)
        (hub_copy / path).write_bytes(content)
    shutil.rmtree(tmp_path / "raw")  # what came back must not need the raw files
    loaded = datasets.load_dataset(
        str(hub_copy), cache_dir=str(tmp_path / "c2")
    )  # as from the Hub: the card lists the splits
    assert set(loaded) == {"train", "query"}
    expected = [r for r in truth["records"] if r["split"] in ("train", "query")]
    assert record_differences(expected, _records(loaded["train"]) + _records(loaded["query"])) == []
    for row in loaded["query"]:
        assert np.asarray(row["image"]).shape == (row["height"], row["width"], 3)
