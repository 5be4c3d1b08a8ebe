"""PersonSearchPretrainModel: the paper's hybrid pre-training (Fig. 3).

Two augmented views of every image go through the shared person search model (NAE). The loss is
Eq. (1), ``L = L_ps + eta * L_con + lambda * L_adv``:

- L_ps (Eq. 2-4): RPN + detection head + OIM on each view; the mean of the two views.
- L_con (Eq. 5-6): SimSiam on the re-ID features h of the ground-truth persons present in both views of
  images without real identities (detection images, unlabeled re-ID crops); z = prediction MLP(h).
  The ground-truth features come from the search head's ``box_features`` (normalised with the running
  statistics, so they do not depend on how many persons the batch holds).
- L_adv (Eq. 7): the detection IAM on (encoder map, detection-head vectors) of images from detection
  sources, the re-ID IAM on (RoI-aligned person maps, re-ID embeddings) of images from re-ID sources;
  optionally the inter-task module (Table 5) on every image. Each IAM term is the mean of the two views.

After pre-training, ``export_person_search_model(dir)`` writes the downstream PersonSearchModel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_person_search_pretrain import PersonSearchPretrainConfig
from .intra_task_alignment import AlignmentOutput, IntraTaskAlignmentModule
from .modeling_person_search import LEGACY_KEY_MAPPING, PersonSearchModel, PersonSearchPreTrainedModel
from .simsiam import PredictionMLP, contrastive_loss

PS_TERMS = ("rpn_objectness", "rpn_box", "det_classification", "det_box", "reid_oim")
"""The unweighted person search terms of each view (PersonSearchModel's loss_dict), averaged over views."""

ALIGNMENT_MODULES = {"det": "detection_alignment", "reid": "reid_alignment", "inter": "inter_task_alignment"}
"""loss_dict prefix (adv_<prefix>_img ...) -> attribute holding that alignment module."""


@dataclass
class PersonSearchPretrainOutput(ModelOutput):
    """Output of :class:`PersonSearchPretrainModel` (training only).

    loss: ``ps + contrastive_loss_weight * con + adversarial_loss_weight * adv``.
    loss_dict: every term, for logging:
        rpn_objectness, rpn_box, det_classification, det_box, reid_oim: the person search terms
            (unweighted, mean of the two views);
        ps: L_ps, the mean of the two views' config-weighted person search losses;
        con: L_con (only when use_contrastive);
        adv_<m>_img, adv_<m>_ins, adv_<m>_consistency for m in det / reid / inter (only for the modules
            switched on): the unweighted terms of Eq. (7), mean of the two views;
        adv: L_adv = sum over modules of img + ins + iam_consistency_weight * consistency (only when a
            module is on).
    alignment_accuracy: ``<m>_img`` / ``<m>_ins`` fraction of locations / instances whose domain the
        module's classifier predicts correctly (a monitor of the adversarial game: near 1 means the
        features still tell the sources apart).
    num_contrastive_persons: persons that entered L_con (present in both views of an image without
        real identities).
    """

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    alignment_accuracy: dict[str, torch.Tensor] | None = None
    num_contrastive_persons: int | None = None


class PersonSearchPretrainPreTrainedModel(PreTrainedModel):
    config_class = PersonSearchPretrainConfig
    base_model_prefix = "person_search"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (IntraTaskAlignmentModule, PredictionMLP)):
            module.reset_parameters()
        else:  # the person search model's own rules (its backbone keeps its weights)
            PersonSearchPreTrainedModel._init_weights(self, module)


def _sizes(image_sizes: torch.Tensor | None, pixel_values: torch.Tensor) -> list[tuple[int, int]]:
    if image_sizes is None:
        return [tuple(pixel_values.shape[-2:])] * pixel_values.shape[0]
    return [(int(h), int(w)) for h, w in torch.as_tensor(image_sizes).reshape(-1, 2).tolist()]


