"""IAM losses against hand computations, reversal wiring, and the input checks."""

from __future__ import annotations

import math

import pytest
import torch

from hf_personsearch.intra_task_alignment import (
    IntraTaskAlignmentModule,
    consistency_regularizer,
    image_domain_loss,
    image_domain_probabilities,
    instance_domain_loss,
)


def test_image_domain_loss_averages_valid_locations_only():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0] = math.log(3.0)  # location 0: p(domain 0) = 3/4
    logits[0, 1, 0, 1] = 100.0  # location 1 (padding): confidently wrong, must not count
    domains = torch.tensor([0])
    valid = torch.tensor([[[True, False]]])
    assert image_domain_loss(logits, domains, valid).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    both = (-math.log(0.75) + 100.0) / 2
    assert image_domain_loss(logits, domains).item() == pytest.approx(both, abs=1e-4)


def test_instance_domain_loss_is_multiclass_cross_entropy():
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    domains = torch.tensor([2, 0])
    expected = (-math.log(1 / 3) - math.log(2 / 4)) / 2
    assert instance_domain_loss(logits, domains).item() == pytest.approx(expected, abs=1e-6)


def test_consistency_is_l2_between_mean_image_probability_and_instances():
    image_logits = torch.zeros(1, 2, 1, 2)
    image_logits[0, 0, 0, 1] = math.log(3.0)  # locations: p0 = 1/2 and 3/4 -> mean (5/8, 3/8)
    instance_logits = torch.tensor([[0.0, 0.0], [math.log(7.0), 0.0]])  # (1/2, 1/2) and (7/8, 1/8)
    expected = (math.sqrt(2) * (5 / 8 - 1 / 2) + math.sqrt(2) * (7 / 8 - 5 / 8)) / 2
    result = consistency_regularizer(image_logits, instance_logits, torch.tensor([0, 0]))
    assert result.item() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(image_domain_probabilities(image_logits), torch.tensor([[5 / 8, 3 / 8]]))


def test_consistency_gradient_is_finite_when_levels_agree():
    image_logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    instance_logits = torch.zeros(2, 3, requires_grad=True)
    consistency_regularizer(image_logits, instance_logits, torch.tensor([0, 0])).backward()
    assert torch.isfinite(image_logits.grad).all() and torch.isfinite(instance_logits.grad).all()


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_module_scales_feature_gradient_by_reversal_weight_and_always_trains_its_heads(weight):
    torch.manual_seed(0)
    module = IntraTaskAlignmentModule(4, 6, num_domains=3, num_convs=2, conv_channels=5, instance_hidden_dim=7)
    image_features = torch.randn(2, 4, 3, 3, requires_grad=True)
    instance_features = torch.randn(3, 6, requires_grad=True)
    domains, index = torch.tensor([0, 2]), torch.tensor([0, 1, 1])

    def gradients(reversal_weight):
        module.gradient_reversal.weight = reversal_weight
        out = module(image_features, domains, instance_features, index)
        loss = out.image_loss + out.instance_loss + out.consistency_loss
        return torch.autograd.grad(loss, [image_features, instance_features, module.image_head.weight])

    unit = gradients(1.0)
    scaled = gradients(weight)
    # the features receive -weight x the classifiers' gradient: exactly weight x the weight-1 gradient
    assert torch.allclose(scaled[0], weight * unit[0], atol=1e-7)
    assert torch.allclose(scaled[1], weight * unit[1], atol=1e-7)
    # the reversal sits before the heads: their gradient does not depend on it
    assert torch.allclose(scaled[2], unit[2]) and unit[2].abs().sum() > 0


