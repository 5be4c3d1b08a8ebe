"""AlignPS head pieces against hand computations: location grid, center-sampling assignment, centerness,
focal / GIoU / centerness losses on one or two locations, the focal OIM loss and the batch-hard triplet loss."""

import math

import pytest
import torch

from hf_personsearch.align_ps_head import (
    BACKGROUND,
    FocalOIMLoss,
    assign_locations,
    batch_hard_triplet_loss,
    centerness_targets,
    detection_losses,
    focal_oim_loss,
    location_points,
)
from hf_personsearch.oim import NO_IDENTITY, OIMLoss, oim_loss


def test_location_points_are_cell_centres_row_major():
    points = location_points(2, 3, stride=8)
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert points.tolist() == expected


def test_center_sampling_keeps_locations_near_the_centre_and_the_smaller_box_wins():
    points = location_points(6, 6, stride=8)  # x and y in 4, 12, 20, 28, 36, 44
    big = [0.0, 0.0, 48.0, 48.0]  # centre region 24 +- 12: x, y in {20, 28}
    small = [24.0, 16.0, 40.0, 34.0]  # centre (32, 25) +- 12 clipped to the box: x in {28, 36}, y in {20, 28}
    grid = assign_locations(points, torch.tensor([big, small]), stride=8, radius=1.5).reshape(6, 6)  # [y, x]
    expected = torch.full((6, 6), BACKGROUND)
    expected[2:4, 2] = 0
    expected[2:4, 3:5] = 1  # x = 28 is in both regions: the smaller box takes it
    assert torch.equal(grid, expected)
    assert assign_locations(points, torch.zeros(0, 4), 8, 1.5).eq(BACKGROUND).all()


