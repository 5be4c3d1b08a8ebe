"""NormAwareRoIHead: NAE's second stage as one module, the "search head" of PersonSearchModel.

RoIAlign (on the encoder map) -> box head (the backbone's last stage) -> norm-aware embedding (detection
logit from its norm, re-ID feature from its direction; or, with ``detection_score="linear"``, the logit of
a linear classifier on the box head map) + box regressor -> training losses (detection BCE and smooth-L1,
OIM on the proposals matched to persons) or inference detections.

It is the seam between a person search model's first stage and whatever consumes its person features.
The contract another head family (e.g. an anchor-free AlignPS head) implements to plug into
PersonSearchModel and PersonSearchPretrainModel:

- ``forward(encoder_features, proposals, image_sizes, targets=None) -> SearchHeadOutput``: in train mode
  (targets required) the unweighted ``losses`` {"det_classification", "det_box", "reid_oim"}; in eval
  mode the per image ``detections`` {"boxes", "scores", "embeddings"}; in both the features of the
  persons it looked at (``roi_features``, ``instance_features``, ``reid_embeddings``, ``roi_image_index``),
  which the detection IAM of pre-training aligns.
- ``box_features(encoder_features, boxes, image_sizes) -> BoxFeatures``: the features of given boxes
  (query persons, the ground truth of pre-training's L_con and re-ID IAM), independent of how many boxes
  are in the batch and leaving the inference statistics untouched.
- ``check_person_ids(person_ids, where)``: reject identities the re-ID loss cannot take.

Built from public torchvision parts (BoxCoder, Matcher, box ops) and :mod:`.roi_align` (torchvision's
RoIAlign, with a fast CPU path); torchvision's RoIHeads is not used (its internals change between releases).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import Matcher

from .box_coding import Float32BoxCoder
from .configuration_person_search import PersonSearchConfig
from .detection_head import detection_losses, postprocess_detections, sample_proposals
from .norm_aware_embedding import BoxRegressor, LinearPersonClassifier, NormAwareEmbedding
from .oim import OIMLoss
from .roi_align import EncoderRoIAlign, RoIPooling

FEATURE_NAME = "encoder"
"""The name of the encoder map in the feature dict of torchvision's RPN."""


@dataclass
class SearchHeadOutput:
    """Output of :meth:`NormAwareRoIHead.forward`; N = the RoIs over the batch (sampled proposals in
    training, all proposals at inference).

    losses: training only, unweighted {"det_classification", "det_box", "reid_oim"}.
    detections: inference only, per image {"boxes" (n, 4) xyxy, "scores" (n,), "embeddings" (n, d)
        L2-normalised embedding x score}.
    roi_features: (N, C, s, s) RoI-aligned encoder maps.
    instance_features: (N, C5) average-pooled box head maps (the detection-head vectors).
    reid_embeddings: (N, d) un-normalised norm-aware embeddings.
    roi_image_index: (N,) the image each RoI belongs to.
    """

    roi_features: torch.Tensor
    instance_features: torch.Tensor
    reid_embeddings: torch.Tensor
    roi_image_index: torch.Tensor
    losses: dict[str, torch.Tensor] | None = None
    detections: list[dict[str, torch.Tensor]] | None = None


@dataclass
class BoxFeatures:
    """Output of :meth:`NormAwareRoIHead.box_features` for M given boxes: ``roi_features`` (M, C, s, s),
    ``reid_embeddings`` (M, d) un-normalised and ``embeddings`` (M, d) L2-normalised."""

    roi_features: torch.Tensor
    reid_embeddings: torch.Tensor
    embeddings: torch.Tensor