def test_consistency_gradient_descends_while_the_domain_terms_are_reversed():
    """DA-Faster R-CNN's reference: the domain terms reach the features through the reversal (-weight),
    the consistency term through a +weight scaling of the same classifiers (the features make the two
    levels agree)."""
    torch.manual_seed(2)
    module = IntraTaskAlignmentModule(
        3, 4, num_domains=3, num_convs=1, conv_channels=4, instance_hidden_dim=5, reversal_weight=0.5
    )
    image_features = torch.randn(2, 3, 3, 3, requires_grad=True)
    instance_features = torch.randn(3, 4, requires_grad=True)
    domains, index = torch.tensor([0, 2]), torch.tensor([0, 1, 1])
    features = [image_features, instance_features]
    out = module(image_features, domains, instance_features, index)
    consistency_gradient = torch.autograd.grad(out.consistency_loss, features + [module.image_head.weight])
    domain_gradient = torch.autograd.grad(out.image_loss + out.instance_loss, features)

    image_logits, instance_logits = module.classify(image_features, instance_features)  # no gradient layer
    plain_consistency = torch.autograd.grad(
        consistency_regularizer(image_logits, instance_logits, index), features + [module.image_head.weight]
    )
    image_logits, instance_logits = module.classify(image_features, instance_features)
    plain_domain = torch.autograd.grad(
        image_domain_loss(image_logits, domains) + instance_domain_loss(instance_logits, domains[index]), features
    )
    for reached, plain in zip(consistency_gradient[:2], plain_consistency[:2]):
        assert plain.abs().sum() > 0
        assert torch.allclose(reached, 0.5 * plain, atol=1e-7)  # descent on L_d_cst, scaled by the weight
    # the classifiers minimise the consistency term too (they are not behind any gradient layer)
    assert torch.allclose(consistency_gradient[2], plain_consistency[2], atol=1e-7)
    for reached, plain in zip(domain_gradient, plain_domain):
        assert plain.abs().sum() > 0
        assert torch.allclose(reached, -0.5 * plain, atol=1e-7)  # ascent on L_d_img + L_d_ins


def test_reversal_makes_the_feature_gradient_ascend_the_domain_loss():
    torch.manual_seed(1)
    module = IntraTaskAlignmentModule(3, 3, num_domains=2, num_convs=1, conv_channels=4, instance_hidden_dim=4)
    image_features = torch.randn(2, 3, 2, 2, requires_grad=True)
    instance_features = torch.randn(2, 3)
    domains, index = torch.tensor([0, 1]), torch.tensor([0, 1])
    out = module(image_features, domains, instance_features, index)
    (gradient,) = torch.autograd.grad(out.image_loss, image_features)
    with torch.no_grad():  # a small step along -gradient (what SGD does) must INCREASE the domain loss
        stepped = module(image_features - 1e-2 * gradient, domains, instance_features, index).image_loss
    assert stepped > out.image_loss


def test_domain_out_of_range_names_the_ids():
    module = IntraTaskAlignmentModule(4, 6, num_domains=2, num_convs=1, conv_channels=4, instance_hidden_dim=4)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        module(torch.randn(1, 4, 2, 2), torch.tensor([2]), torch.randn(1, 6), torch.tensor([0]))


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_negative_inputs_pass_through_the_branches_with_the_configured_slope(slope):
    """With ReLU (slope 0) a branch whose inputs are all negative outputs its bias only and passes no
    gradient back (the dead classifier of PersonSearchPretrainConfig.iam_negative_slope); a slope keeps
    both the output and the gradient alive."""
    module = IntraTaskAlignmentModule(
        2, 2, num_domains=2, num_convs=1, conv_channels=2, instance_hidden_dim=2, negative_slope=slope
    )
    with torch.no_grad():
        for layer in (module.image_convs[0], module.instance_layers[0]):
            layer.weight.fill_(1.0)
            layer.bias.fill_(0.0)
    features = torch.full((1, 2, 3, 3), -1.0, requires_grad=True)
    instances = torch.full((1, 2), -1.0, requires_grad=True)
    image_logits, instance_logits = module.domain_logits(features, instances)
    (image_logits[:, 0].sum() + instance_logits[:, 0].sum()).backward()
    if slope == 0:
        assert torch.equal(features.grad, torch.zeros_like(features))
        assert torch.equal(instances.grad, torch.zeros_like(instances))
    else:
        assert features.grad.abs().sum() > 0 and instances.grad.abs().sum() > 0
        hidden = module.instance_layers(instances.detach())
        assert torch.allclose(hidden, torch.full((1, 2), -2.0 * slope))  # LeakyReLU(-2) = -2 * slope
