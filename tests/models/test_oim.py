"""OIM loss and table updates against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_personsearch.oim import NO_IDENTITY, OIMLoss


def unit(*values):
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


def make_oim(**kwargs):
    oim = OIMLoss(embedding_dim=2, num_person_ids=3, queue_size=2, scalar=10.0, momentum=0.5, **kwargs)
    oim.lut.copy_(torch.stack([unit(1, 0), unit(0, 1), unit(-1, 0)]))
    oim.queue.copy_(torch.stack([unit(1, 1), unit(1, -1)]))
    return oim


def test_loss_is_cross_entropy_over_lut_and_queue_by_hand():
    oim = make_oim().eval()
    x = unit(1, 0)
    loss = oim(x[None], torch.tensor([0]))
    # logits = 10 * [1, 0, -1, 1/sqrt2, 1/sqrt2]
    logits = [10.0, 0.0, -10.0, 10 / math.sqrt(2), 10 / math.sqrt(2)]
    expected = -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_unlabeled_persons_have_no_loss_and_enter_the_queue():
    oim = make_oim().train()
    x = torch.stack([unit(0, -1), unit(-1, -1), unit(-1, 1)])
    loss = oim(x, torch.tensor([NO_IDENTITY] * 3))
    assert loss.item() == 0.0
    # queue of 2, head at 0, three pushed: the first overwritten by the third, head ends at 1
    assert torch.allclose(oim.queue[0], unit(-1, 1)) and torch.allclose(oim.queue[1], unit(-1, -1))
    assert oim.queue_head.item() == 1


def test_lut_momentum_update_and_renormalisation_by_hand():
    oim = make_oim().train()
    oim(unit(0, 1)[None], torch.tensor([0]))
    # 0.5 * (1, 0) + 0.5 * (0, 1) = (0.5, 0.5) -> normalised (1/sqrt2, 1/sqrt2)
    assert torch.allclose(oim.lut[0], unit(1, 1))
    assert torch.allclose(oim.lut[1], unit(0, 1)) and torch.allclose(oim.lut[2], unit(-1, 0))


def test_an_id_seen_twice_is_updated_twice_in_batch_order():
    oim = make_oim().train()
    first, second = unit(0, 1), unit(0, -1)
    oim(torch.stack([first, second]), torch.tensor([0, 0]))
    row = F.normalize(0.5 * unit(1, 0) + 0.5 * first, dim=0)
    row = F.normalize(0.5 * row + 0.5 * second, dim=0)
    assert torch.allclose(oim.lut[0], row)


def test_update_happens_after_the_loss_and_outside_autograd():
    oim = make_oim().train()
    x = unit(0, 1)[None].requires_grad_()
    loss = oim(x, torch.tensor([0]))
    loss.backward()  # would fail if the in-place LUT update were part of the graph
    # the loss used the table BEFORE the update
    logits = 10.0 * torch.tensor([0.0, 1.0, 0.0, 1 / math.sqrt(2), -1 / math.sqrt(2)])
    assert loss.item() == pytest.approx(F.cross_entropy(logits[None], torch.tensor([0])).item(), rel=1e-5)
    assert not oim.lut.requires_grad


def test_eval_mode_does_not_update():
    oim = make_oim().eval()
    before = oim.lut.clone()
    oim(unit(0, 1)[None], torch.tensor([0]))
    assert torch.equal(oim.lut, before)


def test_ids_outside_the_table_are_a_clear_error():
    oim = make_oim()
    with pytest.raises(ValueError, match=r"outside the OIM table \[0, 3\)"):
        oim(unit(1, 0)[None], torch.tensor([3]))
    with pytest.raises(ValueError, match="no-identity value -1"):
        oim(unit(1, 0)[None], torch.tensor([-2]))


def test_tables_are_persistent_buffers():
    keys = set(make_oim().state_dict())
    assert keys == {"lut", "queue", "queue_head"}


def test_non_finite_features_never_reach_the_tables():
    oim = make_oim().train()
    before_lut, before_queue = oim.lut.clone(), oim.queue.clone()
    bad = torch.tensor([[float("nan"), 0.0], [float("inf"), 1.0]])
    oim.update(bad, torch.tensor([0, -1]))
    assert torch.equal(oim.lut, before_lut) and torch.equal(oim.queue, before_queue)
