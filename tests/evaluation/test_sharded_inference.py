"""Evaluation inference sharded over 2 CPU processes (gloo) gives exactly the one-process result."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hf_personsearch import PersonSearchImageProcessor, PersonSearchModel
from hf_personsearch.data.synthetic import generate
from hf_personsearch.evaluation.model_inference import evaluate_on_target, shard_indices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
import tiny_search_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BATCH_SIZE = 3
"""Not a divisor of the gallery or query count: the last batch is short, and the processes get unequal shares."""


def test_shards_are_whole_batches_round_robin():
    assert shard_indices(7, 2, 0, 2) == [0, 1, 4, 5]
    assert shard_indices(7, 2, 1, 2) == [2, 3, 6]
    assert shard_indices(2, 2, 1, 3) == []  # more processes than batches: nothing to do
    with pytest.raises(ValueError, match="process_index must be in 0..1"):
        shard_indices(7, 2, 2, 2)


WORKER = textwrap.dedent(
    """
    import pickle, sys
    from accelerate import PartialState
    from hf_personsearch import PersonSearchImageProcessor, PersonSearchModel
    from hf_personsearch.evaluation.model_inference import evaluate_on_target

    model_dir, data_dir, out = sys.argv[1:4]
    state = PartialState()
    model = PersonSearchModel.from_pretrained(model_dir).eval()
    summary, inputs = evaluate_on_target(
        model, PersonSearchImageProcessor.from_pretrained(model_dir), "prw", data_dir, det_thresh=0.0,
        batch_size=int(sys.argv[4]), progress=False, process_index=state.process_index,
        num_processes=state.num_processes,
    )
    if state.process_index == 0:
        with open(out, "wb") as file:
            pickle.dump((summary, inputs.detections, inputs.queries), file)
    else:
        assert summary is None and inputs is None, "only process 0 gets the result"
    """
)


@pytest.mark.slow
def test_two_processes_give_exactly_the_one_process_result(tmp_path):
    data_dir = tmp_path / "prw"
    generate("prw", data_dir, seed=1)
    model_dir = tiny_search_model.save_tiny_model(tmp_path / "model")
    model = PersonSearchModel.from_pretrained(model_dir).eval()
    processor = PersonSearchImageProcessor.from_pretrained(model_dir)
    expected, inputs = evaluate_on_target(
        model, processor, "prw", str(data_dir), det_thresh=0.0, batch_size=BATCH_SIZE, progress=False
    )
    assert len(inputs.detections) % BATCH_SIZE and len(inputs.queries) % BATCH_SIZE
    assert sum(len(d["scores"]) for d in inputs.detections) > 0  # the metric is computed from real detections

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    with socket.socket() as probe:  # a free port for the rendezvous (torchrun's port 0 does not work here)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    command += [str(worker), str(model_dir), str(data_dir), str(tmp_path / "sharded.pkl"), str(BATCH_SIZE)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp_path / "sharded.pkl", "rb") as file:
        summary, detections, queries = pickle.load(file)

    assert len(detections) == len(inputs.detections) and len(queries) == len(inputs.queries)
    for got, want in zip(detections, inputs.detections):
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    for got, want in zip(queries, inputs.queries):
        assert got["image_id"] == want["image_id"] and np.array_equal(got["embedding"], want["embedding"])
    assert summary["search"]["per_query"] == expected["search"]["per_query"]
    for key in ("mAP", "top1", "top5", "top10", "detection_ap", "detection_recall", "num_queries"):
        assert summary[key] == expected[key], key
