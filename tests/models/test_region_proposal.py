"""Ignore regions in the RPN: the coverage rule, anchor relabelling, labels checking."""

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead

from hf_personsearch.region_proposal import (
    IgnoreRegionRPN,
    checked_ignore_regions,
    ignore_coverage,
    in_ignore_regions,
)

# Anchors of one image, 10 x 20 px: on the person; fully inside the region; 0.4 and 0.5 of their area
# inside it (the region ends at x = 60); far from both.
ANCHORS = torch.tensor(
    [[0, 0, 10, 20], [50, 0, 60, 20], [56, 0, 66, 20], [55, 0, 65, 20], [200, 0, 210, 20]], dtype=torch.float32
)
PERSON = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
REGION = torch.tensor([[0.0, 0.0, 60.0, 40.0]])  # a crowd area that also covers the annotated person


def _rpn(**kwargs) -> IgnoreRegionRPN:
    generator = AnchorGenerator(((32,),), ((1.0,),))
    return IgnoreRegionRPN(
        generator,
        RPNHead(4, generator.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=8,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 20, "testing": 20},
        post_nms_top_n={"training": 10, "testing": 10},
        nms_thresh=0.7,
        **kwargs,
    )


def test_coverage_is_the_intersection_over_the_candidates_own_area():
    torch.testing.assert_close(ignore_coverage(ANCHORS, REGION), torch.tensor([1.0, 1.0, 0.4, 0.5, 0.0]))
    # The best region counts, not the sum: two halves in two regions are not "mostly inside" one.
    halves = torch.tensor([[0.0, 0.0, 54.0, 40.0], [56.0, 0.0, 100.0, 40.0]])
    torch.testing.assert_close(ignore_coverage(ANCHORS[1:2], halves), torch.tensor([0.4]))
    assert ignore_coverage(ANCHORS, torch.zeros((0, 4))).tolist() == [0.0] * 5
    assert in_ignore_regions(ANCHORS, REGION).tolist() == [True, True, False, True, False]
    assert in_ignore_regions(ANCHORS, None).tolist() == [False] * 5
    # A degenerate box has no area inside anything (no 0/0).
    assert ignore_coverage(torch.tensor([[5.0, 5.0, 5.0, 9.0]]), REGION).tolist() == [0.0]


def test_rpn_ignores_negative_anchors_inside_a_region_and_keeps_positives():
    rpn = _rpn()
    labels, matched = rpn.assign_targets_to_anchors([ANCHORS], [{"boxes": PERSON}])
    assert labels[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # torchvision's assignment
    labels, matched_ignore = rpn.assign_targets_to_anchors([ANCHORS], [{"boxes": PERSON, "ignore_regions": REGION}])
    assert labels[0].tolist() == [1.0, -1.0, 0.0, -1.0, 0.0]
    torch.testing.assert_close(matched_ignore[0], matched[0])
    # An image without persons: everything is background except what the region covers.
    labels, _ = rpn.assign_targets_to_anchors([ANCHORS], [{"boxes": torch.zeros((0, 4)), "ignore_regions": REGION}])
    assert labels[0].tolist() == [-1.0, -1.0, 0.0, -1.0, 0.0]
    # The threshold is a parameter: at 0.3 the 0.4-covered anchor is ignored too.
    labels, _ = _rpn(ignore_min_coverage=0.3).assign_targets_to_anchors(
        [ANCHORS], [{"boxes": PERSON, "ignore_regions": REGION}]
    )
    assert labels[0].tolist() == [1.0, -1.0, -1.0, -1.0, 0.0]


def test_rpn_training_forward_uses_the_relabelled_anchors(monkeypatch):
    """The objectness loss samples only from anchors labelled 0 or 1: with every anchor of a person-free
    image ignored but one, that one is the only negative drawn."""
    torch.manual_seed(0)
    rpn = _rpn()
    drawn = []
    sampler = rpn.fg_bg_sampler.__class__.__call__

    def spy(self, labels):
        drawn.append([int((image_labels == 0).sum()) for image_labels in labels])
        return sampler(self, labels)

    monkeypatch.setattr(rpn.fg_bg_sampler.__class__, "__call__", spy)
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros((1, 3, 64, 64)), [(64, 64)])
    features = {"encoder": torch.randn(1, 4, 4, 4)}
    region = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # covers >= half of every 32-px anchor but the corner ones
    rpn.train()
    rpn(images, features, [{"boxes": torch.zeros((0, 4)), "ignore_regions": torch.zeros((0, 4))}])
    rpn(images, features, [{"boxes": torch.zeros((0, 4)), "ignore_regions": region}])
    anchors = rpn.anchor_generator(images, list(features.values()))[0]
    assert drawn[0] == [len(anchors)]
    assert drawn[1] == [int((~in_ignore_regions(anchors, region)).sum())] and drawn[1][0] < len(anchors)


def test_checked_ignore_regions_clips_to_the_image_and_names_it():
    assert checked_ignore_regions({}, "labels[0]", (50, 80), "cpu").shape == (0, 4)
    assert checked_ignore_regions({"ignore_regions": []}, "labels[0]", (50, 80), "cpu").shape == (0, 4)
    regions = checked_ignore_regions(
        {"ignore_regions": [[1, 2, 3, 4], [-10, 20, 90, 60]]}, "labels[0]", (50, 80), "cpu"
    )
    assert regions.dtype == torch.float32 and regions.tolist() == [[1.0, 2.0, 3.0, 4.0], [0.0, 20.0, 80.0, 50.0]]
    with pytest.raises(
        ValueError, match=r"labels\[2\]: ignore_regions must be a \(k, 4\) xyxy array, got shape \(3,\)"
    ):
        checked_ignore_regions({"ignore_regions": [1, 2, 3]}, "labels[2]", (50, 80), "cpu")
    with pytest.raises(ValueError, match=r"labels\[1\]: ignore region \[0.0, 0.0, nan, 4.0\] is not finite"):
        checked_ignore_regions({"ignore_regions": [[0, 0, float("nan"), 4]]}, "labels[1]", (50, 80), "cpu")
