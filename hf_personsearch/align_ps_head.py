"""AlignPSHead: AlignPS's anchor-free detection and re-ID head on the aggregated (AFA) map, the "search head"
of :class:`AlignPSModel`.

Every location of the stride-8 AFA map predicts a person score, its distances to the four box sides and a
centerness (FCOS, with torchvision's FCOS towers); the AFA feature of the location is its re-ID feature.
Training: the locations near a person's centre are its positives (center sampling); losses: sigmoid focal
loss (classification), GIoU weighted by the centerness target (box), BCE (centerness), and on the positives'
normalised features the focal OIM loss (lookup table + queue) and a batch-hard triplet loss. Inference:
score = sigmoid(class) x sigmoid(centerness), NMS, embedding = normalised feature x score (the output
contract of PersonSearchModel).

The losses are free functions, testable alone; the head calls them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSRegressionHead
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from .configuration_align_ps import AlignPSConfig
from .oim import NO_IDENTITY, OIMLoss

BACKGROUND = -1
"""The matched person index of a location that is no person's positive."""


# --------------------------------------------------------------------------- targets
def location_points(height: int, width: int, stride: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(height * width, 2) pixel (x, y) of each map location, row-major: ``index * stride + stride // 2``
    (the centre of the location's stride x stride cell, as mmdetection's FCOS)."""
    ys = torch.arange(height, device=device, dtype=dtype) * stride + stride // 2
    xs = torch.arange(width, device=device, dtype=dtype) * stride + stride // 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def side_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(P, G, 4) distances (left, top, right, bottom) from each point to the sides of each xyxy box."""
    x, y = points[:, None, 0], points[:, None, 1]
    return torch.stack(
        [x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x, boxes[None, :, 3] - y], -1
    )


def assign_locations(points: torch.Tensor, boxes: torch.Tensor, stride: int, radius: float) -> torch.Tensor:
    """The person each location is a positive of (index into ``boxes``), or :data:`BACKGROUND`.

    A location is a positive of a box when it lies inside the box's centre region: the square of half-side
    ``radius * stride`` around the box centre, clipped to the box (FCOS center sampling). A location in the
    centre regions of several boxes goes to the smallest box (FCOS's rule: the smaller person is the one
    that location can still see)."""
    if boxes.shape[0] == 0:
        return torch.full((points.shape[0],), BACKGROUND, dtype=torch.long, device=points.device)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = radius * stride
    regions = torch.cat([torch.maximum(centres - half, boxes[:, :2]), torch.minimum(centres + half, boxes[:, 2:])], 1)
    inside = side_distances(points, regions).min(dim=-1).values > 0
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand_as(inside)
    areas = torch.where(inside, areas, torch.full_like(areas, float("inf")))
    smallest, matched = areas.min(dim=1)
    return torch.where(torch.isfinite(smallest), matched, torch.full_like(matched, BACKGROUND))


def centerness_targets(distances: torch.Tensor) -> torch.Tensor:
    """FCOS centerness of (N, 4) (left, top, right, bottom) distances:
    ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``, 1 at the box centre, 0 on a side."""
    left_right, top_bottom = distances[:, [0, 2]], distances[:, [1, 3]]
    ratio = (left_right.min(1).values / left_right.max(1).values) * (
        top_bottom.min(1).values / top_bottom.max(1).values
    )
    return ratio.clamp(min=0).sqrt()


def distances_to_boxes(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """xyxy boxes of (N, 2) points and their (N, 4) (left, top, right, bottom) distances."""
    return torch.cat([points - distances[:, :2], points + distances[:, 2:]], dim=1)


# --------------------------------------------------------------------------- losses
def detection_losses(
    class_logits: torch.Tensor,
    distances: torch.Tensor,
    centerness_logits: torch.Tensor,
    points: torch.Tensor,
    is_person: torch.Tensor,
    target_distances: torch.Tensor,
    counted: torch.Tensor,
    num_images: int,
    alpha: float,
    gamma: float,
) -> dict[str, torch.Tensor]:
    """FCOS losses over N locations (the batch's, flattened).

    Args:
        class_logits / centerness_logits: (N,) logits; distances: (N, 4) predicted side distances (pixels).
        points: (N, 2) the locations' pixel coordinates.
        is_person: (N,) bool, positives; target_distances: (N, 4) their target distances (any value elsewhere).
        counted: (N,) bool, the locations the classification loss sees (all but ignore-region negatives).
        num_images: images in the batch (the focal loss is normalised by positives + images, so a batch
            without persons still has a finite loss: mmdetection's ``avg_factor=num_pos + num_imgs``).

    Returns {"det_classification": focal loss sum / (positives + images), "det_box": GIoU loss of the decoded
    boxes weighted by the centerness target / sum of those weights, "det_centerness": BCE with the centerness
    target, mean over positives}; box and centerness are 0 (with gradients) without positives.
    """
    labels = is_person.to(class_logits.dtype)
    focal = sigmoid_focal_loss(class_logits[counted], labels[counted], alpha=alpha, gamma=gamma, reduction="sum")
    losses = {"det_classification": focal / (int(is_person.sum()) + num_images)}
    if not is_person.any():
        losses["det_box"] = distances.sum() * 0.0
        losses["det_centerness"] = centerness_logits.sum() * 0.0
        return losses
    target = target_distances[is_person]
    weights = centerness_targets(target)
    positive_points = points[is_person]
    giou = generalized_box_iou_loss(
        distances_to_boxes(positive_points, distances[is_person]), distances_to_boxes(positive_points, target)
    )
    losses["det_box"] = (giou * weights).sum() / weights.sum().clamp(min=1e-6)
    losses["det_centerness"] = F.binary_cross_entropy_with_logits(centerness_logits[is_person], weights)
    return losses


def focal_oim_loss(
    features: torch.Tensor,
    person_ids: torch.Tensor,
    lut: torch.Tensor,
    queue: torch.Tensor,
    scalar: float,
    gamma: float,
) -> torch.Tensor:
    """AlignPS's re-ID loss: mean over labeled features of ``-(1 - p)^gamma log p``, p = the OIM softmax
    probability of the person's own lookup table row among ``scalar * x @ [lut; queue]^T``. gamma = 0 is
    the OIM loss (:func:`oim.oim_loss`); gamma > 0 focuses on the persons the tables do not yet separate."""
    lut_logits = scalar * features @ lut.t()
    log_normaliser = torch.logsumexp(lut_logits, dim=1)
    if queue.shape[0] > 0:
        log_normaliser = torch.logaddexp(log_normaliser, torch.logsumexp(scalar * features @ queue.t(), dim=1))
    log_p = lut_logits.gather(1, person_ids[:, None]).squeeze(1) - log_normaliser
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


def batch_hard_triplet_loss(features: torch.Tensor, person_ids: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017; AlignPS's ``TripletLossFilter``): for each feature, its
    farthest same-id feature and its closest other-id feature (Euclidean), ``mean(relu(d_pos - d_neg + margin))``.
    0 (with gradients) when fewer than two identities are present: nothing to separate."""
    if person_ids.unique().numel() < 2:
        return features.sum() * 0.0
    squared = (features[:, None, :] - features[None, :, :]).pow(2).sum(-1)
    distances = squared.clamp(min=1e-12).sqrt()
    same = person_ids[:, None] == person_ids[None, :]
    hardest_positive = torch.where(same, distances, torch.zeros_like(distances)).max(dim=1).values
    hardest_negative = torch.where(same, torch.full_like(distances, float("inf")), distances).min(dim=1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


class FocalOIMLoss(OIMLoss):
    """:class:`OIMLoss` tables and update with AlignPS's focal weighting of the loss
    (:func:`focal_oim_loss`); ``gamma`` = 0 is the plain OIM loss."""

    def __init__(
        self, embedding_dim: int, num_person_ids: int, queue_size: int, scalar: float, momentum: float, gamma: float
    ):
        super().__init__(embedding_dim, num_person_ids, queue_size, scalar=scalar, momentum=momentum)
        self.gamma = gamma

    def forward(self, features: torch.Tensor, person_ids: torch.Tensor) -> torch.Tensor:
        self.check_ids(person_ids)
        labeled = person_ids != NO_IDENTITY
        if labeled.any():
            # A snapshot: the update below rewrites the tables that autograd still needs (as OIMLoss).
            lut, queue = (self.lut.clone(), self.queue.clone()) if self.training else (self.lut, self.queue)
            loss = focal_oim_loss(features[labeled], person_ids[labeled], lut, queue, self.scalar, self.gamma)
        else:
            loss = features.sum() * 0.0
        if self.training:
            self.update(features.detach(), person_ids)
        return loss


# --------------------------------------------------------------------------- head
@dataclass
class HeadMaps:
    """The head's per-location outputs, flattened row-major per image: ``class_logits`` and
    ``centerness_logits`` (B, HW), ``distances`` (B, HW, 4) in pixels, ``reid_features`` (B, HW, C)
    un-normalised, ``points`` (HW, 2)."""

    class_logits: torch.Tensor
    centerness_logits: torch.Tensor
    distances: torch.Tensor
    reid_features: torch.Tensor
    points: torch.Tensor


class AlignPSHead(nn.Module):
    """AlignPS's head on the AFA map (stride ``stride``).

    Args:
        config: the AlignPS config (towers, center sampling, losses, post-processing, OIM table).
        stride: the AFA map's stride (8 on ResNets).

    ``maps(afa_features)`` -> :class:`HeadMaps`; from them ``losses(maps, targets)`` (training: unweighted
    det_classification, det_box, det_centerness, reid_triplet, reid_oim; targets per image {"boxes" (n, 4) xyxy,
    "person_ids" (n,), "ignore_regions" (k, 4)}), ``detections(maps, image_sizes)`` (per image {"boxes",
    "scores", "embeddings"}) and ``box_embeddings(maps, boxes)`` (the query path). One ``maps`` serves the
    losses and ROI-AlignPS's proposals of a training step.
    """

    def __init__(self, config: AlignPSConfig, stride: int):
        super().__init__()
        self.config = config
        self.stride = stride
        channels = config.fpn_channels
        norm_layer = partial(nn.GroupNorm, config.head_norm_groups)
        self.classification = FCOSClassificationHead(
            channels, 1, 1, config.head_num_convs, config.head_prior_probability, norm_layer
        )
        self.regression = FCOSRegressionHead(channels, 1, config.head_num_convs, norm_layer)
        # FCOS's learnable scale of the regression output (mmcv Scale(1.0)); the distances are in strides.
        self.distance_scale = nn.Parameter(torch.ones(()))
        self.oim = FocalOIMLoss(
            channels,
            config.num_person_ids,
            config.oim_queue_size,
            scalar=config.oim_scalar,
            momentum=config.oim_momentum,
            gamma=config.oim_focal_gamma,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """torchvision's FCOS initialisation of the towers and predictors, scale 1, empty OIM tables."""
        for tower in (self.classification, self.regression):
            for layer in tower.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.zeros_(layer.bias)
                elif isinstance(layer, nn.GroupNorm):
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)
        prior = self.config.head_prior_probability
        nn.init.constant_(self.classification.cls_logits.bias, -math.log((1 - prior) / prior))
        self.distance_scale.fill_(1.0)
        self.oim.lut.zero_()
        self.oim.queue.zero_()
        self.oim.queue_head.zero_()

    def check_person_ids(self, person_ids: torch.Tensor, where: str) -> None:
        """ValueError naming ``where`` when an id is neither a lookup table row nor "no identity"."""
        self.oim.check_ids(person_ids, where=where)

    def maps(self, afa_features: torch.Tensor) -> HeadMaps:
        """Per-location predictions and re-ID features of the AFA map (B, C, H, W)."""
        # AlignPS subtracts each image's mean feature before the head (the "sub" of its config names): the
        # re-ID features then describe how a location differs from its scene, not the scene's overall look.
        features = afa_features - afa_features.mean(dim=(2, 3), keepdim=True)
        batch, channels, height, width = features.shape
        class_logits = self.classification([features]).reshape(batch, -1)
        distances, centerness_logits = self.regression([features])
        # Distances are predicted in strides (FCOS norm_on_bbox) and returned in pixels.
        distances = F.relu(self.distance_scale * distances) * self.stride
        return HeadMaps(
            class_logits=class_logits,
            centerness_logits=centerness_logits.reshape(batch, -1),
            distances=distances,
            reid_features=features.flatten(2).transpose(1, 2),
            points=location_points(height, width, self.stride, features.device, features.dtype),
        )

    def losses(self, maps: HeadMaps, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        config = self.config
        matched, target_distances, counted, person_ids = [], [], [], []
        for target in targets:
            boxes = target["boxes"]
            image_matched = assign_locations(maps.points, boxes, self.stride, config.center_sampling_radius)
            is_person = image_matched != BACKGROUND
            index = image_matched.clamp(min=0)
            if boxes.shape[0]:
                distances = side_distances(maps.points, boxes)[torch.arange(len(index)), index]
                ids = target["person_ids"][index]
            else:
                distances = maps.points.new_zeros((len(index), 4))
                ids = torch.full_like(index, NO_IDENTITY)
            regions = target.get("ignore_regions")
            ignored = torch.zeros_like(is_person)
            if regions is not None and len(regions):
                ignored = (side_distances(maps.points, regions).min(dim=-1).values > 0).any(dim=1) & ~is_person
            matched.append(is_person)
            target_distances.append(distances)
            counted.append(~ignored)
            person_ids.append(ids)
        is_person = torch.cat(matched)
        losses = detection_losses(
            maps.class_logits.reshape(-1),
            maps.distances.reshape(-1, 4),
            maps.centerness_logits.reshape(-1),
            maps.points.repeat(len(targets), 1),
            is_person,
            torch.cat(target_distances),
            torch.cat(counted),
            len(targets),
            config.focal_alpha,
            config.focal_gamma,
        )
        features = F.normalize(maps.reid_features.reshape(-1, maps.reid_features.shape[-1])[is_person], dim=1)
        ids = torch.cat(person_ids)[is_person]
        labeled = ids != NO_IDENTITY
        # The triplet loss also sees the lookup table rows of the batch's identities (as AlignPS's triplet
        # head), read before the OIM update below changes them: persons seen in earlier batches are positives.
        table_ids = ids[labeled].unique()
        triplet_features = torch.cat([features[labeled], self.oim.lut[table_ids].detach()])
        triplet_ids = torch.cat([ids[labeled], table_ids])
        losses["reid_triplet"] = batch_hard_triplet_loss(triplet_features, triplet_ids, config.triplet_margin)
        losses["reid_oim"] = self.oim(features, ids)
        return losses

    @torch.no_grad()
    def detections(
        self, maps: HeadMaps, image_sizes: list[tuple[int, int]], score_thresh: float | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: score = sigmoid(class) x sigmoid(centerness) (AlignPS's NMS score factor), locations
        inside the image only, the ``pre_nms_top_n`` best above ``score_thresh`` (default: the config's), boxes
        clipped to the image, NMS, the ``detections_per_img`` best."""
        config = self.config
        score_thresh = config.score_thresh if score_thresh is None else score_thresh
        results = []
        scores_all = torch.sigmoid(maps.class_logits) * torch.sigmoid(maps.centerness_logits)
        for index, (height, width) in enumerate(image_sizes):
            scores = scores_all[index]
            inside = (maps.points[:, 0] < width) & (maps.points[:, 1] < height)
            keep = torch.where(inside & (scores >= score_thresh))[0]
            keep = keep[scores[keep].topk(min(config.pre_nms_top_n, len(keep))).indices]
            boxes = distances_to_boxes(maps.points[keep], maps.distances[index, keep])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            keep, boxes = keep[non_empty], boxes[non_empty]
            chosen = batched_nms(boxes, scores[keep], torch.zeros_like(keep), config.nms_thresh)
            chosen = chosen[: config.detections_per_img]
            keep, boxes = keep[chosen], boxes[chosen]
            embeddings = F.normalize(maps.reid_features[index, keep], dim=1) * scores[keep, None]
            results.append({"boxes": boxes, "scores": scores[keep], "embeddings": embeddings})
        return results

    def box_embeddings(self, maps: HeadMaps, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """L2-normalised re-ID features (n_i, C) of given boxes (the query path): of each box, the location
        whose predicted box overlaps it most among the locations of its centre region (the positives training
        would give it; AlignPS's evaluation takes the detection that overlaps the query box most), or the
        location nearest its centre when the box is too small to contain one."""
        embeddings = []
        for index, image_boxes in enumerate(boxes):
            matched = []
            for box in image_boxes:
                region = assign_locations(maps.points, box[None], self.stride, self.config.center_sampling_radius)
                candidates = torch.where(region == 0)[0]
                if len(candidates) == 0:
                    centre = (box[:2] + box[2:]) / 2
                    candidates = (maps.points - centre).pow(2).sum(1).argmin()[None]
                predicted = distances_to_boxes(maps.points[candidates], maps.distances[index, candidates])
                matched.append(candidates[box_iou(predicted, box[None])[:, 0].argmax()])
            locations = (
                torch.stack(matched) if matched else torch.zeros(0, dtype=torch.long, device=maps.points.device)
            )
            embeddings.append(F.normalize(maps.reid_features[index, locations], dim=1))
        return embeddings
