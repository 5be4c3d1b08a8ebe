"""Faster R-CNN's second stage as free functions: proposal sampling, detection losses, post-processing.

Built from torchvision's public box ops and its BoxCoder/Matcher; torchvision's RoIHeads is not used
(its internals change between releases, which is why older person search code is pinned).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from .box_coding import at_least_float32
from .region_proposal import in_ignore_regions


@dataclass
class SampledProposals:
    """Proposals chosen for the box head in one training step, concatenated over the batch.

    boxes: list of (n_i, 4) proposals per image; is_person: (N,) bool; person_ids: (N,) id of the matched
    ground truth (meaningful where is_person); regression_targets: (N, 4) encoded deltas.
    """

    boxes: list[torch.Tensor]
    is_person: torch.Tensor
    person_ids: torch.Tensor
    regression_targets: torch.Tensor


def sample_proposals(
    proposals: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    matcher: Matcher,
    box_coder: BoxCoder,
    batch_size_per_image: int,
    positive_fraction: float,
) -> SampledProposals:
    """Label proposals by IoU with the ground truth (boxes added as proposals, as Faster R-CNN) and draw
    up to ``batch_size_per_image`` of them per image with at most ``positive_fraction`` persons.

    A target's optional ``"ignore_regions"`` (k, 4) removes the would-be negatives lying mostly inside
    them (:func:`~.region_proposal.in_ignore_regions`); positives match a person, ignore region or not."""
    boxes, is_person, person_ids, regression_targets = [], [], [], []
    for image_proposals, target in zip(proposals, targets):
        gt_boxes, gt_ids = target["boxes"], target["person_ids"]
        candidates = torch.cat([image_proposals, gt_boxes])
        if gt_boxes.shape[0] == 0:
            matched = torch.full((candidates.shape[0],), Matcher.BELOW_LOW_THRESHOLD, device=candidates.device)
        else:
            matched = matcher(box_iou(gt_boxes, candidates))
        positive = torch.where(matched >= 0)[0]
        negative = torch.where(matched == Matcher.BELOW_LOW_THRESHOLD)[0]
        negative = negative[~in_ignore_regions(candidates[negative], target.get("ignore_regions"))]
        num_positive = min(int(batch_size_per_image * positive_fraction), positive.numel())
        num_negative = min(batch_size_per_image - num_positive, negative.numel())
        positive = positive[torch.randperm(positive.numel(), device=positive.device)[:num_positive]]
        negative = negative[torch.randperm(negative.numel(), device=negative.device)[:num_negative]]
        chosen = torch.cat([positive, negative])
        chosen_boxes = candidates[chosen]
        matched_gt = matched[chosen].clamp(min=0)
        person = torch.zeros(chosen.numel(), dtype=torch.bool, device=chosen.device)
        person[:num_positive] = True
        boxes.append(chosen_boxes)
        is_person.append(person)
        if gt_boxes.shape[0] == 0:
            person_ids.append(torch.zeros(chosen.numel(), dtype=torch.long, device=chosen.device))
            regression_targets.append(torch.zeros((chosen.numel(), 4), device=chosen.device))
        else:
            person_ids.append(gt_ids[matched_gt])
            regression_targets.append(box_coder.encode_single(gt_boxes[matched_gt], chosen_boxes))
    return SampledProposals(boxes, torch.cat(is_person), torch.cat(person_ids), torch.cat(regression_targets))


def detection_losses(
    logits: torch.Tensor, box_deltas: torch.Tensor, is_person: torch.Tensor, regression_targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Person/background BCE on the norm-aware logits, and smooth-L1 box regression on persons only
    (beta 1/9 and normalised by the number of sampled proposals, as torchvision's Faster R-CNN)."""
    classification = F.binary_cross_entropy_with_logits(logits, is_person.to(logits.dtype))
    box = F.smooth_l1_loss(box_deltas[is_person], regression_targets[is_person], beta=1.0 / 9, reduction="sum") / max(
        is_person.numel(), 1
    )
    return classification, box


def postprocess_detections(
    proposals: list[torch.Tensor],
    box_deltas: torch.Tensor,
    scores: torch.Tensor,
    embeddings: torch.Tensor,
    image_sizes: list[tuple[int, int]],
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> list[dict[str, torch.Tensor]]:
    """Decode boxes, clip them to the image, drop low scores and tiny boxes, NMS, keep the best.

    Returns per image {"boxes", "scores", "embeddings"} with embeddings = normalised embedding x score
    (NAE's confidence weighted similarity), in float32 at least: under bf16 autocast the boxes are decoded in
    float32 (``box_coder``: :class:`.box_coding.Float32BoxCoder`) and scores and embeddings converted."""
    scores, embeddings = at_least_float32(scores), at_least_float32(embeddings)
    counts = [p.shape[0] for p in proposals]
    decoded = (
        box_coder.decode_single(box_deltas, torch.cat(proposals)) if sum(counts) else box_deltas.new_zeros((0, 4))
    )
    results = []
    for boxes, image_scores, image_embeddings, size in zip(
        decoded.split(counts), scores.split(counts), embeddings.split(counts), image_sizes
    ):
        boxes = clip_boxes_to_image(boxes, size)
        keep = torch.where(image_scores >= score_thresh)[0]
        keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
        keep = keep[batched_nms(boxes[keep], image_scores[keep], torch.zeros_like(keep), nms_thresh)]
        keep = keep[:detections_per_img]
        results.append(
            {
                "boxes": boxes[keep],
                "scores": image_scores[keep],
                "embeddings": image_embeddings[keep] * image_scores[keep, None],
            }
        )
    return results
