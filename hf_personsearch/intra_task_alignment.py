"""Intra-task alignment module (IAM, the paper's Fig. 4 and Eq. 7), after Domain Adaptive Faster R-CNN.

An IAM takes image-level feature maps f_img and instance-level vectors f_ins of images from several
source datasets (domains). Both pass through a gradient reversal layer, cascaded layers, and a domain
classifier (Img_head, Ins_head) trained with multi-class cross-entropy over the domains:

    L_adv = L_d_img + L_d_ins + w_cst * L_d_cst

L_d_img classifies every location of the map (as Domain Adaptive Faster R-CNN, whose image-level
classifier is per patch; Img_head is a fully connected layer applied at each location, i.e. a 1x1
convolution). L_d_cst is the consistency regularizer of Domain Adaptive Faster R-CNN, extended from its
two domains to many: the L2 distance between the image's domain probabilities (averaged over its valid
locations) and the domain probabilities of each of its instances, averaged over the instances.
Because of the reversal, minimising L_d_img + L_d_ins trains the classifiers to recognise the dataset
while pushing the model's features towards being dataset-agnostic. L_d_cst is not adversarial: as in
Domain Adaptive Faster R-CNN's public PyTorch code (a second GradientScalarLayer with +weight in front
of the same classifiers), it reaches the features through a gradient scaling by +weight, so the features
are pushed to make the image and instance predictions AGREE. Through the reversal they would be pushed
to make them disagree. The classifiers therefore run twice per call, once behind each layer.

The paper uses two IAMs with the same architecture: the detection IAM (f_img = encoder feature map,
f_ins = detection-head vectors) and the re-ID IAM (f_img = RoI-aligned person maps, f_ins = re-ID
embeddings; each RoI map is its own "image", with one instance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gradient_reversal import GradientReversal, scale_gradient


def image_domain_loss(
    image_logits: torch.Tensor, domains: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """L_d_img: cross-entropy of every valid location's domain logits (K, D, H, W) against its image's
    domain (K,), averaged over the valid locations (``valid`` (K, H, W) bool, None = all)."""
    per_location = F.cross_entropy(
        image_logits, domains[:, None, None].expand(-1, *image_logits.shape[2:]), reduction="none"
    )
    if valid is None:
        return per_location.mean()
    return per_location[valid].mean()


def instance_domain_loss(instance_logits: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """L_d_ins: cross-entropy of each instance's domain logits (N, D) against its domain (N,), averaged."""
    if instance_logits.shape[0] == 0:
        return instance_logits.sum() * 0.0
    return F.cross_entropy(instance_logits, domains)


