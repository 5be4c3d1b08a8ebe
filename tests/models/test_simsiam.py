"""SimSiam pieces: Eq. (5) against a hand computation, Eq. (6) symmetry, and the stop-gradient."""

from __future__ import annotations

import math

import pytest
import torch

from hf_personsearch.simsiam import PredictionMLP, contrastive_loss, negative_cosine_similarity


def test_negative_cosine_matches_hand_computation():
    target = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    prediction = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    # cos = 1/sqrt(2) and -1; C = -mean
    expected = -(1 / math.sqrt(2) - 1.0) / 2
    assert negative_cosine_similarity(target, prediction).item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_loss_is_symmetric_half_sum():
    h1, h2, z1, z2 = (torch.randn(4, 8) for _ in range(4))
    expected = 0.5 * negative_cosine_similarity(h2, z1) + 0.5 * negative_cosine_similarity(h1, z2)
    assert torch.allclose(contrastive_loss(h1, h2, z1, z2), expected)
    assert torch.allclose(contrastive_loss(h1, h2, z1, z2), contrastive_loss(h2, h1, z2, z1))


def test_stop_gradient_on_target_branch():
    h2 = torch.randn(5, 8, requires_grad=True)
    z1 = torch.randn(5, 8, requires_grad=True)
    negative_cosine_similarity(h2, z1).backward()
    assert h2.grad is None  # the target never receives a gradient
    assert z1.grad is not None and z1.grad.abs().sum() > 0


def test_gradient_reaches_features_only_through_the_predictor():
    # With z = P(h), the gradient w.r.t. h must equal the gradient through z alone (target detached).
    torch.manual_seed(0)
    mlp = PredictionMLP(8, 2).eval()
    h1 = torch.randn(6, 8, requires_grad=True)
    h2 = torch.randn(6, 8, requires_grad=True)
    contrastive_loss(h1, h2, mlp(h1), mlp(h2)).backward()
    reference_h1 = h1.detach().clone().requires_grad_(True)
    (0.5 * negative_cosine_similarity(h2.detach(), mlp(reference_h1))).backward()
    assert torch.allclose(h1.grad, reference_h1.grad)


def test_empty_persons_give_zero_connected_loss():
    z = torch.zeros(0, 4, requires_grad=True)
    loss = negative_cosine_similarity(torch.zeros(0, 4), z)
    loss.backward()
    assert loss.item() == 0.0


def test_prediction_mlp_handles_single_person_and_shape_errors():
    mlp = PredictionMLP(8, 2).train()
    assert mlp(torch.randn(1, 8)).shape == (1, 8)
    with pytest.raises(ValueError, match="must match"):
        negative_cosine_similarity(torch.zeros(2, 3), torch.zeros(2, 4))
