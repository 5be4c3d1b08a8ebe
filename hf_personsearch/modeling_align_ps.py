"""AlignPSModel: AlignPS (Yan et al., CVPR 2021), the anchor-free one-stage person search model, and
ROI-AlignPS (its RoI re-ID branch, Yan et al., IJCV 2023) with ``config.use_roi_head``.

image -> backbone (C3, C4, C5) -> aligned feature aggregation (one stride-8 map, deformable convolutions)
-> AlignPS head (FCOS detection per location; the location's AFA feature is its re-ID feature; focal OIM +
triplet losses). ROI-AlignPS: the AlignPS detections are the proposals of NAE's RoI head (RoIAlign on C4,
the backbone's last stage as box head, norm-aware embedding, OIM), whose detections are the output.

The same inputs, labels and outputs as :class:`PersonSearchModel`, so the image processor, the evaluation,
the pipeline, the gallery index and the CLI take either model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .align_ps_head import AlignPSHead, FocalOIMLoss
from .aligned_feature_aggregation import AlignedFeatureAggregation
from .backbone import timm_feature_network
from .configuration_align_ps import AlignPSConfig
from .modeling_person_search import PersonSearchModel, checked_query_boxes
from .norm_aware_embedding import BoxRegressor, LinearPersonClassifier, NormAwareEmbedding
from .norm_aware_roi_head import NormAwareRoIHead
from .oim import OIMLoss

logger = logging.getLogger(__name__)

PYRAMID_LEVELS = 3
"""The backbone's last three feature stages (C3, C4, C5 on ResNets) feed the aggregation (AlignPS's FPN
``start_level=1`` of ResNet's four stages)."""


@dataclass
class AlignPSOutput(ModelOutput):
    """Output of :class:`AlignPSModel`.

    Training: ``loss`` (weighted sum) and ``loss_dict`` (unweighted terms: det_classification, det_box,
    det_centerness, reid_oim, reid_triplet; ROI-AlignPS adds roi_det_classification, roi_det_box, roi_reid_oim).
    Inference: per image ``boxes`` (n, 4) xyxy in input pixels, ``scores`` (n,) and ``embeddings`` (n, d) =
    L2-normalised re-ID feature x score (the contract of :class:`PersonSearchOutput`).
    """

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    boxes: list[torch.Tensor] | None = None
    scores: list[torch.Tensor] | None = None
    embeddings: list[torch.Tensor] | None = None


class PyramidBackbone(nn.Module):
    """A timm ``features_only`` network (``body``, timm's = torchvision's ResNet key names, so backbone
    weights load and export as for PersonSearchModel) returning its last :data:`PYRAMID_LEVELS` feature maps.

    ``box_head`` runs the last stage alone (ROI-AlignPS's RoI box head: RoI-aligned C4 -> C5 features).
    With ``freeze_batchnorm`` every BatchNorm is frozen (statistics and affine terms fixed); with
    ``freeze_stem`` the modules up to the first feature stage (conv1/bn1) do not train."""

    def __init__(self, name: str, freeze_stem: bool = True, freeze_batchnorm: bool = True):
        super().__init__()
        body = timm_feature_network(name)
        info = body.feature_info
        if len(info) < PYRAMID_LEVELS + 1:
            raise ValueError(f"backbone {name!r} has {len(info)} feature stages; AlignPS needs {PYRAMID_LEVELS + 1}")
        self.body = freeze_batch_norm_2d(body) if freeze_batchnorm else body
        self.channels = info.channels()[-PYRAMID_LEVELS:]
        self.strides = info.reduction()[-PYRAMID_LEVELS:]
        names = [name for name, _ in self.body.named_children()]
        stage_names = info.module_name()
        missing = [stage for stage in stage_names if stage not in names]
        if missing:
            raise ValueError(f"backbone {name!r}: feature stages {missing} are not top-level modules {names}")
        self._last_stage = stage_names[-1]
        if freeze_stem:
            for stem_name in names[: names.index(stage_names[0]) + 1]:
                getattr(self.body, stem_name).requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return self.body(pixel_values)[-PYRAMID_LEVELS:]

    def box_head(self, roi_features: torch.Tensor, encoder_features=None, roi_pooling=None) -> torch.Tensor:
        """The last stage on RoI-aligned features (the map and its RoIAlign, which NormAwareRoIHead passes for
        SplitBackbone's map-first inference path, are not used here)."""
        return getattr(self.body, self._last_stage)(roi_features)


class AlignPSPreTrainedModel(PreTrainedModel):
    config_class = AlignPSConfig
    base_model_prefix = "align_ps"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only the heads are (re-)initialised: the timm backbone keeps its own init or its loaded weights.
        heads = (AlignedFeatureAggregation, AlignPSHead, NormAwareEmbedding, BoxRegressor, LinearPersonClassifier)
        if isinstance(module, heads):
            module.reset_parameters()
        elif isinstance(module, OIMLoss):
            module.lut.zero_()
            module.queue.zero_()
            module.queue_head.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_batches_tracked is not None:
            module.num_batches_tracked.zero_()