def image_domain_probabilities(image_logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over domains averaged over each image's valid locations: (K, D, H, W) -> (K, D)."""
    probabilities = image_logits.softmax(dim=1)
    if valid is None:
        return probabilities.mean(dim=(2, 3))
    weights = valid.to(probabilities.dtype)[:, None]
    return (probabilities * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1.0)


def consistency_regularizer(
    image_logits: torch.Tensor,
    instance_logits: torch.Tensor,
    instance_image_index: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_d_cst: mean over instances of ``|| p_img(image of the instance) - p_ins(instance) ||_2`` where
    p are the domain probability vectors (image ones averaged over valid locations)."""
    if instance_logits.shape[0] == 0:
        return instance_logits.sum() * 0.0 + image_logits.sum() * 0.0
    image_probabilities = image_domain_probabilities(image_logits, valid)[instance_image_index]
    difference = image_probabilities - instance_logits.softmax(dim=1)
    # sqrt(x + eps) keeps the gradient finite when both levels agree exactly (the norm's kink at 0)
    return (difference.pow(2).sum(dim=1) + 1e-12).sqrt().mean()


@dataclass
class AlignmentOutput:
    """Losses and logits of one IAM call: the three terms of Eq. (7) and the classifiers' predictions
    (image_logits (K, D, H, W), instance_logits (N, D)), for accuracy monitoring."""

    image_loss: torch.Tensor
    instance_loss: torch.Tensor
    consistency_loss: torch.Tensor
    image_logits: torch.Tensor
    instance_logits: torch.Tensor


class IntraTaskAlignmentModule(nn.Module):
    """One IAM: gradient reversal, cascaded layers and the Img_head / Ins_head domain classifiers.

    Args:
        image_channels: channels of f_img.
        instance_dim: size of f_ins.
        num_domains: number of source datasets it tells apart.
        num_convs: depth of each branch (image: 3x3 convolutions; instance: fully connected layers).
        conv_channels: width of the image branch.
        instance_hidden_dim: width of the instance branch.
        reversal_weight: the gradient reversal weight of the domain terms, also the (un-reversed) gradient
            weight of the consistency term (0 = the features get no gradient from the IAM).
        negative_slope: LeakyReLU slope between the layers (0 = ReLU). A small slope keeps the classifier
            alive: with ReLU the reversed gradient turns every unit off (see PersonSearchPretrainConfig).

    ``forward(image_features (K, C, H, W), image_domains (K,), instance_features (N, d),
    instance_image_index (N,) the image of each instance, valid (K, H, W) bool or None)`` returns an
    :class:`AlignmentOutput`. Instances take the domain of their image.
    """

    def __init__(
        self,
        image_channels: int,
        instance_dim: int,
        num_domains: int,
        num_convs: int = 2,
        conv_channels: int = 256,
        instance_hidden_dim: int = 256,
        reversal_weight: float = 1.0,
        negative_slope: float = 0.2,
    ):
        super().__init__()
        self.num_domains = num_domains
        self.gradient_reversal = GradientReversal(reversal_weight)
        image_layers, instance_layers = [], []
        for index in range(num_convs):
            image_layers += [nn.Conv2d(image_channels if index == 0 else conv_channels, conv_channels, 3, padding=1)]
            image_layers += [nn.LeakyReLU(negative_slope, inplace=True)]
            instance_layers += [nn.Linear(instance_dim if index == 0 else instance_hidden_dim, instance_hidden_dim)]
            instance_layers += [nn.LeakyReLU(negative_slope, inplace=True)]
        self.image_convs = nn.Sequential(*image_layers)
        self.image_head = nn.Conv2d(conv_channels, num_domains, 1)
        self.instance_layers = nn.Sequential(*instance_layers)
        self.instance_head = nn.Linear(instance_hidden_dim, num_domains)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()

    def classify(
        self, image_features: torch.Tensor, instance_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Domain logits of every location (K, D, H, W) and of every instance (N, D); no gradient layer."""
        return self.image_head(self.image_convs(image_features)), self.instance_head(
            self.instance_layers(instance_features)
        )

    def domain_logits(
        self, image_features: torch.Tensor, instance_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`classify` behind the gradient reversal (the domain classification terms)."""
        return self.classify(self.gradient_reversal(image_features), self.gradient_reversal(instance_features))

    def forward(
        self,
        image_features: torch.Tensor,
        image_domains: torch.Tensor,
        instance_features: torch.Tensor,
        instance_image_index: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> AlignmentOutput:
        if image_domains.numel() and (image_domains.min() < 0 or image_domains.max() >= self.num_domains):
            raise ValueError(
                f"domain ids {image_domains.tolist()} must lie in [0, {self.num_domains}) (this IAM's domains)"
            )
        image_logits, instance_logits = self.domain_logits(image_features, instance_features)
        weight = self.gradient_reversal.weight
        consistency_image_logits, consistency_instance_logits = self.classify(
            scale_gradient(image_features, weight), scale_gradient(instance_features, weight)
        )
        return AlignmentOutput(
            image_loss=image_domain_loss(image_logits, image_domains, valid),
            instance_loss=instance_domain_loss(instance_logits, image_domains[instance_image_index]),
            consistency_loss=consistency_regularizer(
                consistency_image_logits, consistency_instance_logits, instance_image_index, valid
            ),
            image_logits=image_logits,
            instance_logits=instance_logits,
        )
