"""Configuration of AlignPS and ROI-AlignPS (Yan et al., CVPR 2021 / IJCV 2023), the anchor-free downstream models
the paper fine-tunes from its pre-trained ResNet50 (Tables 2, 3 and 6)."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .configuration_person_search import PersonSearchConfig

ROI_HEAD_DEFAULTS = {
    # The RoI head of ROI-AlignPS is NAE's (norm-aware embedding + OIM on RoIAligned C4, the last stage as box
    # head): its PersonSearchConfig defaults hold, except the proposal budget (AlignPS already gives at most
    # detections_per_img boxes per image, so there is nothing to sample down to 128 from).
    "box_batch_size_per_image": 128,
}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"AlignPSConfig: {message}")


class AlignPSConfig(PreTrainedConfig):
    r"""Configuration of :class:`AlignPSModel` (AlignPS, and ROI-AlignPS with ``use_roi_head=True``).

    Every default comes from the public AlignPS code (github.com/daodaofr/AlignPS, mmdetection configs
    ``configs/fcos/prw_base_focal_labelnorm_sub_ldcn_fg15_wd1-3.py`` for PRW,
    ``configs/fcos/fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_dcn_4x4_1x_cuhk_reid_1500_stage1_fpncat
    _dcn_epoch24_multiscale_focal_x4_bg-2_lconv3dcn_sub_triqueue_dcn0.py`` for CUHK-SYSU, and the heads they name)
    unless it says otherwise.

    Backbone (the part AlignPS shares with NAE and the pre-trained model)
        backbone (`str`, "resnet50"): a timm model name with ``features_only`` support; its last three feature
            stages (C3, C4, C5 at strides 8, 16, 32 on ResNets) feed the aggregation.
        backbone_library (`str`, "timm"): only "timm" (the pyramid needs timm's ``feature_info``).
        backbone_init (`str`, None): informational, as in PersonSearchConfig: where the backbone's weights came
            from, written by ``hf_personsearch.hub.load_backbone_weights``.
        freeze_stem (`bool`, True): AlignPS's ``frozen_stages=1`` freezes the stem and layer1; we freeze the stem
            (conv1/bn1) as NAE does, so that both downstream families train the same backbone parameters.
        freeze_batchnorm (`bool`, True): AlignPS's ``norm_cfg=dict(type='BN', requires_grad=False),
            norm_eval=True``. Switch it off when training from random initialisation.
    Aligned feature aggregation (AFA, neck ``FPNDcnLconv3Dcn``)
        fpn_channels (`int`, 256): channels of every aggregated level and of the re-ID feature (FPN out_channels).
        afa_deformable (`bool`, True): 3x3 deformable convolutions for the lateral and the output convolutions
            (the "dcn" of AFA: the re-ID feature of a location is sampled where the person is).
    Detection head (FCOS, one level: the AFA output at stride 8)
        head_num_convs (`int`, 4): convolutions of the classification and regression towers (stacked_convs).
        head_norm_groups (`int`, 32): GroupNorm groups in the towers (the "gn-head" of the config names).
        head_prior_probability (`float`, 0.01): initial person probability of the classifier (FCOS/RetinaNet).
        center_sampling_radius (`float`, 1.5): a location is a positive of a person when it lies within
            radius x stride of the box centre (and inside the box): ``center_sampling=True``, FCOS's radius.
        focal_alpha (`float`, 0.25) / focal_gamma (`float`, 2.0): sigmoid focal loss of the classifier.
        score_thresh (`float`, 0.05): minimum score (classification x centerness) kept at inference.
        pre_nms_top_n (`int`, 1000): highest-scoring locations kept before NMS (nms_pre).
        nms_thresh (`float`, 0.5): NMS among detections (test_cfg nms iou_threshold).
        detections_per_img (`int`, 100): detections kept per image (max_per_img).
    Re-ID (the AFA feature of the positive locations; labeled matching + unlabeled queue, focal weighting)
        num_person_ids (`int`, 5532): lookup table rows (CUHK-SYSU; fine-tuning sets it from the data).
        oim_queue_size (`int`, 5000): queue of unlabeled persons (CUHK-SYSU 5000, PRW 500).
        oim_scalar (`float`, 10.0): inverse temperature of both tables (the CUHK-SYSU head scales both by 10;
            the PRW head scales the table by 15 and the queue by 10: one value here, the PRW config sets 15).
        oim_momentum (`float`, 0.5): lookup table update ``m * LUT[y] + (1 - m) * x``, renormalised
            (``LabeledMatchingLayerNorm``).
        oim_focal_gamma (`float`, 2.0): the re-ID loss is ``-(1 - p)^gamma log p`` over the OIM softmax
            (``focal_p_i = (1 - p_i)**2 * p_i.log()``); 0 gives the plain OIM cross-entropy.
        triplet_margin (`float`, 0.3): batch-hard triplet loss (``TripletLossFilter``) over the labeled positive
            features and the lookup table rows of their identities.
    Loss weights (sum = the model's ``loss``)
        loss_weight_classification (1.0), loss_weight_box (1.0: GIoU), loss_weight_centerness (1.0),
        loss_weight_reid (1.0), loss_weight_triplet (1.0: the CUHK-SYSU head; the PRW head has none, its config
        sets 0).
    ROI-AlignPS
        use_roi_head (`bool`, False): add ROI-AlignPS's RoI re-ID branch: the AlignPS detections are the
            proposals of NAE's RoI head (RoIAlign on C4, the backbone's last stage as box head, norm-aware
            embedding, OIM), whose boxes, scores and embeddings become the model's output.
        roi_head (`dict`, {}): PersonSearchConfig arguments of that RoI head (RoIAlign size, proposal sampling,
            embedding size, NMS...); its OIM table follows ``num_person_ids`` / ``oim_queue_size``.

    Deviations from the public code, each for a stated reason: the head predicts on the AFA output only (the
    public code also runs the head on four coarser FPN levels during training, where no person is ever
    assigned, so they only add background locations to the focal loss); the towers are torchvision's FCOS
    towers (the public code makes the last tower convolution deformable); the lookup table and queue are this
    package's OIM tables (renormalised, the whole feature in the queue, synchronised across processes); the
    re-ID loss is averaged over labeled locations (the public code averages over all positive locations,
    counting unlabeled ones as 0); ROI-AlignPS's box head shares the last stage's weights with the backbone
    (the public code keeps a second copy initialised from the same ImageNet weights).
    """

    model_type = "align_ps"

    def __init__(
        self,
        backbone: str = "resnet50",
        backbone_library: str = "timm",
        backbone_init: str | None = None,
        freeze_stem: bool = True,
        freeze_batchnorm: bool = True,
        fpn_channels: int = 256,
        afa_deformable: bool = True,
        head_num_convs: int = 4,
        head_norm_groups: int = 32,
        head_prior_probability: float = 0.01,
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        num_person_ids: int = 5532,
        oim_queue_size: int = 5000,
        oim_scalar: float = 10.0,
        oim_momentum: float = 0.5,
        oim_focal_gamma: float = 2.0,
        triplet_margin: float = 0.3,
        loss_weight_classification: float = 1.0,
        loss_weight_box: float = 1.0,
        loss_weight_centerness: float = 1.0,
        loss_weight_reid: float = 1.0,
        loss_weight_triplet: float = 1.0,
        use_roi_head: bool = False,
        roi_head: dict | None = None,
        **kwargs,
    ):
        self.backbone = backbone
        self.backbone_library = backbone_library
        self.backbone_init = backbone_init
        self.freeze_stem = freeze_stem
        self.freeze_batchnorm = freeze_batchnorm
        self.fpn_channels = fpn_channels
        self.afa_deformable = afa_deformable
        self.head_num_convs = head_num_convs
        self.head_norm_groups = head_norm_groups
        self.head_prior_probability = head_prior_probability
        self.center_sampling_radius = center_sampling_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.score_thresh = score_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.num_person_ids = num_person_ids
        self.oim_queue_size = oim_queue_size
        self.oim_scalar = oim_scalar
        self.oim_momentum = oim_momentum
        self.oim_focal_gamma = oim_focal_gamma
        self.triplet_margin = triplet_margin
        self.loss_weight_classification = loss_weight_classification
        self.loss_weight_box = loss_weight_box
        self.loss_weight_centerness = loss_weight_centerness
        self.loss_weight_reid = loss_weight_reid
        self.loss_weight_triplet = loss_weight_triplet
        self.use_roi_head = use_roi_head
        self.roi_head = dict(roi_head or {})
        super().__init__(**kwargs)
        self.validate_values()

    def roi_head_config(self) -> PersonSearchConfig:
        """The PersonSearchConfig of ROI-AlignPS's RoI head (its OIM table sized as the AlignPS one)."""
        values = {**ROI_HEAD_DEFAULTS, **self.roi_head}
        values.update(backbone=self.backbone, num_person_ids=self.num_person_ids, oim_queue_size=self.oim_queue_size)
        return PersonSearchConfig(**values)

    @property
    def embedding_dim(self) -> int:
        """Size of the output embeddings: the AFA feature (AlignPS) or the RoI head's embedding (ROI-AlignPS)."""
        return self.roi_head_config().embedding_dim if self.use_roi_head else self.fpn_channels

    def validate_values(self) -> None:
        """Reject impossible values with a message that names the field."""
        _check(self.backbone_library == "timm", f"backbone_library must be 'timm', got {self.backbone_library!r}")
        _check(self.fpn_channels > 0, f"fpn_channels must be > 0, got {self.fpn_channels}")
        _check(self.head_num_convs >= 0, f"head_num_convs must be >= 0, got {self.head_num_convs}")
        _check(
            self.head_norm_groups > 0 and self.fpn_channels % self.head_norm_groups == 0,
            f"fpn_channels ({self.fpn_channels}) must be a multiple of head_norm_groups ({self.head_norm_groups})",
        )
        _check(
            0.0 < self.head_prior_probability < 1.0,
            f"head_prior_probability must be in (0, 1), got {self.head_prior_probability}",
        )
        _check(
            self.center_sampling_radius > 0, f"center_sampling_radius must be > 0, got {self.center_sampling_radius}"
        )
        _check(0.0 <= self.focal_alpha <= 1.0, f"focal_alpha must be in [0, 1], got {self.focal_alpha}")
        _check(self.focal_gamma >= 0 and self.oim_focal_gamma >= 0, "focal_gamma and oim_focal_gamma must be >= 0")
        _check(0.0 <= self.score_thresh < 1.0, f"score_thresh must be in [0, 1), got {self.score_thresh}")
        _check(self.pre_nms_top_n > 0, f"pre_nms_top_n must be > 0, got {self.pre_nms_top_n}")
        _check(0.0 < self.nms_thresh <= 1.0, f"nms_thresh must be in (0, 1], got {self.nms_thresh}")
        _check(self.detections_per_img > 0, f"detections_per_img must be > 0, got {self.detections_per_img}")
        _check(self.num_person_ids > 0, f"num_person_ids must be > 0, got {self.num_person_ids}")
        _check(self.oim_queue_size >= 0, f"oim_queue_size must be >= 0, got {self.oim_queue_size}")
        _check(self.oim_scalar > 0, f"oim_scalar must be > 0, got {self.oim_scalar}")
        _check(0.0 <= self.oim_momentum < 1.0, f"oim_momentum must be in [0, 1), got {self.oim_momentum}")
        _check(self.triplet_margin >= 0, f"triplet_margin must be >= 0, got {self.triplet_margin}")
        for name in ("classification", "box", "centerness", "reid", "triplet"):
            weight = getattr(self, f"loss_weight_{name}")
            _check(weight >= 0, f"loss_weight_{name} must be >= 0, got {weight}")
        try:
            self.roi_head_config()
        except (TypeError, ValueError) as error:
            raise ValueError(f"AlignPSConfig: roi_head: {error}") from error
