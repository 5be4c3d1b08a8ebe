"""OIM tables stay identical on every rank: the update gathers all ranks' features first (gloo, CPU)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hf_personsearch.oim import OIMLoss


def rank_batch(rank: int):
    generator = torch.Generator().manual_seed(100 + rank)
    features = F.normalize(torch.randn(3 + rank, 8, generator=generator), dim=1)  # ranks hold different counts
    person_ids = torch.tensor([0, 2, -1] if rank == 0 else [2, 1, -1, -1])
    return features, person_ids


def make_oim():
    torch.manual_seed(0)
    oim = OIMLoss(embedding_dim=8, num_person_ids=4, queue_size=5, scalar=30.0, momentum=0.5)
    oim.lut.copy_(F.normalize(torch.randn(4, 8), dim=1))
    return oim.train()


def worker(rank: int, world_size: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        oim = make_oim()
        features, person_ids = rank_batch(rank)
        oim(features, person_ids)
        torch.save(oim.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lut_and_queue_identical_on_both_ranks_and_equal_to_one_process_update(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    # the same update in one process on the features of rank 0 then rank 1
    reference = make_oim()
    features = torch.cat([rank_batch(0)[0], rank_batch(1)[0]])
    person_ids = torch.cat([rank_batch(0)[1], rank_batch(1)[1]])
    reference.update(features, person_ids)
    for key, value in reference.state_dict().items():
        assert torch.allclose(rank0[key].float(), value.float(), atol=1e-6), key
    assert not torch.equal(rank0["lut"], make_oim().lut)  # something did change
    assert rank0["queue_head"].item() == 3  # three unlabeled persons over both ranks
