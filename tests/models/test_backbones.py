"""Every backbone family the paper and users need builds, trains one step and round-trips exactly."""

import pytest
import torch
from tiny_models import scene_batch, tiny_config

from hf_personsearch import PersonSearchModel

BACKBONES = [
    ("resnet50", "timm", 1024, 2048),  # the paper's main backbone (NAE split: layer1-3 / layer4)
    ("resnet18", "timm", 256, 512),
    ("lcnet_050", "timm", 128, 256),  # a small mobile timm model
    ("shufflenet_v2_x1_0", "torchvision", 232, 1024),  # the paper's third backbone; timm has none
]


@pytest.mark.parametrize("name, library, encoder_channels, head_channels", BACKBONES)
def test_backbone_builds_trains_one_step_and_round_trips(name, library, encoder_channels, head_channels, tmp_path):
    torch.manual_seed(0)
    model = PersonSearchModel(
        tiny_config(backbone=name, backbone_library=library, freeze_batchnorm=True, freeze_stem=True)
    )
    assert (model.backbone.encoder_channels, model.backbone.head_channels) == (encoder_channels, head_channels)
    assert model.backbone.encoder_stride == 16
    batch, labels = scene_batch(((0, 1),))
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=0.01)
    model.train()
    output = model(batch["pixel_values"], batch["image_sizes"], labels=labels)
    output.loss.backward()
    optimizer.step()
    assert torch.isfinite(output.loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))

    model.save_pretrained(tmp_path)
    loaded = PersonSearchModel.from_pretrained(tmp_path)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        a = model(batch["pixel_values"], batch["image_sizes"])
        b = loaded(batch["pixel_values"], batch["image_sizes"])
    assert torch.equal(a.boxes[0], b.boxes[0]) and torch.equal(a.embeddings[0], b.embeddings[0])


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="not a timm model name"):
        PersonSearchModel(tiny_config(backbone="no_such_net"))
    with pytest.raises(ValueError, match="shufflenet_v2"):
        PersonSearchModel(tiny_config(backbone="resnet50", backbone_library="torchvision"))
