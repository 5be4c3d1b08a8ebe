"""fold_batchnorms: conv -> BatchNorm pairs folded by hand-checkable arithmetic, only where the data flow allows,
untraceable parts kept as they are; the backbone's inference copy leaves weights, state dict and training alone."""

import pytest
import torch
from timm.layers import BatchNormAct2d
from tiny_models import scene_batch, tiny_config
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from hf_personsearch import PersonSearchModel
from hf_personsearch.batchnorm_folding import fold_batchnorms

# Folding changes the order of float operations: results agree to float32 rounding of the activations
# (measured ~1e-6 relative on these tiny networks), so the tolerances below are a few times that.
FEATURE_TOLERANCE = dict(rtol=1e-5, atol=1e-5)
BOX_TOLERANCE_PX = 1e-3
SCORE_TOLERANCE = 1e-5
EMBEDDING_TOLERANCE = 1e-5


def randomise_statistics(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine terms (fresh ones are the identity: nothing to fold)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)) or hasattr(norm, "running_var"):
                for name in ("running_mean", "bias"):
                    getattr(norm, name).copy_(0.2 * torch.randn(getattr(norm, name).shape, generator=generator))
                for name in ("running_var", "weight"):
                    getattr(norm, name).copy_(0.5 + torch.rand(getattr(norm, name).shape, generator=generator))


def frozen(channels: int) -> FrozenBatchNorm2d:
    return FrozenBatchNorm2d(channels)


def test_folded_convolution_is_the_hand_computed_scale_and_shift():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=True), frozen(4), nn.ReLU())
    randomise_statistics(network)
    folded, count = fold_batchnorms(network)
    assert count == 1
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    conv, norm = network[0], network[1]
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    folded_conv = next(m for m in folded.modules() if isinstance(m, nn.Conv2d))
    torch.testing.assert_close(folded_conv.weight, conv.weight * scale[:, None, None, None])
    torch.testing.assert_close(folded_conv.bias, (conv.bias - norm.running_mean) * scale + norm.bias)
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(folded(x), network(x), **FEATURE_TOLERANCE)


def test_every_batchnorm_kind_is_folded_and_activations_kept():
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),  # a trainable BatchNorm: its running statistics at inference
        nn.Conv2d(8, 8, 1, bias=False),
        BatchNormAct2d(8, act_layer=nn.ReLU),  # timm: BatchNorm then activation, one module
        nn.Conv2d(8, 4, 1),
        frozen(4),
    ).train()
    randomise_statistics(network)
    folded, count = fold_batchnorms(network)
    assert count == 3
    assert network.training and network[0].weight.requires_grad  # the original is untouched
    x = torch.randn(2, 3, 11, 10)
    expected = network.eval()(x)
    torch.testing.assert_close(folded(x), expected, **FEATURE_TOLERANCE)
    assert any(isinstance(m, nn.ReLU) for m in folded.modules())  # BatchNormAct2d's activation survives


class SharedConvOutput(nn.Module):
    """The convolution's output is read by the BatchNorm and by the residual: folding would change both."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.norm = frozen(4)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


class DataDependentBranch(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.norm = frozen(4)

    def forward(self, x):
        if x.mean() > 100:
            return x
        return self.norm(self.conv(x))


class ConvCalledTwice(nn.Module):
    """One convolution at two places, only one of them followed by a BatchNorm: shared weights."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.norm = frozen(4)

    def forward(self, x):
        return self.norm(self.conv(x)) + self.conv(x)


def test_pairs_the_data_flow_does_not_allow_are_kept():
    torch.manual_seed(0)
    network = nn.Sequential(
        SharedConvOutput(), DataDependentBranch(), ConvCalledTwice(), nn.Conv2d(4, 4, 1), frozen(4)
    )
    randomise_statistics(network)
    folded, count = fold_batchnorms(network)
    assert count == 1  # only the last pair
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(folded(x), network(x), **FEATURE_TOLERANCE)


# ------------------------------------------------------------------ the backbone's inference copy


@pytest.fixture(scope="module")
def batch():
    return scene_batch()


@pytest.fixture()
def model():
    torch.manual_seed(0)
    # Score threshold 0: every image keeps detections to compare, also after the training step.
    model = PersonSearchModel(tiny_config(freeze_batchnorm=True, freeze_stem=True, box_score_thresh=0.0))
    randomise_statistics(model.backbone.body)
    return model.eval()


def infer(model, pixel_batch, fold: bool):
    model.eval()
    model.backbone.fold_batchnorm = fold
    with torch.no_grad():
        return model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])


def assert_same_detections(plain, optimised):
    """Same detections up to float rounding; detections with equal scores may come in either order, so each
    plain detection is paired with the optimised one nearest in box and score."""
    for boxes, scores, embeddings, o_boxes, o_scores, o_embeddings in zip(
        plain.boxes, plain.scores, plain.embeddings, optimised.boxes, optimised.scores, optimised.embeddings
    ):
        assert len(boxes) == len(o_boxes) > 0
        distance = torch.cdist(torch.cat([boxes, scores[:, None]], 1), torch.cat([o_boxes, o_scores[:, None]], 1))
        nearest = distance.argmin(1)
        assert sorted(nearest.tolist()) == list(range(len(boxes)))  # one-to-one
        assert (boxes - o_boxes[nearest]).abs().max() < BOX_TOLERANCE_PX
        assert (scores - o_scores[nearest]).abs().max() < SCORE_TOLERANCE
        assert (embeddings - o_embeddings[nearest]).abs().max() < EMBEDDING_TOLERANCE


