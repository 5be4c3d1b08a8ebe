"""Configuration of the hybrid pre-training model (the paper's Fig. 3): a person search model plus the
SimSiam prediction MLP and the intra-task alignment modules, with the weights of Eq. (1)."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .configuration_person_search import PersonSearchConfig


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"PersonSearchPretrainConfig: {message}")


class PersonSearchPretrainConfig(PreTrainedConfig):
    r"""Configuration of :class:`PersonSearchPretrainModel`.

    The paper gives the structure (Eq. 1-7, Fig. 3-4) but no numbers for the parts below; each default
    is our choice and its reason is written next to it.

    Person search model
        person_search (`PersonSearchConfig | dict`, default ``PersonSearchConfig()``): the model being
            pre-trained (backbone, RPN, NAE re-ID head, OIM). For pre-training, ``num_person_ids`` must
            cover the whole unified identity space. It is the sub-config saved under "person_search" in
            config.json; ``PersonSearchModel.from_pretrained`` on a pre-training folder reads it from there.
    Loss weights (Eq. 1: L = L_ps + eta L_con + lambda L_adv)
        contrastive_loss_weight (`float`, 1.0): eta. L_con is a mean negative cosine in [-1, 1], of the
            order of the OIM and detection terms, so an even weight; the paper gives no value.
        adversarial_loss_weight (`float`, 0.1): lambda. The weight Domain Adaptive Faster R-CNN (whose
            image/instance/consistency design Eq. 7 follows) uses for its adversarial terms.
        L_ps is the MEAN of the two views' person search losses (each already the config-weighted sum of
        PersonSearchModel), so that it has the scale of one ordinary PersonSearchModel step and the NAE
        loss weights and learning rate carry over unchanged.
    SimSiam prediction MLP (Eq. 5-6)
        predictor_hidden_dim (`int`, None -> embedding_dim // 4): the bottleneck of Linear-BN-ReLU-Linear;
            SimSiam's predictor is 2048 -> 512 -> 2048, a quarter.
    Intra-task alignment modules (IAM, Eq. 7, Fig. 4)
        num_detection_domains (`int`, 2): classes of the detection IAM = number of detection source
            datasets (the paper: CrowdHuman, ECP).
        num_reid_domains (`int`, 3): classes of the re-ID IAM = number of re-ID source datasets (the paper:
            MSMT17, CUHK03, LUPerson). ``domain_ids`` of a batch index the sources WITHIN their task.
        gradient_reversal_weight (`float`, 1.0): factor of the reversed gradient (Ganin and Lempitsky) of the
            domain terms; the consistency term's gradient is scaled by the same factor without reversal, as in
            DA-Faster R-CNN's reference;
            lambda already scales the whole adversarial signal. 0 turns the reversal off (the domain
            heads still learn but the model's features receive nothing from them).
        iam_num_convs (`int`, 2): cascaded convolutions of each branch ("several" in the paper). The
            image branch uses 3x3 convolutions (each location sees its neighbours); the instance branch
            takes vectors, on which a convolution is a fully connected layer, with the same depth.
        iam_conv_channels (`int`, 256): width of the image-branch convolutions (a quarter of ResNet50's
            1024-channel C4, enough for a classifier of a handful of domains).
        iam_instance_hidden_dim (`int`, 256): width of the instance-branch layers (same reason).
        iam_consistency_weight (`float`, 1.0): weight of the image/instance consistency regularizer
            inside L_adv (Eq. 7 adds the three terms with weight 1).
        iam_negative_slope (`float`, 0.2): negative slope of the LeakyReLU between the IAM layers (the
            paper does not say; Domain Adaptive Faster R-CNN uses ReLU). Measured on the learning test's
            setting: with ReLU the reversed gradient drives every pre-activation of the domain classifier
            negative (no unit active on held-out images), after which it outputs a constant (chance
            accuracy) and passes no gradient back, so the features keep the domain cue (benchmarks/bench_alignment.py, variant relu). 0.2 is the
            usual GAN-discriminator slope; 0 gives ReLU.
    Ablation switches (the paper's Tables 5 and Fig. 6; each removes exactly its loss terms)
        use_contrastive (`bool`, True): L_con on images without real identities.
        use_detection_iam (`bool`, True): the detection IAM (encoder map, detection-head vectors) on
            images of detection sources.
        use_reid_iam (`bool`, True): the re-ID IAM (RoI-aligned person maps, re-ID embeddings) on images
            of re-ID sources.
        use_inter_task_alignment (`bool`, False): Table 5's inter-task alignment module, ADDED to whatever
            IAMs are on (the paper adds the modules "one by one"): one more IAM on the encoder map and
            detection-head vectors of EVERY image, classifying among all ``num_detection_domains +
            num_reid_domains`` sources (re-ID source j is class ``num_detection_domains + j``). The
            encoder is the part both tasks share, so that is where aligning across tasks acts. Off by
            default: the paper finds it hurts (47.08 -> 46.53 mAP).
    """

    model_type = "person_search_pretrain"
    sub_configs = {"person_search": PersonSearchConfig}

    def __init__(
        self,
        person_search: PersonSearchConfig | dict | None = None,
        contrastive_loss_weight: float = 1.0,
        adversarial_loss_weight: float = 0.1,
        predictor_hidden_dim: int | None = None,
        num_detection_domains: int = 2,
        num_reid_domains: int = 3,
        gradient_reversal_weight: float = 1.0,
        iam_num_convs: int = 2,
        iam_conv_channels: int = 256,
        iam_instance_hidden_dim: int = 256,
        iam_consistency_weight: float = 1.0,
        iam_negative_slope: float = 0.2,
        use_contrastive: bool = True,
        use_detection_iam: bool = True,
        use_reid_iam: bool = True,
        use_inter_task_alignment: bool = False,
        **kwargs,
    ):
        if person_search is None:
            person_search = PersonSearchConfig()
        elif isinstance(person_search, dict):
            person_search = PersonSearchConfig(**{k: v for k, v in person_search.items() if k != "model_type"})
        elif not isinstance(person_search, PersonSearchConfig):
            raise TypeError(
                f"PersonSearchPretrainConfig: person_search must be a PersonSearchConfig, a dict or None, "
                f"got {type(person_search).__name__}"
            )
        self.person_search = person_search
        self.contrastive_loss_weight = contrastive_loss_weight
        self.adversarial_loss_weight = adversarial_loss_weight
        self.predictor_hidden_dim = (
            max(1, person_search.embedding_dim // 4) if predictor_hidden_dim is None else predictor_hidden_dim
        )
        self.num_detection_domains = num_detection_domains
        self.num_reid_domains = num_reid_domains
        self.gradient_reversal_weight = gradient_reversal_weight
        self.iam_num_convs = iam_num_convs
        self.iam_conv_channels = iam_conv_channels
        self.iam_instance_hidden_dim = iam_instance_hidden_dim
        self.iam_consistency_weight = iam_consistency_weight
        self.iam_negative_slope = iam_negative_slope
        self.use_contrastive = use_contrastive
        self.use_detection_iam = use_detection_iam
        self.use_reid_iam = use_reid_iam
        self.use_inter_task_alignment = use_inter_task_alignment
        super().__init__(**kwargs)
        self.validate_values()

    def validate_values(self) -> None:
        """Reject impossible values with a message that names the field."""
        for name in ("contrastive_loss_weight", "adversarial_loss_weight", "gradient_reversal_weight"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(
            self.iam_consistency_weight >= 0, f"iam_consistency_weight must be >= 0, got {self.iam_consistency_weight}"
        )
        _check(
            0 <= self.iam_negative_slope < 1,
            f"iam_negative_slope must lie in [0, 1) (0 = ReLU), got {self.iam_negative_slope}",
        )
        for name in ("predictor_hidden_dim", "iam_num_convs", "iam_conv_channels", "iam_instance_hidden_dim"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_detection_domains", "num_reid_domains"):
            _check(
                getattr(self, name) >= 1,
                f"{name} must be >= 1 (the number of source datasets of that task), got {getattr(self, name)}",
            )
