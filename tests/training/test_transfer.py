"""match_fresh_weight_norms: a grown pre-trained model gets a fresh model's weight norms on its normalised layers and
computes the same function, in training (the losses) and in inference (detections and embeddings)."""

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_models import scene_batch, tiny_config  # noqa: E402

from hf_personsearch import PersonSearchModel  # noqa: E402
from hf_personsearch.training.transfer import match_fresh_weight_norms, normalized_layer_pairs  # noqa: E402


@pytest.fixture(scope="module")
def batch():
    return scene_batch()


def grown_model(batch, **overrides) -> PersonSearchModel:
    """A tiny model after a few large AdamW steps: weights and BatchNorm statistics away from a fresh model's, as
    after pre-training (score threshold 0, so that inference keeps detections to compare)."""
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_config(box_score_thresh=0.0, **overrides)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
    pixel_batch, labels = batch
    for _ in range(4):
        output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"], labels=labels)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    return model


def losses(model, batch) -> dict[str, float]:
    """The training losses of a copy of ``model`` (a training forward updates the OIM tables and the BatchNorm
    statistics)."""
    pixel_batch, labels = batch
    model = copy.deepcopy(model).train()
    torch.manual_seed(1)  # the same anchor and RoI samples in both calls
    with torch.no_grad():
        output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"], labels=labels)
    return {name: value.item() for name, value in output.loss_dict.items()}


def detections(model, batch):
    pixel_batch, _ = batch
    model.eval()
    with torch.no_grad():
        return model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])


def test_normalised_layers_get_a_fresh_models_norms_and_the_function_is_unchanged(batch):
    model = grown_model(batch)
    pairs = normalized_layer_pairs(model)
    # test_resnet's 15 convolution -> BatchNorm pairs, the two embedding projections and the box regressor
    assert len(pairs) == 18
    modules = dict(model.named_modules())
    before_losses, before = losses(model, batch), detections(model, batch)
    grown_norms = {layer: modules[layer].weight.norm().item() for layer, _ in pairs}

    factors = match_fresh_weight_norms(model, seed=3)

    torch.manual_seed(3)
    fresh = dict(PersonSearchModel(model.config).named_modules())
    for layer, _ in pairs:
        torch.testing.assert_close(modules[layer].weight.norm(), fresh[layer].weight.norm(), rtol=1e-5, atol=0)
        assert factors[layer] == pytest.approx(fresh[layer].weight.norm().item() / grown_norms[layer], rel=1e-5)
    # the embedding projections grew most in the large steps: scaled down, not left alone
    assert factors["search_head.embedding_head.projections.0"] < 0.5
    after_losses, after = losses(model, batch), detections(model, batch)
    # BatchNorm's eps (1e-5 next to the rescaled variances) makes the match approximate
    assert after_losses == pytest.approx(before_losses, rel=1e-3)
    # Boxes in pixels: within 0.05 px (the regression deltas are exponentiated and scaled by the box size, so
    # the eps effect shows there most: measured up to 0.035 px on a 65 px coordinate with one thread).
    for name, tolerance in (("boxes", 0.05), ("scores", 1e-4), ("embeddings", 1e-4)):
        for old, new in zip(getattr(before, name), getattr(after, name)):
            assert len(old) > 0
            torch.testing.assert_close(new, old, rtol=1e-4, atol=tolerance)


def test_frozen_batchnorms_keep_the_backbone_weights_as_they_are(batch):
    model = grown_model(batch, freeze_batchnorm=True)
    backbone = {name: value.clone() for name, value in model.backbone.state_dict().items()}
    factors = match_fresh_weight_norms(model, seed=0)
    assert sorted(factors) == [
        "search_head.box_regressor.linear",
        "search_head.embedding_head.projections.0",
        "search_head.embedding_head.projections.1",
    ]
    assert all(torch.equal(model.backbone.state_dict()[name], value) for name, value in backbone.items())
