"""Configuration of the one-stage person search model (NAE-style Faster R-CNN + OIM re-ID head)."""

from __future__ import annotations

import logging

from transformers import PreTrainedConfig

from .oim import NO_IDENTITY

logger = logging.getLogger(__name__)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"PersonSearchConfig: {message}")


class PersonSearchConfig(PreTrainedConfig):
    r"""Configuration of :class:`PersonSearchModel`.

    Defaults reproduce NAE (Chen et al. 2020) as run by the person search codebases (NAE, SeqNet) on a
    ResNet50: the values the paper's downstream numbers were obtained with.

    Backbone
        backbone (`str`, "resnet50"): any timm model name that has ``features_only`` support; a torchvision
            ShuffleNet v2 name (``shufflenet_v2_x1_0`` etc.) with ``backbone_library="torchvision"``; or a
            ShuffleNet V1 name (``shufflenet_v1_g3_x1_0``: groups 3, width 1.0x; g3/g8 x 0.5/1.0/1.5/2.0) with
            ``backbone_library="builtin"``: the ShuffleNet of the paper, which neither library has.
        backbone_library (`str`, "timm"): "timm", "torchvision" or "builtin".
        box_head_stages (`int`, 1): how many of the backbone's last feature stages form the RoI box head.
            The stages before it form the encoder. 1 gives NAE's split for ResNets (stem + layer1-3 as
            encoder at stride 16, layer4 as box head) and "last stage as head" for other models.
        backbone_init (`str`, None): informational only, never read when building: what the backbone's
            weights started from before training (a timm tag such as ``resnet50.tv_in1k`` or the name of a
            weights file, without its folder), written by ``hf_personsearch.hub.load_backbone_weights`` so
            that a saved model (and its model card) tells where it came from. Building a model never reads
            or downloads backbone weights: a saved model carries its own, and starting weights are loaded
            after building with ``load_backbone_weights``.
        freeze_stem (`bool`, True): freeze the stem (every module up to the first feature stage, i.e.
            conv1/bn1 on ResNets), as NAE/SeqNet do with ImageNet weights.
        freeze_batchnorm (`bool`, True): replace every backbone BatchNorm by a frozen one (statistics and
            affine terms fixed, ``torchvision.ops.FrozenBatchNorm2d``), as NAE/SeqNet do: person search
            batches (5 images) are too small for batch statistics. Switch it off when training from random
            initialisation.
    Region proposal network (torchvision RegionProposalNetwork, with ignore regions: region_proposal.py)
        anchor_sizes (`tuple[int]`, (32, 64, 128, 256, 512)) and anchor_aspect_ratios (`tuple[float]`,
            (0.5, 1.0, 2.0)): one feature level (C4), the anchors of NAE/SeqNet.
        rpn_fg_iou_thresh (0.7) / rpn_bg_iou_thresh (0.3): Faster R-CNN's anchor labelling.
        rpn_batch_size_per_image (256) / rpn_positive_fraction (0.5): anchors sampled per image.
        rpn_pre_nms_top_n_train (12000) / rpn_post_nms_top_n_train (2000), rpn_pre_nms_top_n_test
            (6000) / rpn_post_nms_top_n_test (300): proposals kept around the RPN NMS (SeqNet values).
        rpn_nms_thresh (0.7): NMS among proposals.
    RoI box head
        roi_output_size (`int`, 14): RoIAlign output on C4; the box head (layer4) halves it to 7x7.
        roi_sampling_ratio (`int`, 2): RoIAlign sampling points per bin (torchvision default).
        box_fg_iou_thresh (0.5) / box_bg_iou_thresh (0.5): proposal labelling (Faster R-CNN).
        box_batch_size_per_image (128) / box_positive_fraction (0.5): proposals sampled per image (NAE).
        bbox_reg_weights (`tuple[float]`, (10.0, 10.0, 5.0, 5.0)): box coder weights (Faster R-CNN).
        box_score_thresh (`float`, 0.0): minimum detection score kept at inference. 0 keeps everything
            so that the detection evaluation (det_thresh 0.01) sees every box; search applies 0.5 itself.
        box_nms_thresh (`float`, 0.4): NMS among detections (NAE/SeqNet).
        box_detections_per_img (`int`, 300): detections kept per image (NAE/SeqNet).
        detection_score (`str`, "norm"): what scores a RoI as a person. "norm" is NAE: the norm of the
            embedding, rescaled by a BatchNorm1d(1). "linear" is a departure from NAE, Faster R-CNN's
            classifier (as OIM's baseline): a linear layer on the flattened box head map; the embedding then
            only serves re-ID. It exists because the norm score fails at small scale (measured on the CPU
            benchmark, test_resnet with 4x4 box head maps: detection AP 0.14, near-miss RoIs ranked at AUC
            0.52-0.57; the linear score: AP 0.48-0.61); both weight the re-ID feature by the score at inference.
    Re-ID head (norm-aware embedding + OIM)
        embedding_dim (`int`, 256): NAE's embedding, two halves of 128 from C4 and from the box head.
        num_person_ids (`int`, 5532): rows of the OIM lookup table = labeled identities (CUHK-SYSU
            train has 5532; PRW 482; pre-training: all unified identities).
        oim_queue_size (`int`, 5000): circular queue of unlabeled persons (CUHK-SYSU value; PRW uses 500).
        oim_scalar (`float`, 30.0): inverse temperature of the OIM softmax (OIM/NAE).
        oim_momentum (`float`, 0.5): LUT update ``m * LUT[y] + (1 - m) * x`` (OIM/NAE). A person without
            identity has the id ``oim.NO_IDENTITY`` (-1): it feeds the queue, never the LUT.
    Loss weights (sum = the model's ``loss``)
        loss_weight_rpn_objectness (1.0), loss_weight_rpn_box (1.0), loss_weight_det_classification (1.0),
        loss_weight_det_box (10.0: NAE's box regression weight), loss_weight_reid (1.0).

    Resizing and normalisation (``image_mean``/``image_std``) are the image processor's
    (:class:`PersonSearchImageProcessor`, saved next to the model), as in DETR. ``config.json`` files
    written before carry ``image_mean``/``image_std`` (only ever copied into that processor) and
    ``no_identity_id`` (the data always used -1): they are dropped when loaded; a ``no_identity_id``
    other than -1 is dropped with a warning.
    """

    model_type = "person_search"

    def __init__(
        self,
        backbone: str = "resnet50",
        backbone_library: str = "timm",
        box_head_stages: int = 1,
        backbone_init: str | None = None,
        freeze_stem: bool = True,
        freeze_batchnorm: bool = True,
        anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
        anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_pre_nms_top_n_train: int = 12000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 6000,
        rpn_post_nms_top_n_test: int = 300,
        rpn_nms_thresh: float = 0.7,
        roi_output_size: int = 14,
        roi_sampling_ratio: int = 2,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 128,
        box_positive_fraction: float = 0.5,
        bbox_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0),
        box_score_thresh: float = 0.0,
        box_nms_thresh: float = 0.4,
        box_detections_per_img: int = 300,
        detection_score: str = "norm",
        embedding_dim: int = 256,
        num_person_ids: int = 5532,
        oim_queue_size: int = 5000,
        oim_scalar: float = 30.0,
        oim_momentum: float = 0.5,
        loss_weight_rpn_objectness: float = 1.0,
        loss_weight_rpn_box: float = 1.0,
        loss_weight_det_classification: float = 1.0,
        loss_weight_det_box: float = 10.0,
        loss_weight_reid: float = 1.0,
        **kwargs,
    ):
        kwargs.pop("image_mean", None)
        kwargs.pop("image_std", None)
        no_identity_id = kwargs.pop("no_identity_id", NO_IDENTITY)
        if no_identity_id != NO_IDENTITY:
            logger.warning(
                "PersonSearchConfig: no_identity_id=%s is no longer a setting and is ignored: persons without "
                "identity are %d in the data and the OIM loss",
                no_identity_id,
                NO_IDENTITY,
            )
        if "backbone_weights_path" in kwargs:
            # Configs written before starting weights left the config: a path of another machine, never read.
            logger.warning(
                "PersonSearchConfig: ignoring backbone_weights_path=%r (no longer a config field: a saved model "
                "carries its weights; load starting weights with hf_personsearch.hub.load_backbone_weights)",
                kwargs.pop("backbone_weights_path"),
            )
        self.backbone = backbone
        self.backbone_library = backbone_library
        self.box_head_stages = box_head_stages
        self.backbone_init = backbone_init
        self.freeze_stem = freeze_stem
        self.freeze_batchnorm = freeze_batchnorm
        self.anchor_sizes = list(anchor_sizes)
        self.anchor_aspect_ratios = list(anchor_aspect_ratios)
        self.rpn_fg_iou_thresh = rpn_fg_iou_thresh
        self.rpn_bg_iou_thresh = rpn_bg_iou_thresh
        self.rpn_batch_size_per_image = rpn_batch_size_per_image
        self.rpn_positive_fraction = rpn_positive_fraction
        self.rpn_pre_nms_top_n_train = rpn_pre_nms_top_n_train
        self.rpn_post_nms_top_n_train = rpn_post_nms_top_n_train
        self.rpn_pre_nms_top_n_test = rpn_pre_nms_top_n_test
        self.rpn_post_nms_top_n_test = rpn_post_nms_top_n_test
        self.rpn_nms_thresh = rpn_nms_thresh
        self.roi_output_size = roi_output_size
        self.roi_sampling_ratio = roi_sampling_ratio
        self.box_fg_iou_thresh = box_fg_iou_thresh
        self.box_bg_iou_thresh = box_bg_iou_thresh
        self.box_batch_size_per_image = box_batch_size_per_image
        self.box_positive_fraction = box_positive_fraction
        self.bbox_reg_weights = list(bbox_reg_weights)
        self.box_score_thresh = box_score_thresh
        self.box_nms_thresh = box_nms_thresh
        self.box_detections_per_img = box_detections_per_img
        self.detection_score = detection_score
        self.embedding_dim = embedding_dim
        self.num_person_ids = num_person_ids
        self.oim_queue_size = oim_queue_size
        self.oim_scalar = oim_scalar
        self.oim_momentum = oim_momentum
        self.loss_weight_rpn_objectness = loss_weight_rpn_objectness
        self.loss_weight_rpn_box = loss_weight_rpn_box
        self.loss_weight_det_classification = loss_weight_det_classification
        self.loss_weight_det_box = loss_weight_det_box
        self.loss_weight_reid = loss_weight_reid
        super().__init__(**kwargs)
        self.validate_values()

    def validate_values(self) -> None:
        """Reject contradictory or impossible values with a message that names the field."""
        _check(
            self.backbone_library in ("timm", "torchvision", "builtin"),
            f"backbone_library must be 'timm', 'torchvision' or 'builtin', got {self.backbone_library!r}",
        )
        _check(
            self.detection_score in ("norm", "linear"),
            f"detection_score must be 'norm' (NAE) or 'linear', got {self.detection_score!r}",
        )
        _check(self.box_head_stages >= 1, f"box_head_stages must be >= 1, got {self.box_head_stages}")
        _check(
            len(self.anchor_sizes) > 0 and all(s > 0 for s in self.anchor_sizes),
            f"anchor_sizes must be positive, got {self.anchor_sizes}",
        )
        _check(
            len(self.anchor_aspect_ratios) > 0 and all(r > 0 for r in self.anchor_aspect_ratios),
            f"anchor_aspect_ratios must be positive, got {self.anchor_aspect_ratios}",
        )
        for prefix in ("rpn", "box"):
            fg, bg = getattr(self, f"{prefix}_fg_iou_thresh"), getattr(self, f"{prefix}_bg_iou_thresh")
            _check(
                0.0 <= bg <= fg <= 1.0,
                f"need 0 <= {prefix}_bg_iou_thresh ({bg}) <= {prefix}_fg_iou_thresh ({fg}) <= 1",
            )
            fraction = getattr(self, f"{prefix}_positive_fraction")
            _check(0.0 < fraction <= 1.0, f"{prefix}_positive_fraction must be in (0, 1], got {fraction}")
            _check(getattr(self, f"{prefix}_batch_size_per_image") > 0, f"{prefix}_batch_size_per_image must be > 0")
        for phase in ("train", "test"):
            pre, post = getattr(self, f"rpn_pre_nms_top_n_{phase}"), getattr(self, f"rpn_post_nms_top_n_{phase}")
            _check(
                0 < post <= pre, f"need 0 < rpn_post_nms_top_n_{phase} ({post}) <= rpn_pre_nms_top_n_{phase} ({pre})"
            )
        _check(
            0.0 < self.rpn_nms_thresh <= 1.0 and 0.0 < self.box_nms_thresh <= 1.0, "NMS thresholds must be in (0, 1]"
        )
        _check(0.0 <= self.box_score_thresh < 1.0, f"box_score_thresh must be in [0, 1), got {self.box_score_thresh}")
        _check(self.box_detections_per_img > 0, "box_detections_per_img must be > 0")
        _check(self.roi_output_size >= 2, f"roi_output_size must be >= 2, got {self.roi_output_size}")
        _check(len(self.bbox_reg_weights) == 4, f"bbox_reg_weights needs 4 values, got {self.bbox_reg_weights}")
        _check(
            self.embedding_dim >= 2 and self.embedding_dim % 2 == 0,
            f"embedding_dim must be even (two NAE halves), got {self.embedding_dim}",
        )
        _check(self.num_person_ids > 0, f"num_person_ids must be > 0, got {self.num_person_ids}")
        _check(self.oim_queue_size >= 0, f"oim_queue_size must be >= 0, got {self.oim_queue_size}")
        _check(0.0 <= self.oim_momentum < 1.0, f"oim_momentum must be in [0, 1), got {self.oim_momentum}")
        _check(self.oim_scalar > 0, f"oim_scalar must be > 0, got {self.oim_scalar}")
