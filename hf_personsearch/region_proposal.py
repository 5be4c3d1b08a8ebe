"""Ignore regions in training: the RPN that leaves them out, and the rule both detector stages share.

Detection datasets mark areas whose persons are not annotated one by one (CrowdHuman "mask" boxes and
``extra.ignore``, EuroCity Persons groups and depictions, PoseTrack21 ignore polygons). Training those
areas as background would teach the detector that crowds are not persons, so a candidate box (RPN
anchor or RoI proposal) that lies mostly inside an ignore region is neither a positive nor a negative,
unless it matches a ground-truth person, and never gets an identity.

"Mostly inside" is the rule of the CrowdHuman and Caltech evaluations: the intersection with the region
over the candidate's OWN area, at least :data:`IGNORE_MIN_COVERAGE`. IoU would not do: an ignore region
is often far larger than a person (a whole crowd), so a person-sized candidate inside it has a tiny IoU
with it.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_area

from .box_coding import Float32BoxCoder

IGNORE_MIN_COVERAGE = 0.5
"""Fraction of a candidate's area inside one ignore region from which it is ignored: the threshold the
CrowdHuman and Caltech evaluations use to match detections to ignore regions."""


def ignore_coverage(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(n,) the largest fraction of each box's own area inside one of the regions (0 with no region).

    Args:
        boxes: (n, 4) xyxy candidates; regions: (k, 4) xyxy ignore regions, same coordinates.
    """
    if regions.shape[0] == 0 or boxes.shape[0] == 0:
        return boxes.new_zeros(boxes.shape[0])
    regions = regions.to(boxes.dtype)
    top_left = torch.max(boxes[:, None, :2], regions[None, :, :2])
    bottom_right = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    # A degenerate candidate (zero area) has nothing inside anything: coverage 0, not 0/0.
    return (intersection / box_area(boxes).clamp(min=torch.finfo(boxes.dtype).tiny)[:, None]).max(dim=1).values


def in_ignore_regions(
    boxes: torch.Tensor, regions: torch.Tensor | None, min_coverage: float = IGNORE_MIN_COVERAGE
) -> torch.Tensor:
    """(n,) bool: the boxes with at least ``min_coverage`` of their area inside one region (None = no
    region: all False)."""
    if regions is None:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    return ignore_coverage(boxes, regions) >= min_coverage


def checked_ignore_regions(
    target: dict, where: str, image_size: tuple[int, int], device: torch.device | str
) -> torch.Tensor:
    """A labels dict's optional ``"ignore_regions"`` as a float32 (k, 4) xyxy tensor on ``device``, clipped
    to the ``(height, width)`` image; an absent key is no region. Raises ValueError naming ``where`` for
    another shape or a non-finite value.

    Clipped because the anchors also cover the padding around the image: a region reaching past the
    image could cover every anchor of a person-free batch and leave the RPN loss nothing to sample (0/0),
    while an anchor centred on an image corner has at most a quarter of its area inside a clipped region
    and always stays a negative."""
    regions = target.get("ignore_regions")
    if regions is None:
        return torch.zeros((0, 4), dtype=torch.float32, device=device)
    regions = torch.as_tensor(regions, dtype=torch.float32, device=device)
    if regions.numel() == 0:  # an empty list (a datasets row without regions) has shape (0,)
        return regions.reshape(0, 4)
    if regions.dim() != 2 or regions.shape[1] != 4:
        raise ValueError(f"{where}: ignore_regions must be a (k, 4) xyxy array, got shape {tuple(regions.shape)}")
    if not torch.isfinite(regions).all():
        bad = regions[~torch.isfinite(regions).all(1)][0].tolist()
        raise ValueError(f"{where}: ignore region {bad} is not finite")
    height, width = image_size
    return torch.stack(
        [regions[:, 0].clamp(0, width), regions[:, 1].clamp(0, height)]
        + [regions[:, 2].clamp(0, width), regions[:, 3].clamp(0, height)],
        dim=1,
    )


class IgnoreRegionRPN(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork whose anchors inside an ignore region are not negatives.

    Targets may carry ``"ignore_regions"`` (k, 4) xyxy next to ``"boxes"`` (absent = none). After
    torchvision's assignment (1 positive, 0 negative, -1 discarded), a negative anchor with at least
    ``ignore_min_coverage`` of its area inside an ignore region becomes -1, so the sampler of the
    objectness loss never draws it. Positives (IoU >= fg threshold with a person, or a person's best
    anchor) stay positives. Same arguments as RegionProposalNetwork, plus ``ignore_min_coverage``
    (default :data:`IGNORE_MIN_COVERAGE`). Its proposals are decoded in float32 (:mod:`.box_coding`).
    """

    def __init__(self, *args, ignore_min_coverage: float = IGNORE_MIN_COVERAGE, **kwargs):
        super().__init__(*args, **kwargs)
        self.ignore_min_coverage = ignore_min_coverage
        # Proposals decoded in float32 under bf16 autocast (torchvision's coder would put them on a grid of
        # up to 8 px: box_coding's docstring), with torchvision's RPN weights and clip.
        self.box_coder = Float32BoxCoder(self.box_coder.weights, self.box_coder.bbox_xform_clip)

    def assign_targets_to_anchors(
        self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        for image_labels, image_anchors, target in zip(labels, anchors, targets):
            ignored = in_ignore_regions(image_anchors, target.get("ignore_regions"), self.ignore_min_coverage)
            image_labels[ignored & (image_labels == 0)] = -1.0
        return labels, matched_gt_boxes
