"""AlignPS starts from the backbones the paper compares: ImageNet weights (timm/torchvision layout), the paper's
released layout ({"state_dict": ...} with the classifier), and the backbone of our pre-trained checkpoint (the only
part the two families share); every load reports what it took and what it left."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from hf_personsearch import AlignPSConfig, AlignPSModel, PersonSearchConfig, PersonSearchModel
from hf_personsearch.hub import load_backbone_weights, load_checkpoint_backbone, summarise_keys


def _align_ps(**overrides) -> AlignPSModel:
    values = dict(backbone="test_resnet", fpn_channels=32, head_norm_groups=8, num_person_ids=4, oim_queue_size=4)
    return AlignPSModel(AlignPSConfig(**{**values, **overrides}))


def _assert_body_equal(model, expected: dict):
    for key, value in model.backbone.body.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, expected[key]), key


def test_imagenet_file_in_the_papers_layout_loads_and_its_classifier_is_left(tmp_path):
    torch.manual_seed(1)
    imagenet = timm.create_model("test_resnet")  # with its classifier (fc), as ImageNet weights come
    path = tmp_path / "resnet-ps.pth"
    torch.save({"state_dict": imagenet.state_dict()}, path)
    torch.manual_seed(0)
    model = _align_ps()
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    report = load_backbone_weights(model, path)
    _assert_body_equal(model, imagenet.state_dict())
    left = [key for key in report.ignored_keys if not key.endswith("num_batches_tracked")]  # frozen BatchNorms
    assert {key.split(".")[0] for key in left} == {"fc"}
    assert model.config.backbone_init == "resnet-ps.pth"
    for key, value in model.state_dict().items():
        if key in heads_before:
            assert torch.equal(value, heads_before[key]), key  # heads untouched


def test_backbone_of_our_person_search_checkpoint_is_taken_and_its_heads_left(tmp_path):
    torch.manual_seed(2)
    checkpoint = PersonSearchModel(PersonSearchConfig(backbone="test_resnet", num_person_ids=5, oim_queue_size=3))
    checkpoint.save_pretrained(tmp_path / "nae")
    model = _align_ps(freeze_batchnorm=False)  # BatchNorm counters: absent in the frozen checkpoint, kept here
    report = load_checkpoint_backbone(model, tmp_path / "nae")
    _assert_body_equal(model, checkpoint.backbone.body.state_dict())
    assert len(report.loaded_keys) == len(checkpoint.backbone.body.state_dict())
    assert summarise_keys(report.ignored_keys) == {
        "rpn": sum(1 for key in checkpoint.state_dict() if key.startswith("rpn.")),
        "search_head": sum(1 for key in checkpoint.state_dict() if key.startswith("search_head.")),
    }
    assert model.config.backbone_init == "nae (backbone)"


def test_pre_training_checkpoint_layout_and_mismatches_are_named(tmp_path):
    body = timm.create_model("test_resnet", features_only=True).state_dict()
    folder = tmp_path / "pretrain"
    folder.mkdir()
    tensors = {f"person_search.backbone.body.{key}": value for key, value in body.items()}
    tensors["prediction_mlp.0.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"model_type": "person_search_pretrain", "person_search": {"backbone": "test_resnet"}}
    (folder / "config.json").write_text(json.dumps(config))
    model = _align_ps()
    report = load_checkpoint_backbone(model, folder)
    _assert_body_equal(model, body)
    assert report.ignored_keys == ["prediction_mlp.0.weight"]

    config["person_search"]["backbone"] = "resnet18"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="its backbone is 'resnet18', the model's is 'test_resnet'"):
        load_checkpoint_backbone(model, folder)
    with pytest.raises(OSError, match="not a saved person search model"):
        load_checkpoint_backbone(model, tmp_path / "missing")
