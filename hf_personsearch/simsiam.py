"""SimSiam (Chen and He 2021) on person re-ID features: the self-supervised half of hybrid learning.

For an image without real identities (a detection image or an unlabeled re-ID crop) two augmented views
go through the person search model; ``h_i`` is the re-ID feature of a person in view i and
``z_i = predictor(h_i)``. Eq. (5) and (6) of the paper:

    C(h, z) = - cos(h, z)                       (mean over persons)
    L_con   = 1/2 C(sg(h_2), z_1) + 1/2 C(sg(h_1), z_2)

``sg`` (stop-gradient) makes the target branch a constant: the model learns only through the predicted
branch, which is what keeps SimSiam from collapsing to a constant feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm_aware_embedding import _batch_norm


class PredictionMLP(nn.Module):
    """SimSiam's prediction MLP ``h -> z``: Linear, BatchNorm1d, ReLU, Linear (no norm on the output).

    Args:
        feature_dim: size of h and z (the re-ID embedding size).
        hidden_dim: the bottleneck (SimSiam uses a quarter of the feature size: 2048 -> 512 -> 2048).

    A batch of a single person uses the BatchNorm's running statistics (batch statistics are undefined).
    """

    def __init__(self, feature_dim: int, hidden_dim: int):
        super().__init__()
        if feature_dim < 1 or hidden_dim < 1:
            raise ValueError(
                f"PredictionMLP needs positive sizes, got feature_dim={feature_dim}, hidden_dim={hidden_dim}"
            )
        self.hidden = nn.Linear(feature_dim, hidden_dim)
        self.hidden_norm = nn.BatchNorm1d(hidden_dim)
        self.output = nn.Linear(hidden_dim, feature_dim)

    def reset_parameters(self) -> None:
        self.hidden.reset_parameters()
        self.hidden_norm.reset_parameters()
        self.hidden_norm.reset_running_stats()
        self.output.reset_parameters()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.output(F.relu(_batch_norm(self.hidden_norm, self.hidden(features))))


def negative_cosine_similarity(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Eq. (5): ``C(h, z) = -cos(sg(h), z)`` averaged over the persons (rows).

    The paper writes a sum over persons; the mean keeps the loss in [-1, 1] whatever the number of
    persons in a batch, so its weight eta does not depend on the batch size. ``target`` is detached here
    (the stop-gradient of Eq. (6)). Empty inputs give a zero loss that stays connected to ``prediction``.
    """
    if target.shape != prediction.shape:
        raise ValueError(f"target {tuple(target.shape)} and prediction {tuple(prediction.shape)} must match")
    if prediction.shape[0] == 0:
        return prediction.sum() * 0.0
    return -F.cosine_similarity(target.detach(), prediction, dim=1).mean()


def contrastive_loss(
    features_1: torch.Tensor, features_2: torch.Tensor, predictions_1: torch.Tensor, predictions_2: torch.Tensor
) -> torch.Tensor:
    """Eq. (6): ``1/2 C(sg(h_2), z_1) + 1/2 C(sg(h_1), z_2)``; row k of every input is the same person."""
    return 0.5 * negative_cosine_similarity(features_2, predictions_1) + 0.5 * negative_cosine_similarity(
        features_1, predictions_2
    )
