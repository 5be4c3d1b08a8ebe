"""Backbone weights out (torchvision / timm layouts) and in (paper layout, ImageNet files), checked by loading
them strictly into torchvision / timm models and comparing features with our backbone."""

import types

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from hf_personsearch import PersonSearchConfig, PersonSearchModel
from hf_personsearch.hub import backbone_state_dict, export_backbone, load_backbone_weights, read_state_dict
from hf_personsearch.hub.export import TORCHVISION_LOAD_LINE, export_formats


def _resnet18_model(seed: int = 0) -> PersonSearchModel:
    """Our model on a timm resnet18 (frozen BatchNorms, the default) with random weights and random BatchNorm
    statistics (so that a wrong or missing buffer changes the features)."""
    torch.manual_seed(seed)
    model = PersonSearchModel(PersonSearchConfig(backbone="resnet18", num_person_ids=4, oim_queue_size=4)).eval()
    with torch.no_grad():
        for module in model.backbone.body.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _torchvision_features(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision ResNet: (layer3 output, layer4 output), the two outputs of our split backbone."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    c4 = net.layer3(net.layer2(net.layer1(x)))
    return c4, net.layer4(c4)


def _our_features(model: PersonSearchModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c4 = model.backbone.encode(x)
    return c4, model.backbone.box_head(c4)


@torch.no_grad()
def test_torchvision_export_loads_strict_and_gives_the_same_features(tmp_path):
    model = _resnet18_model()
    path = export_backbone(model, tmp_path / "resnet18-ps.pth", format="torchvision")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["state_dict"]  # the paper's released layout
    assert not any(key.startswith(("backbone.", "module.", "fc.")) for key in checkpoint["state_dict"])
    reference = torchvision.models.resnet18(weights=None)
    reference.fc = nn.Identity()
    reference.load_state_dict(checkpoint["state_dict"], strict=True)
    reference.eval()
    x = torch.randn(2, 3, 64, 96)
    for ours, theirs in zip(_our_features(model, x), _torchvision_features(reference, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_timm_export_loads_strict_into_timm_and_back_into_our_backbone(tmp_path):
    model = _resnet18_model()
    path = export_backbone(model, tmp_path / "resnet18.safetensors", format="timm")
    reference = timm.create_model("resnet18", num_classes=0)
    from safetensors.torch import load_file

    reference.load_state_dict(load_file(str(path)), strict=True)
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(reference.forward_features(x), _our_features(model, x)[1], rtol=1e-5, atol=1e-5)
    reloaded = _resnet18_model(seed=1)
    report = load_backbone_weights(reloaded, path)
    assert report.ignored_keys == sorted(k for k in load_file(str(path)) if k.endswith(".num_batches_tracked"))
    assert reloaded.config.backbone_init == "resnet18.safetensors"  # the file name only, never the folder
    for ours, theirs in zip(_our_features(reloaded, x), _our_features(model, x)):
        torch.testing.assert_close(ours, theirs)


@torch.no_grad()
def test_import_paper_layout_and_imagenet_files(tmp_path):
    torch.manual_seed(1)
    released = torchvision.models.resnet18(weights=None).eval()  # stands in for resnet18-ps15.pth / ImageNet
    torch.save({"state_dict": released.state_dict()}, tmp_path / "resnet18-ps15.pth")
    torch.save(released.state_dict(), tmp_path / "resnet18-imagenet.pth")
    for name in ("resnet18-ps15.pth", "resnet18-imagenet.pth"):
        model = _resnet18_model(seed=0)
        report = load_backbone_weights(model, tmp_path / name)
        counters = sorted(k for k in released.state_dict() if k.endswith(".num_batches_tracked"))
        assert len(counters) == 20  # a frozen BatchNorm has no counter: the file's are ignored, not an error
        assert report.ignored_keys == sorted(["fc.bias", "fc.weight", *counters])
        assert report.loaded_keys == sorted(model.backbone.body.state_dict())
        x = torch.randn(1, 3, 64, 64)
        for ours, theirs in zip(_our_features(model, x), _torchvision_features(released, x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_import_strips_data_parallel_prefix_and_rejects_other_prefixes(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    assert set(read_state_dict(tmp_path / "ddp.pth")) == set(state)
    torch.save({f"backbone.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pth")
    with pytest.raises(ValueError, match=r"prefixed.pth: does not fit the backbone: missing keys \['bn1.bias'"):
        load_backbone_weights(_resnet18_model(), tmp_path / "prefixed.pth")
    wrong = dict(state, **{"layer1.0.conv1.weight": torch.zeros(1)})
    torch.save(wrong, tmp_path / "wrong_shape.pth")
    with pytest.raises(
        ValueError, match=r"wrong shapes \['layer1.0.conv1.weight: file \(1,\), backbone \(64, 64, 3, 3\)"
    ):
        load_backbone_weights(_resnet18_model(), tmp_path / "wrong_shape.pth")


class _NotATensor:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_import_never_unpickles_arbitrary_objects(tmp_path):
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        read_state_dict(tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")


def test_export_refuses_layouts_the_backbone_does_not_have(tmp_path):
    tiny = PersonSearchModel(PersonSearchConfig(backbone="test_resnet", num_person_ids=4, oim_queue_size=4))
    with pytest.raises(
        ValueError, match="does not have the layout of torchvision.models.test_resnet|not a torchvision"
    ):
        backbone_state_dict(tiny, format="torchvision")
    with pytest.raises(ValueError, match="must end with .safetensors"):
        export_backbone(tiny, tmp_path / "x.pth", format="timm")
    with pytest.raises(ValueError, match="format must be one of"):
        backbone_state_dict(tiny, format="mmdet")


@torch.no_grad()
def test_torchvision_shufflenet_and_pretraining_wrapper(tmp_path):
    torch.manual_seed(0)
    model = PersonSearchModel(
        PersonSearchConfig(
            backbone="shufflenet_v2_x0_5", backbone_library="torchvision", num_person_ids=4, oim_queue_size=4
        )
    ).eval()
    wrapper = types.SimpleNamespace(person_search=model)  # the pre-training model holds the model like this
    path = export_backbone(wrapper, tmp_path / "shufflenet.pth", format="torchvision")
    reference = torchvision.models.shufflenet_v2_x0_5(weights=None)
    reference.fc = nn.Identity()
    reference.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    expected = reference.conv5(
        reference.stage4(reference.stage3(reference.stage2(reference.maxpool(reference.conv1(x)))))
    )
    torch.testing.assert_close(model.backbone.box_head(model.backbone.encode(x)), expected)
    with pytest.raises(ValueError, match="has no timm layout"):
        backbone_state_dict(model, format="timm")


@pytest.fixture
def fake_timm_hub(monkeypatch, tmp_path):
    """timm's Hugging Face download replaced by a read of a local torchvision resnet18 file (nothing is
    downloaded); returns the file's state dict and the list of repositories timm asked for."""
    torch.manual_seed(2)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18-hub.pth")
    requested = []

    def load_state_dict_from_hf(model_id, filename="pytorch_model.bin", weights_only=True, cache_dir=None):
        requested.append(model_id)
        return torch.load(tmp_path / "resnet18-hub.pth", weights_only=True)

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", load_state_dict_from_hf)
    return state, requested


@torch.no_grad()
def test_timm_tag_is_fetched_by_timm_and_loaded(fake_timm_hub):
    state, requested = fake_timm_hub
    model = _resnet18_model()
    report = load_backbone_weights(model, "resnet18.tv_in1k")
    assert requested == ["timm/resnet18.tv_in1k"]
    assert report.source == "resnet18.tv_in1k"
    assert report.loaded_keys == sorted(model.backbone.body.state_dict())
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.config.backbone_init == "resnet18.tv_in1k"


def test_timm_tag_errors_name_the_problem(fake_timm_hub, tmp_path):
    model = _resnet18_model()
    with pytest.raises(ValueError, match="for architecture 'resnet50' but the backbone is 'resnet18'"):
        load_backbone_weights(model, "resnet50.tv_in1k")
    with pytest.raises(ValueError, match=r"'resnet18.no_such_tag' is not a timm pretrained tag.*local weights file"):
        load_backbone_weights(model, "resnet18.no_such_tag")
    with pytest.raises(FileNotFoundError, match="no such file, and not a timm pretrained tag"):
        load_backbone_weights(model, tmp_path / "resnet18.tv_in1k")  # a Path is always a file
    with pytest.raises(FileNotFoundError, match="'missing.pth': no such file"):
        load_backbone_weights(model, "missing.pth")
    shufflenet = PersonSearchModel(
        PersonSearchConfig(
            backbone="shufflenet_v2_x0_5", backbone_library="torchvision", num_person_ids=4, oim_queue_size=4
        )
    )
    with pytest.raises(ValueError, match="comes from torchvision, not timm.*local weights file"):
        load_backbone_weights(shufflenet, "resnet18.tv_in1k")
    assert fake_timm_hub[1] == []  # no error path reached the download


def test_timm_tag_offline_with_an_empty_cache_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(
        OSError, match=r"could not fetch the timm weights 'resnet18.tv_in1k'.*Offline\?.*local weights"
    ):
        load_backbone_weights(_resnet18_model(), "resnet18.tv_in1k")


def test_pretraining_model_backbone_loads_and_records_its_start(tmp_path):
    from hf_personsearch.configuration_person_search_pretrain import PersonSearchPretrainConfig
    from hf_personsearch.modeling_person_search_pretrain import PersonSearchPretrainModel

    torch.manual_seed(3)
    start = timm.create_model("test_resnet", features_only=True)
    torch.save({"state_dict": start.state_dict()}, tmp_path / "start.pth")
    config = PersonSearchPretrainConfig(
        person_search=PersonSearchConfig(backbone="test_resnet", num_person_ids=4, oim_queue_size=4)
    )
    model = PersonSearchPretrainModel(config)
    report = load_backbone_weights(model, tmp_path / "start.pth")  # what run_pretrain's model_init does
    for key in report.loaded_keys:
        assert torch.equal(model.person_search.backbone.body.state_dict()[key], start.state_dict()[key]), key
    assert model.config.person_search.backbone_init == "start.pth"
    assert model.export_person_search_model().config.backbone_init == "start.pth"


@torch.no_grad()
def test_the_documented_torchvision_line_loads_the_export_strict(tmp_path):
    model = _resnet18_model()
    path = export_backbone(model, tmp_path / "resnet18-ps.pth", format="torchvision")
    scope = {"torch": torch, "torchvision": torchvision}
    exec(TORCHVISION_LOAD_LINE.format(architecture="resnet18", path=path), scope)  # raises unless strict works
    backbone = scope["backbone"].eval()
    x = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(_our_features(model, x)[1], _torchvision_features(backbone, x)[1])


def test_export_formats_name_only_layouts_that_work():
    def config(backbone, library="timm"):
        return PersonSearchConfig(backbone=backbone, backbone_library=library, num_person_ids=4)

    assert export_formats(config("resnet18")) == ("timm", "torchvision")
    assert export_formats(config("test_resnet")) == ("timm",)  # deep stem: no torchvision twin
    assert export_formats(config("shufflenet_v2_x0_5", "torchvision")) == ("torchvision",)
    assert export_formats(config("shufflenet_v1_g3_x1_0", "builtin")) == ()
    assert export_formats(types.SimpleNamespace(person_search=config("resnet18"))) == ("timm", "torchvision")