def test_optimised_inference_gives_the_plain_detections_and_query_embeddings(model, batch):
    pixel_batch, labels = batch
    plain = infer(model, pixel_batch, fold=False)
    assert model.backbone._inference_copy is None  # the plain path built nothing
    optimised = infer(model, pixel_batch, fold=True)
    encoder, box_head = model.backbone.inference_parts()
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in [*encoder.modules(), *box_head.modules()])
    assert_same_detections(plain, optimised)
    queries = [target["boxes"] for target in labels]
    args = (pixel_batch["pixel_values"], queries, pixel_batch["image_sizes"])
    model.backbone.fold_batchnorm = False
    plain_queries = model.embed_boxes(*args)
    model.backbone.fold_batchnorm = True
    for a, b in zip(plain_queries, model.embed_boxes(*args)):
        torch.testing.assert_close(b, a, rtol=0, atol=EMBEDDING_TOLERANCE)


def test_optimised_inference_leaves_state_dict_and_saved_weights_unchanged(model, batch, tmp_path):
    from safetensors.torch import load_file

    pixel_batch, _ = batch
    model.save_pretrained(tmp_path / "before")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    infer(model, pixel_batch, fold=True)
    assert model.backbone._inference_copy is not None
    after = model.state_dict()
    assert list(after) == list(state)
    for key, value in state.items():
        assert torch.equal(after[key], value) and after[key].stride() == value.stride(), key
    model.save_pretrained(tmp_path / "after")
    saved_before, saved_after = (
        load_file(tmp_path / "before/model.safetensors"),
        load_file(tmp_path / "after/model.safetensors"),
    )
    assert saved_before.keys() == saved_after.keys()
    for key in saved_before:
        assert torch.equal(saved_before[key], saved_after[key]), key
    assert not any("inference" in name for name, _ in model.named_modules())


def test_training_after_inference_works_and_the_next_inference_sees_the_new_weights(model, batch):
    pixel_batch, labels = batch
    infer(model, pixel_batch, fold=True)
    stale = model.backbone._inference_copy
    trainable = [p for p in model.parameters() if p.requires_grad]
    backbone_weight = model.backbone.body.layer3[0].conv1.weight
    before = backbone_weight.detach().clone()
    optimizer = torch.optim.SGD(trainable, lr=1e-3)
    model.train()
    output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"], labels=labels)
    output.loss.backward()
    assert backbone_weight.grad is not None and backbone_weight.grad.abs().sum() > 0  # the original modules train
    optimizer.step()
    assert not torch.equal(backbone_weight, before)
    optimised = infer(model, pixel_batch, fold=True)
    assert model.backbone._inference_copy is not stale  # rebuilt for the new weights
    with torch.no_grad():
        stale_features = stale[1](pixel_batch["pixel_values"])
        assert not torch.allclose(stale_features, model.encode(pixel_batch["pixel_values"]), **FEATURE_TOLERANCE)
    assert_same_detections(infer(model, pixel_batch, fold=False), optimised)


def test_weights_loaded_in_eval_mode_rebuild_the_copy(model, batch):
    pixel_batch, _ = batch
    infer(model, pixel_batch, fold=True)
    stale = model.backbone._inference_copy
    state = model.state_dict()
    state["backbone.body.layer3.0.bn1.running_mean"] = state["backbone.body.layer3.0.bn1.running_mean"] + 1.0
    model.load_state_dict(state)  # in eval mode: no train() call in between
    optimised = infer(model, pixel_batch, fold=True)
    assert model.backbone._inference_copy is not stale
    assert_same_detections(infer(model, pixel_batch, fold=False), optimised)


def test_weights_made_under_inference_mode_run_the_modules_as_built(batch):
    pixel_batch, _ = batch
    with torch.inference_mode():  # such tensors have no version counter: weight changes could not be seen
        torch.manual_seed(0)
        model = PersonSearchModel(tiny_config(freeze_batchnorm=True, box_score_thresh=0.0)).eval()
        output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])
    assert model.backbone._inference_copy is None and len(output.boxes[0]) > 0


def test_eval_mode_with_gradients_runs_the_original_modules(model, batch):
    pixel_batch, _ = batch
    model.eval()
    features = model.encode(pixel_batch["pixel_values"])
    features.sum().backward()
    assert model.backbone._inference_copy is None
    assert model.backbone.body.layer3[0].conv1.weight.grad.abs().sum() > 0


@pytest.mark.slow  # torch.compile's first call compiles for ~1 min on 2 CPU cores
def test_compiled_inference_copy_gives_the_plain_detections(model, batch):
    pixel_batch, _ = batch
    plain = infer(model, pixel_batch, fold=False)
    model.backbone.compile_inference = True
    compiled = infer(model, pixel_batch, fold=True)
    assert model.backbone._inference_copy[0][0] is True  # the cached copy is the compiled one
    assert_same_detections(plain, compiled)
