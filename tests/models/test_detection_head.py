"""Second-stage proposal sampling with ignore regions (hand-built case)."""

import torch
from torchvision.models.detection._utils import BoxCoder, Matcher

from hf_personsearch.detection_head import sample_proposals

PERSON = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
# On the person; inside the crowd region; 0.4 inside it; far away.
PROPOSALS = torch.tensor(
    [[0.0, 0.0, 10.0, 20.0], [50.0, 0.0, 60.0, 20.0], [56.0, 0.0, 66.0, 20.0], [200, 0, 210, 20.0]]
)
REGION = torch.tensor([[0.0, 0.0, 60.0, 40.0]])  # also covers the annotated person


def _sample(target):
    return sample_proposals([PROPOSALS], [target], Matcher(0.5, 0.5, False), BoxCoder((10.0, 10.0, 5.0, 5.0)), 16, 0.5)


def _as_set(boxes):
    return {tuple(box) for box in boxes.tolist()}


def test_proposals_inside_an_ignore_region_are_never_negatives_and_matches_stay_positive():
    torch.manual_seed(0)
    plain = _sample({"boxes": PERSON, "person_ids": torch.tensor([2])})
    assert _as_set(plain.boxes[0][~plain.is_person]) == _as_set(PROPOSALS[1:])

    sampled = _sample({"boxes": PERSON, "person_ids": torch.tensor([2]), "ignore_regions": REGION})
    boxes = sampled.boxes[0]
    # The proposal on the person and the ground truth itself (added as a proposal): positives with its id.
    assert _as_set(boxes[sampled.is_person]) == {(0.0, 0.0, 10.0, 20.0)} and int(sampled.is_person.sum()) == 2
    assert sampled.person_ids[sampled.is_person].tolist() == [2, 2]
    assert _as_set(boxes[~sampled.is_person]) == _as_set(PROPOSALS[2:])  # the covered one is left out

    # Without persons nothing is positive, and the covered proposal is still not a negative.
    empty = _sample(
        {"boxes": torch.zeros((0, 4)), "person_ids": torch.zeros(0, dtype=torch.long), "ignore_regions": REGION}
    )
    assert not empty.is_person.any()
    assert _as_set(empty.boxes[0]) == _as_set(PROPOSALS[2:])
