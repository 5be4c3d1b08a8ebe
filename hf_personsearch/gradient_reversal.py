"""Gradient reversal layer (GRL, Ganin and Lempitsky 2015), the adversarial switch of the paper's IAM (Fig. 4).

Forward it is the identity; backward it multiplies the incoming gradient by ``-weight``. A domain
classifier placed after it learns to tell the domains apart (it receives the ordinary gradient), while
the features before it receive the reversed gradient and so learn to make the domains indistinguishable.
``weight = 0`` cuts the features off from the domain classifiers entirely (the classifiers still learn):
the "reversal off" setting of the learning test.

Both are instances of one gradient scaling layer (Domain Adaptive Faster R-CNN's GradientScalarLayer):
the IAM's consistency regulariser goes through it with ``+weight``, i.e. it is minimised by the features.
"""

from __future__ import annotations

import torch
from torch import nn


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.factor * grad_output, None


def _check_weight(weight: float) -> float:
    if weight < 0:
        raise ValueError(f"gradient reversal weight must be >= 0 (the sign is the reversal), got {weight}")
    return float(weight)


def reverse_gradient(features: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity on ``features``; the gradient flowing back through it is multiplied by ``-weight``."""
    return _ScaleGradient.apply(features, -_check_weight(weight))


def scale_gradient(features: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity on ``features``; the gradient flowing back through it is multiplied by ``+weight`` (no
    reversal: the layers before it descend on the loss, with the same strength as the reversed terms)."""
    return _ScaleGradient.apply(features, _check_weight(weight))


class GradientReversal(nn.Module):
    """Module form of :func:`reverse_gradient`.

    Args:
        weight: the factor of the reversed gradient (1.0 as Ganin and Lempitsky; the adversarial loss
            weight lambda of the paper's Eq. (1) scales it further).
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = _check_weight(weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(features, self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
