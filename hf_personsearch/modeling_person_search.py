"""PersonSearchModel: NAE-style one-stage person search (Faster R-CNN detector + norm-aware re-ID head).

image -> encoder (backbone up to stride 16) -> RPN proposals -> search head (NormAwareRoIHead: RoIAlign
14x14 on the encoder map -> box head (the backbone's last stage) -> norm-aware embedding (detection score
from its norm, re-ID feature from its direction) + box regressor; OIM loss on the embeddings of
proposals matched to persons).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbone import SplitBackbone
from .configuration_person_search import PersonSearchConfig
from .norm_aware_embedding import BoxRegressor, LinearPersonClassifier, NormAwareEmbedding
from .norm_aware_roi_head import FEATURE_NAME, NormAwareRoIHead, new_oim
from .oim import OIMLoss
from .region_proposal import IgnoreRegionRPN, checked_ignore_regions

LEGACY_KEY_MAPPING = {
    r"^(embedding_head|box_regressor|oim)\.": r"search_head.\1.",
    r"^person_search\.(embedding_head|box_regressor|oim)\.": r"person_search.search_head.\1.",
}
"""Checkpoints saved before the search head became one module hold its parts at the top level
(``embedding_head.*``, ``box_regressor.*``, ``oim.lut``; with the ``person_search.`` prefix in a
pre-training checkpoint): ``from_pretrained`` renames them to ``search_head.*``. (transformers' renaming
supports one capture group, ``\1``, per pattern.)"""

logger = logging.getLogger(__name__)


@dataclass
class PersonSearchOutput(ModelOutput):
    """Output of :class:`PersonSearchModel`.

    Training: ``loss`` (weighted sum) and ``loss_dict`` (unweighted terms: rpn_objectness, rpn_box,
    det_classification, det_box, reid_oim). Inference: per image ``boxes`` (n, 4) xyxy in the input
    pixel coordinates, ``scores`` (n,) and ``embeddings`` (n, d) = L2-normalised embedding x score.
    With ``output_features=True`` also the intermediate features used by pre-training:
    ``encoder_features`` (B, C, H/16, W/16) and the search head's features of its N RoIs (sampled
    proposals in training, all proposals at inference): ``roi_features`` (N, C, 14, 14) RoI-aligned maps,
    ``instance_features`` (N, C5) pooled box head vectors, ``reid_embeddings`` (N, d) un-normalised
    embeddings, ``roi_image_index`` (N,) the image each RoI belongs to.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    boxes: list[torch.Tensor] | None = None
    scores: list[torch.Tensor] | None = None
    embeddings: list[torch.Tensor] | None = None
    encoder_features: torch.Tensor | None = None
    roi_features: torch.Tensor | None = None
    instance_features: torch.Tensor | None = None
    reid_embeddings: torch.Tensor | None = None
    roi_image_index: torch.Tensor | None = None