class NormAwareRoIHead(nn.Module):
    """NAE's RoI head.

    Args:
        config: the person search config (RoIAlign size, embedding size, OIM table, proposal sampling
            and post-processing settings).
        box_head: maps RoI-aligned encoder maps (N, C, s, s) to box head maps (N, C5, s', s'), called as
            ``box_head(roi_features, encoder_features, roi_pooling)`` (:class:`.roi_align.RoIPooling`: the same
            RoIAlign of other maps of the encoder map's size, for the backbone's map-first inference path). It is the backbone's last stage and stays owned (registered) by the backbone, so its weights
            keep their timm names; the head only calls it.
        encoder_channels / head_channels: C and C5.
        box_head_stride: the box head's stride, which sets the size of its maps (ceil(s / stride)), the input of
            the linear detection score (``config.detection_score="linear"``).
    """

    def __init__(
        self,
        config: PersonSearchConfig,
        box_head: Callable[[torch.Tensor], torch.Tensor],
        encoder_channels: int,
        head_channels: int,
        box_head_stride: int,
    ):
        super().__init__()
        self.config = config
        self.box_head = box_head
        self.roi_align = EncoderRoIAlign(config.roi_output_size, config.roi_sampling_ratio)
        norm_score = config.detection_score == "norm"
        self.embedding_head = NormAwareEmbedding(
            (encoder_channels, head_channels), config.embedding_dim, norm_score=norm_score
        )
        head_size = -(-config.roi_output_size // box_head_stride)
        self.person_classifier = None if norm_score else LinearPersonClassifier(head_channels * head_size**2)
        self.box_regressor = BoxRegressor(head_channels)
        self.oim = new_oim(config)
        self.box_coder = Float32BoxCoder(tuple(config.bbox_reg_weights))  # float32 boxes under bf16: box_coding
        self.proposal_matcher = Matcher(
            config.box_fg_iou_thresh, config.box_bg_iou_thresh, allow_low_quality_matches=False
        )

    def check_person_ids(self, person_ids: torch.Tensor, where: str) -> None:
        """ValueError naming ``where`` when an id is neither a row of the OIM table nor "no identity"."""
        self.oim.check_ids(person_ids, where=where)

    def _head_maps(self, encoder_features: torch.Tensor, boxes: list[torch.Tensor], image_sizes):
        pooling = RoIPooling(self.roi_align, boxes, image_sizes)
        roi_features = pooling(encoder_features)
        return roi_features, self.box_head(roi_features, encoder_features, pooling)

    def forward(
        self,
        encoder_features: torch.Tensor,
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> SearchHeadOutput:
        """Args: the encoder map (B, C, H, W); proposals, one (n_i, 4) xyxy tensor per image; the image
        sizes (height, width) before padding; targets (train mode): per image {"boxes", "person_ids"}."""
        if self.training:
            if targets is None:
                raise ValueError("NormAwareRoIHead in train mode needs targets (one dict per image), got None")
            sampled = sample_proposals(
                proposals,
                targets,
                self.proposal_matcher,
                self.box_coder,
                self.config.box_batch_size_per_image,
                self.config.box_positive_fraction,
            )
            proposals = sampled.boxes
        roi_features, head_features = self._head_maps(encoder_features, proposals, image_sizes)
        embeddings, logits, raw = self.embedding_head(roi_features, head_features)
        if self.person_classifier is not None:
            logits = self.person_classifier(head_features)
        box_deltas = self.box_regressor(head_features)
        output = SearchHeadOutput(
            roi_features=roi_features,
            instance_features=F.adaptive_avg_pool2d(head_features, 1).flatten(1),
            reid_embeddings=raw,
            roi_image_index=torch.cat(
                [torch.full((len(p),), i, device=encoder_features.device) for i, p in enumerate(proposals)]
            ),
        )
        if self.training:
            det_classification, det_box = detection_losses(
                logits, box_deltas, sampled.is_person, sampled.regression_targets
            )
            output.losses = {
                "det_classification": det_classification,
                "det_box": det_box,
                "reid_oim": self.oim(embeddings[sampled.is_person], sampled.person_ids[sampled.is_person]),
            }
        else:
            output.detections = postprocess_detections(
                proposals,
                box_deltas,
                torch.sigmoid(logits),
                embeddings,
                image_sizes,
                self.box_coder,
                self.config.box_score_thresh,
                self.config.box_nms_thresh,
                self.config.box_detections_per_img,
            )
        return output

    def box_features(
        self, encoder_features: torch.Tensor, boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> BoxFeatures:
        """Features of given boxes (one (n_i, 4) xyxy tensor per image), with gradients.

        The embedding head normalises with its running statistics without updating them, in train mode
        too: the features of a box do not depend on which other boxes share the batch (in train mode
        BatchNorm over a handful of ground-truth boxes is degenerate: with two boxes every channel is
        +-1), they are the features the inference query path computes, and the statistics inference
        uses (including the detection-score rescaler's) stay those of the proposal batches. The box
        head's BatchNorms are the backbone's, frozen by default (config.freeze_batchnorm)."""
        roi_features, head_features = self._head_maps(encoder_features, boxes, image_sizes)
        embeddings, _, raw = self.embedding_head(roi_features, head_features, use_running_stats=True)
        return BoxFeatures(roi_features=roi_features, reid_embeddings=raw, embeddings=embeddings)


def new_oim(config: PersonSearchConfig) -> OIMLoss:
    """A fresh (zero) OIM table sized and set up from ``config``."""
    return OIMLoss(
        config.embedding_dim,
        config.num_person_ids,
        config.oim_queue_size,
        scalar=config.oim_scalar,
        momentum=config.oim_momentum,
    )