def _valid_locations(sizes: list[tuple[int, int]], feature_map: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, h, w) bool: feature map locations that cover image pixels rather than batch padding."""
    height, width = feature_map.shape[-2:]
    valid = torch.zeros((len(sizes), height, width), dtype=torch.bool, device=feature_map.device)
    for index, (image_height, image_width) in enumerate(sizes):
        valid[index, : -(-image_height // stride), : -(-image_width // stride)] = True
    return valid


class PersonSearchPretrainModel(PersonSearchPretrainPreTrainedModel):
    """Hybrid pre-training model: ``person_search`` (a PersonSearchModel), ``prediction_mlp`` (SimSiam)
    and the alignment modules ``detection_alignment`` / ``reid_alignment`` / ``inter_task_alignment``
    (each present only when its switch is on).

    Inputs (the batch of ``hf_personsearch.data.collate.collate_pretrain``; B images, two views each):
        pixel_values, image_sizes, labels: view 1, as PersonSearchModel; every labels dict also holds
            "person_index" (n,): the same person has the same index in both views (a person lost by
            one view's augmentation is absent from that view).
        pixel_values_2, image_sizes_2, labels_2: view 2, the same format.
        domain_ids: int (B,), index of the image's source dataset among the sources of its task
            (detection sources 0 .. num_detection_domains - 1, re-ID sources 0 .. num_reid_domains - 1).
        is_reid: bool (B,), the image comes from a re-ID source (re-ID IAM) or a detection source
            (detection IAM).
        has_identity: bool (B,), the image's persons carry real identities (labeled re-ID): no L_con.
        sources: source names, for logging only (ignored).
    Returns :class:`PersonSearchPretrainOutput`. Training mode only: for inference use
    ``model.person_search``.
    """

    def __init__(self, config: PersonSearchPretrainConfig):
        super().__init__(config)
        self.person_search = PersonSearchModel(config.person_search)
        backbone = self.person_search.backbone
        embedding_dim = config.person_search.embedding_dim
        if config.use_contrastive:
            self.prediction_mlp = PredictionMLP(embedding_dim, config.predictor_hidden_dim)

        def alignment(image_channels: int, instance_dim: int, num_domains: int) -> IntraTaskAlignmentModule:
            return IntraTaskAlignmentModule(
                image_channels,
                instance_dim,
                num_domains,
                num_convs=config.iam_num_convs,
                conv_channels=config.iam_conv_channels,
                instance_hidden_dim=config.iam_instance_hidden_dim,
                reversal_weight=config.gradient_reversal_weight,
                negative_slope=config.iam_negative_slope,
            )

        if config.use_detection_iam:
            self.detection_alignment = alignment(
                backbone.encoder_channels, backbone.head_channels, config.num_detection_domains
            )
        if config.use_reid_iam:
            self.reid_alignment = alignment(backbone.encoder_channels, embedding_dim, config.num_reid_domains)
        if config.use_inter_task_alignment:
            self.inter_task_alignment = alignment(
                backbone.encoder_channels,
                backbone.head_channels,
                config.num_detection_domains + config.num_reid_domains,
            )
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``; checkpoints of the earlier layout (the person search
        model's search head parts at its top level) load through ``LEGACY_KEY_MAPPING``."""
        kwargs.setdefault("key_mapping", LEGACY_KEY_MAPPING)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def export_person_search_model(self, save_directory: str | None = None, **save_kwargs) -> PersonSearchModel:
        """The downstream model (backbone + detection + re-ID heads, without predictor and IAMs).

        With ``save_directory`` it is also written there with ``save_pretrained`` (``save_kwargs`` passed
        on): the folder published as e.g. "org/prtps-r50", loadable with ``AutoModel.from_pretrained``."""
        if save_directory is not None:
            self.person_search.save_pretrained(save_directory, **save_kwargs)
        return self.person_search

    def domain_classifier_parameters(self) -> list[nn.Parameter]:
        """The parameters of the alignment modules (the domain classifiers behind gradient reversal).

        The trainer leaves them out of gradient clipping: a classifier only pushes the features towards
        domain invariance while it keeps up with them, and clipped together with the model (whose
        reversed domain gradient is large) it learns too slowly; the features then keep the domain cue
        although the classifier reads "chance" (benchmarks/bench_alignment.py, variant clip-all)."""
        return [
            parameter
            for attribute in ALIGNMENT_MODULES.values()
            if hasattr(self, attribute)
            for parameter in getattr(self, attribute).parameters()
        ]

    # ------------------------------------------------------------------ checks
    def _check_batch(self, batch_size: int, domain_ids, is_reid, has_identity, labels, labels_2, device):
        flags = {}
        for name, value, dtype in (
            ("domain_ids", domain_ids, torch.long),
            ("is_reid", is_reid, torch.bool),
            ("has_identity", has_identity, torch.bool),
        ):
            if value is None:
                raise ValueError(f"PersonSearchPretrainModel.forward needs {name} ({batch_size} values), got None")
            value = torch.as_tensor(value, device=device).reshape(-1).to(dtype)
            if value.numel() != batch_size:
                raise ValueError(f"{name} has {value.numel()} values for a batch of {batch_size} images")
            flags[name] = value
        for view, view_labels in (("labels", labels), ("labels_2", labels_2)):
            if view_labels is None or len(view_labels) != batch_size:
                count = None if view_labels is None else len(view_labels)
                raise ValueError(f"{view}: expected one dict per image ({batch_size}), got {count}")
        config = self.config
        for index, (domain, reid) in enumerate(zip(flags["domain_ids"].tolist(), flags["is_reid"].tolist())):
            limit, field = (
                (config.num_reid_domains, "num_reid_domains")
                if reid
                else (config.num_detection_domains, "num_detection_domains")
            )
            if not 0 <= domain < limit:
                task = "re-ID" if reid else "detection"
                raise ValueError(
                    f"domain_ids[{index}] = {domain}, but image {index} is from a {task} source and config.{field} "
                    f"is {limit} (expected 0 <= domain id < {limit})"
                )
        return flags["domain_ids"], flags["is_reid"], flags["has_identity"]

    # ------------------------------------------------------------------ pieces
    def _person_index(self, target: dict, view: str, image: int) -> list[int]:
        if "person_index" not in target:
            raise ValueError(f"{view}[{image}] has no 'person_index' (needed to pair persons across the two views)")
        index = torch.as_tensor(target["person_index"]).reshape(-1).tolist()
        count = torch.as_tensor(target["boxes"]).reshape(-1, 4).shape[0]
        if len(index) != count:
            raise ValueError(f"{view}[{image}]: {count} boxes but {len(index)} person_index values")
        if len(set(index)) != len(index):
            raise ValueError(f"{view}[{image}]: person_index {index} repeats a person")
        return index

    def _contrastive_pairs(self, labels, labels_2, has_identity) -> tuple[list[int], list[int]]:
        """Rows (into each view's concatenated ground-truth boxes) of the persons present in both views of
        every image without real identities, in matching order."""
        rows_1, rows_2 = [], []
        offset_1 = offset_2 = 0
        for image, (target_1, target_2) in enumerate(zip(labels, labels_2)):
            index_1 = self._person_index(target_1, "labels", image)
            index_2 = self._person_index(target_2, "labels_2", image)
            if not has_identity[image]:
                position_2 = {person: row for row, person in enumerate(index_2)}
                for row_1, person in enumerate(index_1):
                    if person in position_2:
                        rows_1.append(offset_1 + row_1)
                        rows_2.append(offset_2 + position_2[person])
            offset_1 += len(index_1)
            offset_2 += len(index_2)
        return rows_1, rows_2

    def _alignment_inputs(self, name: str, view: dict, domain_ids, is_reid) -> tuple | None:
        """(image features, image domains, instance features, instance image index, valid) of one view for
        the module ``name``, or None when the view has no image for it."""
        config = self.config
        if name == "reid":  # each RoI-aligned person map is an image with one instance, its embedding
            box_image = view["gt_image_index"]
            keep = is_reid[box_image]
            if not keep.any():
                return None
            count = int(keep.sum())
            index = torch.arange(count, device=keep.device)
            return view["gt_roi_features"][keep], domain_ids[box_image[keep]], view["gt_embeddings"][keep], index, None
        images = ~is_reid if name == "det" else torch.ones_like(is_reid)
        if not images.any():
            return None
        domains = domain_ids + is_reid.long() * config.num_detection_domains if name == "inter" else domain_ids
        new_index = torch.cumsum(images.long(), 0) - 1
        roi_image = view["roi_image_index"]
        keep_rois = images[roi_image]
        return (
            view["encoder_features"][images],
            domains[images],
            view["instance_features"][keep_rois],
            new_index[roi_image[keep_rois]],
            view["valid"][images],
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: list[dict[str, torch.Tensor]] | None = None,
        pixel_values_2: torch.Tensor | None = None,
        labels_2: list[dict[str, torch.Tensor]] | None = None,
        domain_ids: torch.Tensor | None = None,
        is_reid: torch.Tensor | None = None,
        has_identity: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_sizes_2: torch.Tensor | None = None,
        sources: list[str] | None = None,
        return_dict: bool = True,
    ) -> PersonSearchPretrainOutput:
        if not self.training:
            raise RuntimeError(
                "PersonSearchPretrainModel computes the pre-training losses and runs in train mode only; "
                "for inference use model.person_search (or export_person_search_model())"
            )
        if pixel_values_2 is None:
            raise ValueError("PersonSearchPretrainModel.forward needs the second view: pixel_values_2 is None")
        config = self.config
        device = pixel_values.device
        batch_size = pixel_values.shape[0]
        if pixel_values_2.shape[0] != batch_size:
            raise ValueError(f"pixel_values has {batch_size} images but pixel_values_2 has {pixel_values_2.shape[0]}")
        domain_ids, is_reid, has_identity = self._check_batch(
            batch_size, domain_ids, is_reid, has_identity, labels, labels_2, device
        )
        person_search = self.person_search
        stride = person_search.backbone.encoder_stride
        views = []
        for view_pixels, view_sizes, view_labels in (
            (pixel_values, image_sizes, labels),
            (pixel_values_2, image_sizes_2, labels_2),
        ):
            output = person_search(view_pixels, image_sizes=view_sizes, labels=view_labels, output_features=True)
            sizes = _sizes(view_sizes, view_pixels)
            gt_boxes = []
            for target, (height, width) in zip(view_labels, sizes):
                boxes = torch.as_tensor(target["boxes"], dtype=view_pixels.dtype, device=device).reshape(-1, 4)
                boxes = torch.stack(
                    [boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height)]
                    + [boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)],
                    dim=1,
                )
                gt_boxes.append(boxes)
            # re-ID features of the ground-truth persons, reusing this view's encoder map (no second pass);
            # batch-independent, and the inference statistics stay those of the proposal batches
            gt_features = person_search.search_head.box_features(output.encoder_features, gt_boxes, sizes)
            views.append(
                {
                    "loss": output.loss,
                    "loss_dict": output.loss_dict,
                    "encoder_features": output.encoder_features,
                    "instance_features": output.instance_features,
                    "roi_image_index": output.roi_image_index,
                    "valid": _valid_locations(sizes, output.encoder_features, stride),
                    "gt_roi_features": gt_features.roi_features,
                    "gt_embeddings": gt_features.reid_embeddings,
                    "gt_image_index": torch.cat(
                        [torch.full((len(b),), i, dtype=torch.long, device=device) for i, b in enumerate(gt_boxes)]
                    ),
                }
            )

        loss_dict = {name: (views[0]["loss_dict"][name] + views[1]["loss_dict"][name]) / 2 for name in PS_TERMS}
        loss_dict["ps"] = (views[0]["loss"] + views[1]["loss"]) / 2
        loss = loss_dict["ps"]

        num_contrastive_persons = 0
        if config.use_contrastive:
            rows_1, rows_2 = self._contrastive_pairs(labels, labels_2, has_identity.tolist())
            num_contrastive_persons = len(rows_1)
            features_1 = views[0]["gt_embeddings"][torch.as_tensor(rows_1, dtype=torch.long, device=device)]
            features_2 = views[1]["gt_embeddings"][torch.as_tensor(rows_2, dtype=torch.long, device=device)]
            loss_dict["con"] = contrastive_loss(
                features_1, features_2, self.prediction_mlp(features_1), self.prediction_mlp(features_2)
            )
            loss = loss + config.contrastive_loss_weight * loss_dict["con"]

        accuracy = {}
        adversarial = []
        for name, attribute in ALIGNMENT_MODULES.items():
            module = getattr(self, attribute, None)
            if module is None:
                continue
            terms = {"img": [], "ins": [], "consistency": []}
            correct = {"img": [], "ins": []}
            for view in views:
                inputs = self._alignment_inputs(name, view, domain_ids, is_reid)
                if inputs is None:
                    continue
                image_features, image_domains, instance_features, instance_image, valid = inputs
                result: AlignmentOutput = module(
                    image_features, image_domains, instance_features, instance_image, valid
                )
                terms["img"].append(result.image_loss)
                terms["ins"].append(result.instance_loss)
                terms["consistency"].append(result.consistency_loss)
                with torch.no_grad():
                    hits = result.image_logits.argmax(1) == image_domains[:, None, None]
                    correct["img"].append(hits[valid] if valid is not None else hits.flatten())
                    correct["ins"].append(result.instance_logits.argmax(1) == image_domains[instance_image])
            for term, values in terms.items():
                # a batch without images of this module's task contributes an exact zero
                loss_dict[f"adv_{name}_{term}"] = torch.stack(values).mean() if values else loss.new_zeros(())
            for level, hits in correct.items():
                hits = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=device)
                accuracy[f"{name}_{level}"] = hits.float().mean() if hits.numel() else loss.new_full((), float("nan"))
            adversarial.append(
                loss_dict[f"adv_{name}_img"]
                + loss_dict[f"adv_{name}_ins"]
                + config.iam_consistency_weight * loss_dict[f"adv_{name}_consistency"]
            )
        if adversarial:
            loss_dict["adv"] = torch.stack(adversarial).sum()
            loss = loss + config.adversarial_loss_weight * loss_dict["adv"]

        output = PersonSearchPretrainOutput(
            loss=loss,
            loss_dict=loss_dict,
            alignment_accuracy=accuracy,
            num_contrastive_persons=num_contrastive_persons,
        )
        return output if return_dict else output.to_tuple()
