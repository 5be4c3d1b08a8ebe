"""Gradient reversal: identity forward, gradient exactly -weight x the incoming gradient backward."""

from __future__ import annotations

import pytest
import torch

from hf_personsearch.gradient_reversal import GradientReversal, reverse_gradient, scale_gradient


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0, 3.0])
def test_forward_is_identity_and_backward_is_minus_weight_times_gradient(weight):
    features = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    incoming = torch.randn(3, 5, dtype=torch.float64)
    output = GradientReversal(weight)(features)
    assert torch.equal(output, features)
    output.backward(incoming)
    assert torch.equal(features.grad, -weight * incoming)


def test_reversal_composes_with_a_loss_numerically():
    # d/dx sum((2x)^2) = 8x; through the reversal with weight 0.5 it must be -4x
    x = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    (2 * reverse_gradient(x, 0.5)).pow(2).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-4.0, 8.0, -2.0]))


def test_scale_gradient_is_identity_forward_and_plus_weight_backward():
    features = torch.randn(4, dtype=torch.float64, requires_grad=True)
    incoming = torch.randn(4, dtype=torch.float64)
    output = scale_gradient(features, 0.25)
    assert torch.equal(output, features)
    output.backward(incoming)
    assert torch.equal(features.grad, 0.25 * incoming)


def test_negative_weight_is_rejected():
    with pytest.raises(ValueError, match="must be >= 0"):
        GradientReversal(-1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        reverse_gradient(torch.zeros(1), -0.5)
    with pytest.raises(ValueError, match="must be >= 0"):
        scale_gradient(torch.zeros(1), -0.5)