def test_centerness_by_hand():
    distances = torch.tensor([[2.0, 1.0, 8.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    torch.testing.assert_close(centerness_targets(distances), torch.tensor([math.sqrt(2 / 8 * 1 / 4), 1.0]))


def test_detection_losses_on_two_locations_by_hand():
    class_logits = torch.tensor([0.5, -1.0])  # location 0 a person, location 1 background
    centerness_logits = torch.tensor([0.3, 2.0])
    distances = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([[4.0, 4.0, 4.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    points = torch.tensor([[10.0, 10.0], [30.0, 30.0]])
    is_person = torch.tensor([True, False])
    losses = detection_losses(
        class_logits,
        distances,
        centerness_logits,
        points,
        is_person,
        targets,
        torch.tensor([True, True]),
        1,
        0.25,
        2.0,
    )
    p0, p1 = torch.sigmoid(torch.tensor(0.5)), torch.sigmoid(torch.tensor(-1.0))
    focal = -0.25 * (1 - p0) ** 2 * torch.log(p0) - 0.75 * p1**2 * torch.log(1 - p1)
    torch.testing.assert_close(losses["det_classification"], focal / 2)  # / (1 positive + 1 image)
    # predicted [8, 8, 12, 12] vs target [6, 6, 14, 14]: IoU 16 / 64, the enclosing box is the target: GIoU 0.25;
    # the centerness target of a centred location is 1
    torch.testing.assert_close(losses["det_box"], torch.tensor(0.75))
    torch.testing.assert_close(losses["det_centerness"], -torch.log(torch.sigmoid(torch.tensor(0.3))))


def test_ignored_negatives_leave_the_classification_loss_and_no_person_gives_zero_box_loss():
    class_logits = torch.tensor([0.5, -1.0], requires_grad=True)
    distances = torch.ones(2, 4, requires_grad=True)
    args = (torch.zeros(2), torch.zeros(2, 2), torch.tensor([False, False]), torch.zeros(2, 4))
    counted = torch.tensor([True, False])
    losses = detection_losses(class_logits, distances, args[0], args[1], args[2], args[3], counted, 2, 0.25, 2.0)
    p0 = torch.sigmoid(torch.tensor(0.5))
    torch.testing.assert_close(losses["det_classification"], -0.75 * p0**2 * torch.log(1 - p0) / 2)
    assert losses["det_box"].item() == 0.0 and losses["det_centerness"].item() == 0.0
    sum(losses.values()).backward()  # still connected to the graph
    assert distances.grad is not None


def test_focal_oim_loss_by_hand_and_gamma_zero_is_oim():
    features = torch.tensor([[1.0, 0.0]])
    lut = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[-1.0, 0.0]])
    logits = 2.0 * torch.tensor([1.0, 0.0, -1.0])
    p = torch.softmax(logits, 0)[0]
    expected = -((1 - p) ** 2) * torch.log(p)
    torch.testing.assert_close(focal_oim_loss(features, torch.tensor([0]), lut, queue, 2.0, 2.0), expected)
    torch.testing.assert_close(
        focal_oim_loss(features, torch.tensor([1]), lut, queue, 2.0, 0.0),
        oim_loss(features, torch.tensor([1]), lut, queue, 2.0),
    )


def test_focal_oim_module_updates_its_tables_like_oim():
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    ids = torch.tensor([0, NO_IDENTITY, 2, 0])
    focal, plain = FocalOIMLoss(8, 3, 4, 10.0, 0.5, 0.0), OIMLoss(8, 3, 4, scalar=10.0, momentum=0.5)
    for module in (focal, plain):
        module.lut.copy_(torch.nn.functional.normalize(torch.ones(3, 8), dim=1))
    torch.testing.assert_close(focal(features, ids), plain(features, ids))
    torch.testing.assert_close(focal.lut, plain.lut)
    torch.testing.assert_close(focal.queue, plain.queue)
    with pytest.raises(ValueError, match="outside the OIM table"):
        focal(features, torch.tensor([0, 1, 2, 3]))


def test_batch_hard_triplet_by_hand():
    features = torch.tensor([[0.0], [1.0], [1.2]])
    ids = torch.tensor([0, 0, 1])
    # anchor 0: farthest positive 1, closest negative 1.2 -> 0.1; anchor 1: 1 vs 0.2 -> 1.1;
    # anchor 2: its only positive is itself (distance ~0), negative 0.2 -> 0.1
    torch.testing.assert_close(
        batch_hard_triplet_loss(features, ids, margin=0.3), torch.tensor((0.1 + 1.1 + 0.1) / 3), atol=1e-5, rtol=0
    )
    assert batch_hard_triplet_loss(features, torch.tensor([4, 4, 4]), 0.3).item() == 0.0


def test_negatives_inside_an_ignore_region_leave_the_classification_loss():
    from torchvision.ops import sigmoid_focal_loss

    from hf_personsearch import AlignPSConfig
    from hf_personsearch.align_ps_head import AlignPSHead

    torch.manual_seed(0)
    config = AlignPSConfig(backbone="test_resnet", fpn_channels=8, head_norm_groups=4, head_num_convs=1)
    head = AlignPSHead(config, stride=8).train()
    maps = head.maps(torch.randn(1, 8, 6, 6))
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "person_ids": torch.tensor([NO_IDENTITY])}
    everything = {**target, "ignore_regions": torch.tensor([[0.0, 0.0, 48.0, 48.0]])}
    positives = assign_locations(maps.points, target["boxes"], 8, config.center_sampling_radius) != BACKGROUND
    logits = maps.class_logits[0].detach()
    with torch.no_grad():
        plain = head.losses(maps, [{**target, "ignore_regions": torch.zeros(0, 4)}])["det_classification"]
        ignored = head.losses(maps, [everything])["det_classification"]
    count = int(positives.sum()) + 1  # positives + images
    all_terms = sigmoid_focal_loss(logits, positives.float(), alpha=0.25, gamma=2.0, reduction="none")
    torch.testing.assert_close(plain, all_terms.sum() / count)
    torch.testing.assert_close(ignored, all_terms[positives].sum() / count)  # only the person's locations
