"""Norm-aware embedding (NAE, Chen et al. 2020): one vector serves both detection and re-ID.

The RoI's encoder feature map and its box head feature map are max-pooled, each projected to half of
the embedding (Linear + BatchNorm1d) and concatenated. The embedding's NORM, rescaled by a
BatchNorm1d(1), is the person-vs-background logit; its DIRECTION (the L2-normalised embedding) is the
re-ID feature. At inference the re-ID feature is multiplied by the detection score (confidence
weighted similarity, CWS), so unsure detections rank lower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, use_running_stats: bool = False) -> torch.Tensor:
    """``bn(x)``, or normalisation with the running statistics without updating them (gradients still
    flow to ``x`` and the affine parameters) when asked, or for a single sample, where batch statistics
    are undefined."""
    if use_running_stats or (bn.training and x.shape[0] < 2):
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return bn(x)


class NormAwareEmbedding(nn.Module):
    """Args:
        in_channels: channels of the (encoder RoI feature map, box head feature map), e.g. (1024, 2048).
        embedding_dim: total size, split evenly between the inputs (NAE: 256 = 128 + 128).
        norm_score: derive the detection logit from the norm (NAE). False when another module scores the
            RoIs (``PersonSearchConfig.detection_score="linear"``): no rescaler, the logits are None.

    ``forward(roi_features, head_features, use_running_stats=False)`` returns ``(embeddings, logits, raw)``:
    L2-normalised embeddings (N, d), detection logits (N,) or None, and the un-normalised embeddings (N, d).
    ``use_running_stats=True`` normalises with the running statistics and leaves them unchanged, in
    train mode too (the embeddings of given boxes, independent of the batch).
    """

    def __init__(self, in_channels: tuple[int, int], embedding_dim: int = 256, norm_score: bool = True):
        super().__init__()
        half = embedding_dim // 2
        self.projections = nn.ModuleList(nn.Linear(channels, half) for channels in in_channels)
        self.projection_norms = nn.ModuleList(nn.BatchNorm1d(half) for _ in in_channels)
        # No unused rescaler without the norm score: DDP rejects parameters that never get a gradient.
        self.rescaler = nn.BatchNorm1d(1) if norm_score else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for projection in self.projections:
            nn.init.normal_(projection.weight, std=0.01)  # NAE's init
            nn.init.zeros_(projection.bias)
        for bn in [*self.projection_norms, *([self.rescaler] if self.rescaler is not None else [])]:
            bn.reset_parameters()
            bn.reset_running_stats()

    def forward(
        self, roi_features: torch.Tensor, head_features: torch.Tensor, use_running_stats: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        halves = []
        for feature_map, projection, bn in zip((roi_features, head_features), self.projections, self.projection_norms):
            pooled = F.adaptive_max_pool2d(feature_map, 1).flatten(1)
            halves.append(_batch_norm(bn, projection(pooled), use_running_stats))
        raw = torch.cat(halves, dim=1)
        norms = raw.norm(dim=1, keepdim=True)
        embeddings = raw / norms.clamp_min(1e-12)
        if self.rescaler is None:
            return embeddings, None, raw
        logits = _batch_norm(self.rescaler, norms, use_running_stats).squeeze(1)
        return embeddings, logits, raw


class LinearPersonClassifier(nn.Module):
    """Person-vs-background logit of a RoI from its whole box head map, flattened: Faster R-CNN's
    classifier (OIM's baseline head), the ``detection_score="linear"`` alternative to NAE's norm.

    Flattened rather than pooled because the measured failure it fixes is spatial: at the CPU benchmark's
    scale (test_resnet, 4x4 box head maps) fragments and near-duplicates of persons (IoU 0.3-0.5) get the
    same pooled features as the person; NAE's norm ranks them at AUC 0.52-0.57, a linear layer on the
    pooled map does not do better (detection AP 0.16), one on the flattened map does (AUC 0.78, AP 0.48-0.61).

    Args:
        in_features: channels x height x width of the box head map.
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.linear.weight, std=0.01)  # Faster R-CNN's classifier init
        nn.init.zeros_(self.linear.bias)

    def forward(self, head_features: torch.Tensor) -> torch.Tensor:
        features = head_features.flatten(1)
        if features.shape[1] != self.linear.in_features:
            raise ValueError(
                f"LinearPersonClassifier: box head maps of shape {tuple(head_features.shape[1:])} "
                f"({features.shape[1]} features), expected {self.linear.in_features}"
            )
        return self.linear(features).squeeze(1)


class BoxRegressor(nn.Module):
    """Class-agnostic box deltas from the average-pooled box head map (Linear + BatchNorm1d, as NAE)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.linear = nn.Linear(in_channels, 4)
        self.norm = nn.BatchNorm1d(4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)
        self.norm.reset_parameters()
        self.norm.reset_running_stats()

    def forward(self, head_features: torch.Tensor) -> torch.Tensor:
        return _batch_norm(self.norm, self.linear(F.adaptive_avg_pool2d(head_features, 1).flatten(1)))