class AlignPSModel(AlignPSPreTrainedModel):
    """AlignPS / ROI-AlignPS person search model.

    Inputs (as :class:`PersonSearchModel`):
        pixel_values: float (B, 3, H, W), normalised, images padded at bottom/right.
        image_sizes: int (B, 2) (height, width) of each image before padding; or pixel_mask (B, H, W);
            neither = every image fills the tensor.
        labels (training): list of B dicts {"boxes": float (n, 4) xyxy pixels, "person_ids": int (n,)}, ids in
            [0, config.num_person_ids) or ``oim.NO_IDENTITY`` (-1); optional "ignore_regions" (k, 4): locations
            inside one that are no person's positive are left out of the classification loss.
    """

    # BatchNorm's counter is absent from frozen BatchNorms: checkpoints saved with the other setting load.
    _keys_to_ignore_on_load_unexpected = [r"\.num_batches_tracked$"]
    _keys_to_ignore_on_load_missing = [r"\.num_batches_tracked$"]

    # Input and label checks are PersonSearchModel's, so both families accept exactly the same batches.
    _image_sizes = PersonSearchModel._image_sizes
    _check_labels = PersonSearchModel._check_labels

    def __init__(self, config: AlignPSConfig):
        super().__init__(config)
        self.backbone = PyramidBackbone(
            config.backbone, freeze_stem=config.freeze_stem, freeze_batchnorm=config.freeze_batchnorm
        )
        self.aggregation = AlignedFeatureAggregation(
            self.backbone.channels, config.fpn_channels, deformable=config.afa_deformable
        )
        self.search_head = AlignPSHead(config, stride=self.backbone.strides[0])
        self.roi_head = None
        if config.use_roi_head:
            roi_config = config.roi_head_config()
            self.roi_head = NormAwareRoIHead(
                roi_config,
                self.backbone.box_head,
                self.backbone.channels[-2],
                self.backbone.channels[-1],
                self.backbone.strides[-1] // self.backbone.strides[-2],
            )
        self.post_init()

    def resize_oim(self, num_person_ids: int | None = None, queue_size: int | None = None) -> None:
        """Fresh zero OIM tables of a new size (the target dataset's identities); None keeps a size."""
        old = (self.config.num_person_ids, self.config.oim_queue_size)
        new = (old[0] if num_person_ids is None else num_person_ids, old[1] if queue_size is None else queue_size)
        if new == old:
            return
        self.config.num_person_ids, self.config.oim_queue_size = new
        self.config.validate_values()
        config = self.config
        lut = self.search_head.oim.lut
        self.search_head.oim = FocalOIMLoss(
            config.fpn_channels, *new, config.oim_scalar, config.oim_momentum, config.oim_focal_gamma
        ).to(device=lut.device, dtype=lut.dtype)
        if self.roi_head is not None:
            roi_config = config.roi_head_config()
            self.roi_head.oim = OIMLoss(
                roi_config.embedding_dim, *new, scalar=roi_config.oim_scalar, momentum=roi_config.oim_momentum
            ).to(device=lut.device, dtype=lut.dtype)
        logger.warning("OIM tables re-sized from %d identities / queue %d to %d / %d: fresh zero tables", *old, *new)

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        return_dict: bool = True,
    ) -> AlignPSOutput:
        sizes = self._image_sizes(pixel_values, image_sizes, pixel_mask)
        if self.training:
            labels = self._check_labels(labels, sizes, pixel_values.device)
        pyramid = self.backbone(pixel_values)
        maps = self.search_head.maps(self.aggregation(pyramid))
        output = AlignPSOutput()
        if self.training:
            output.loss_dict = self.search_head.losses(maps, labels)
        if self.roi_head is not None:
            # ROI-AlignPS: AlignPS's best detections (after NMS, no gradient through them) are the RoI head's
            # proposals, with no score threshold, as RPN proposals: the RoI head scores them itself.
            proposals = [d["boxes"] for d in self.search_head.detections(maps, sizes, score_thresh=0.0)]
            head = self.roi_head(pyramid[-2], proposals, sizes, labels if self.training else None)
            if self.training:
                output.loss_dict.update({f"roi_{name}": value for name, value in head.losses.items()})
            detections = head.detections
        elif not self.training:
            detections = self.search_head.detections(maps, sizes)
        if self.training:
            output.loss = self.weighted_loss(output.loss_dict)
        else:
            output.boxes = [d["boxes"] for d in detections]
            output.scores = [d["scores"] for d in detections]
            output.embeddings = [d["embeddings"] for d in detections]
        return output if return_dict else output.to_tuple()

    def weighted_loss(self, loss_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's total loss: each term times its config weight (the RoI head's terms with its own)."""
        config = self.config
        weights = {
            "det_classification": config.loss_weight_classification,
            "det_box": config.loss_weight_box,
            "det_centerness": config.loss_weight_centerness,
            "reid_oim": config.loss_weight_reid,
            "reid_triplet": config.loss_weight_triplet,
        }
        if self.roi_head is not None:
            roi_config = self.roi_head.config
            weights.update(
                roi_det_classification=roi_config.loss_weight_det_classification,
                roi_det_box=roi_config.loss_weight_det_box,
                roi_reid_oim=roi_config.loss_weight_reid,
            )
        return sum(weights[name] * loss_dict[name] for name in weights)

    @torch.no_grad()
    def embed_boxes(
        self,
        pixel_values: torch.Tensor,
        boxes: list[torch.Tensor],
        image_sizes: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """The query path: L2-normalised embeddings (n_i, d) of given boxes (xyxy in input pixels). AlignPS:
        the AFA feature of the location whose predicted box overlaps the given box most (near its centre);
        ROI-AlignPS: the RoI head's embedding of the box. Runs in eval mode whatever the model's mode."""
        sizes = self._image_sizes(pixel_values, image_sizes, pixel_mask)
        boxes = checked_query_boxes(boxes, len(sizes), pixel_values)
        was_training = self.training
        self.eval()
        try:
            pyramid = self.backbone(pixel_values)
            if self.roi_head is not None:
                embeddings = self.roi_head.box_features(pyramid[-2], boxes, sizes).embeddings
                return list(embeddings.split([len(b) for b in boxes]))
            return self.search_head.box_embeddings(self.search_head.maps(self.aggregation(pyramid)), boxes)
        finally:
            self.train(was_training)