def checked_query_boxes(boxes: list, num_images: int, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The query boxes of ``embed_boxes`` (one list per image, xyxy) as (n_i, 4) tensors on the pixels' device and
    dtype; ValueError naming the image and box when the lists do not match the images or a box is empty or not
    finite. Shared by every model family's query path."""
    if len(boxes) != num_images:
        raise ValueError(f"embed_boxes: {len(boxes)} box lists for {num_images} images")
    boxes = [torch.as_tensor(b, dtype=pixel_values.dtype, device=pixel_values.device).reshape(-1, 4) for b in boxes]
    for index, image_boxes in enumerate(boxes):
        bad = (image_boxes[:, 2] <= image_boxes[:, 0]) | (image_boxes[:, 3] <= image_boxes[:, 1])
        bad |= ~torch.isfinite(image_boxes).all(1)
        if bad.any():
            raise ValueError(f"embed_boxes: image {index} box {image_boxes[bad][0].tolist()} is empty or not finite")
    return boxes


class PersonSearchPreTrainedModel(PreTrainedModel):
    config_class = PersonSearchConfig
    base_model_prefix = "person_search"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only the heads are (re-)initialised: the timm/torchvision backbone keeps its own init or its
        # loaded weights, and generic Linear/Conv modules are left to their owners below.
        if isinstance(module, (NormAwareEmbedding, BoxRegressor, LinearPersonClassifier)):
            module.reset_parameters()
        elif isinstance(module, RPNHead):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.zeros_(layer.bias)
        elif isinstance(module, OIMLoss):
            module.lut.zero_()
            module.queue.zero_()
            module.queue_head.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_batches_tracked is not None:
            # A checkpoint saved with frozen BatchNorms has no counter: start it at 0 instead of garbage.
            module.num_batches_tracked.zero_()


class PersonSearchModel(PersonSearchPreTrainedModel):
    """One-stage person search model (NAE).

    Inputs:
        pixel_values: float (B, 3, H, W), normalised, images padded at bottom/right.
        image_sizes: int (B, 2) (height, width) of each image before padding; or pixel_mask (B, H, W)
            with 1 on valid pixels; neither = every image fills the tensor.
        labels (training): list of B dicts {"boxes": float (n, 4) xyxy pixels, "person_ids": int (n,)},
            person ids in [0, config.num_person_ids) or ``oim.NO_IDENTITY`` (-1); n may be 0. Optional key
            "ignore_regions": float (k, 4) xyxy pixels (absent = none): RPN anchors and RoI proposals with
            at least half their own area inside one are neither positives nor negatives unless they match a
            person (crowds and depictions the dataset does not annotate person by person).
    """

    # A pre-training checkpoint (PersonSearchPretrainModel) also holds the SimSiam predictor and the
    # alignment modules: loading the person search model from it drops them on purpose, silently.
    # BatchNorm's num_batches_tracked counter is absent from a frozen BatchNorm (freeze_batchnorm=True) and
    # read by no BatchNorm of the model (momentum is set): checkpoints saved with the other setting load.
    _keys_to_ignore_on_load_unexpected = [
        r"(^|\.)(prediction_mlp|detection_alignment|reid_alignment|inter_task_alignment)\.",
        r"\.num_batches_tracked$",
    ]
    _keys_to_ignore_on_load_missing = [r"\.num_batches_tracked$"]

    def __init__(self, config: PersonSearchConfig):
        super().__init__(config)
        self.backbone = SplitBackbone(
            config.backbone,
            library=config.backbone_library,
            box_head_stages=config.box_head_stages,
            freeze_stem=config.freeze_stem,
            freeze_batchnorm=config.freeze_batchnorm,
        )
        anchor_generator = AnchorGenerator(
            sizes=(tuple(config.anchor_sizes),), aspect_ratios=(tuple(config.anchor_aspect_ratios),)
        )
        self.rpn = IgnoreRegionRPN(
            anchor_generator,
            RPNHead(self.backbone.encoder_channels, anchor_generator.num_anchors_per_location()[0]),
            fg_iou_thresh=config.rpn_fg_iou_thresh,
            bg_iou_thresh=config.rpn_bg_iou_thresh,
            batch_size_per_image=config.rpn_batch_size_per_image,
            positive_fraction=config.rpn_positive_fraction,
            pre_nms_top_n={"training": config.rpn_pre_nms_top_n_train, "testing": config.rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": config.rpn_post_nms_top_n_train, "testing": config.rpn_post_nms_top_n_test},
            nms_thresh=config.rpn_nms_thresh,
        )
        self.search_head = NormAwareRoIHead(
            self.config,
            self.backbone.box_head,
            self.backbone.encoder_channels,
            self.backbone.head_channels,
            self.backbone.box_head_stride,
        )
        self.post_init()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        backbone_only: bool = False,
        num_person_ids: int | None = None,
        oim_queue_size: int | None = None,
        **kwargs,
    ):
        """``PreTrainedModel.from_pretrained``, also from a pre-training checkpoint (PersonSearchPretrainModel
        folder: its "person_search" sub-config and weights are used, the predictor/IAM weights dropped).

        Args:
            backbone_only: keep only the backbone's weights and re-initialise the RPN, the detection and
                re-ID heads and the OIM tables (the paper's Fig. 5 "backbone only" comparison).
            num_person_ids / oim_queue_size: the target dataset's identity count / queue size. When they
                differ from the checkpoint's, the OIM tables are replaced by fresh (zero) ones of the new
                size (see :meth:`resize_oim`), instead of a size-mismatch error.

        Checkpoints of the earlier layout (search head parts at the top level) load through
        ``LEGACY_KEY_MAPPING``.
        """
        kwargs.setdefault("key_mapping", LEGACY_KEY_MAPPING)
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model.resize_oim(num_person_ids, oim_queue_size)
        if backbone_only:
            for part in (model.rpn, model.search_head):
                part.apply(model._init_weights)
            logger.warning(
                "%s: backbone_only=True, kept the backbone weights and re-initialised the RPN and the search head "
                "(embedding head, box regressor, OIM tables)",
                pretrained_model_name_or_path,
            )
        return model

    def resize_oim(self, num_person_ids: int | None = None, queue_size: int | None = None) -> None:
        """Replace the OIM lookup table / queue by fresh zero tables of a new size (a target dataset with
        another number of identities: the pre-training identities do not carry over). None keeps a size;
        equal sizes keep the current tables."""
        old = (self.config.num_person_ids, self.config.oim_queue_size)
        new = (old[0] if num_person_ids is None else num_person_ids, old[1] if queue_size is None else queue_size)
        if new == old:
            return
        self.config.num_person_ids, self.config.oim_queue_size = new
        self.config.validate_values()
        lut = self.search_head.oim.lut
        self.search_head.oim = new_oim(self.config).to(device=lut.device, dtype=lut.dtype)
        logger.warning(
            "OIM table re-sized from %d identities / queue %d to %d identities / queue %d: fresh zero tables "
            "(the checkpoint's identities do not carry over)",
            *old,
            *new,
        )

    # ------------------------------------------------------------------ inputs
    def _image_sizes(self, pixel_values, image_sizes=None, pixel_mask=None) -> list[tuple[int, int]]:
        if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a float tensor (batch, 3, height, width), got {shape}")
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be floating point (normalised images), got {pixel_values.dtype}")
        batch, _, height, width = pixel_values.shape
        if image_sizes is None and pixel_mask is not None:
            image_sizes = torch.stack([pixel_mask.any(2).sum(1), pixel_mask.any(1).sum(1)], dim=1)
        if image_sizes is None:
            return [(height, width)] * batch
        sizes = [(int(h), int(w)) for h, w in torch.as_tensor(image_sizes).reshape(-1, 2).tolist()]
        if len(sizes) != batch:
            raise ValueError(f"image_sizes has {len(sizes)} entries for a batch of {batch} images")
        for index, (h, w) in enumerate(sizes):
            if not (0 < h <= height and 0 < w <= width):
                raise ValueError(
                    f"image {index}: size {(h, w)} does not fit the pixel_values of size {(height, width)}"
                )
        return sizes

    def _check_labels(self, labels, image_sizes, device) -> list[dict[str, torch.Tensor]]:
        if labels is None or len(labels) != len(image_sizes):
            count = None if labels is None else len(labels)
            raise ValueError(f"training needs labels: one dict per image ({len(image_sizes)}), got {count}")
        checked = []
        for index, (target, (height, width)) in enumerate(zip(labels, image_sizes)):
            boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            person_ids = torch.as_tensor(target["person_ids"], dtype=torch.long, device=device).reshape(-1)
            if boxes.shape[0] != person_ids.shape[0]:
                raise ValueError(f"labels[{index}]: {boxes.shape[0]} boxes but {person_ids.shape[0]} person_ids")
            if not torch.isfinite(boxes).all():
                bad = boxes[~torch.isfinite(boxes).all(1)][0].tolist()
                raise ValueError(f"labels[{index}]: box {bad} is not finite")
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if empty.any():
                raise ValueError(
                    f"labels[{index}]: box {target['boxes'][int(torch.where(empty)[0][0])]} has no area inside the "
                    f"{width}x{height} image (expected x1 < x2, y1 < y2)"
                )
            self.search_head.check_person_ids(person_ids, where=f"labels[{index}]")
            regions = checked_ignore_regions(target, f"labels[{index}]", (height, width), device)
            checked.append({**target, "boxes": boxes, "person_ids": person_ids, "ignore_regions": regions})
        return checked

    # ------------------------------------------------------------------ parts
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder feature map (stride 16 for the default split)."""
        return self.backbone.encode(pixel_values)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_features: bool = False,
        return_dict: bool = True,
    ) -> PersonSearchOutput:
        sizes = self._image_sizes(pixel_values, image_sizes, pixel_mask)
        if self.training:
            labels = self._check_labels(labels, sizes, pixel_values.device)
        encoder_features = self.encode(pixel_values)
        images = ImageList(pixel_values, sizes)
        rpn_targets = (
            [{"boxes": target["boxes"], "ignore_regions": target["ignore_regions"]} for target in labels]
            if self.training
            else None
        )
        proposals, rpn_losses = self.rpn(images, {FEATURE_NAME: encoder_features}, rpn_targets)
        head = self.search_head(encoder_features, proposals, sizes, labels if self.training else None)
        output = PersonSearchOutput()
        if self.training:
            output.loss_dict = {
                "rpn_objectness": rpn_losses["loss_objectness"],
                "rpn_box": rpn_losses["loss_rpn_box_reg"],
                **head.losses,
            }
            output.loss = self.weighted_loss(output.loss_dict)
        else:
            output.boxes = [d["boxes"] for d in head.detections]
            output.scores = [d["scores"] for d in head.detections]
            output.embeddings = [d["embeddings"] for d in head.detections]
        if output_features:
            output.encoder_features = encoder_features
            output.roi_features = head.roi_features
            output.instance_features = head.instance_features
            output.reid_embeddings = head.reid_embeddings
            output.roi_image_index = head.roi_image_index
        return output if return_dict else output.to_tuple()

    def weighted_loss(self, loss_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's total loss: each term times its config weight."""
        config = self.config
        weights = {
            "rpn_objectness": config.loss_weight_rpn_objectness,
            "rpn_box": config.loss_weight_rpn_box,
            "det_classification": config.loss_weight_det_classification,
            "det_box": config.loss_weight_det_box,
            "reid_oim": config.loss_weight_reid,
        }
        return sum(weights[name] * loss_dict[name] for name in weights)

    @torch.no_grad()
    def embed_boxes(
        self,
        pixel_values: torch.Tensor,
        boxes: list[torch.Tensor],
        image_sizes: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """The query path: L2-normalised embeddings (n_i, d) of given boxes (xyxy in input pixels), e.g.
        the ground-truth box of a query person. Runs in eval mode whatever the model's mode."""
        sizes = self._image_sizes(pixel_values, image_sizes, pixel_mask)
        boxes = checked_query_boxes(boxes, len(sizes), pixel_values)
        was_training = self.training
        self.eval()  # the backbone's BatchNorms too, when they are not frozen
        try:
            embeddings = self.search_head.box_features(self.encode(pixel_values), boxes, sizes).embeddings
        finally:
            self.train(was_training)
        return list(embeddings.split([len(b) for b in boxes]))
