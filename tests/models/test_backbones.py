"""Every backbone family the paper and users need builds, trains one step and round-trips exactly; the
builtin ShuffleNet V1 takes the paper's megvii-layout weights; frozen BatchNorms stay frozen and load any file."""

import pytest
import torch
from tiny_models import scene_batch, tiny_config
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from hf_personsearch import PersonSearchModel
from hf_personsearch.hub import load_backbone_weights
from hf_personsearch.shufflenet_v1 import ShuffleUnit

BACKBONES = [
    ("resnet50", "timm", 1024, 2048),  # the paper's main backbone (NAE split: layer1-3 / layer4)
    ("resnet18", "timm", 256, 512),
    ("lcnet_050", "timm", 128, 256),  # a small mobile timm model
    ("shufflenet_v2_x1_0", "torchvision", 232, 1024),  # timm has no ShuffleNet
    ("shufflenet_v1_g3_x1_0", "builtin", 480, 960),  # the paper's third backbone (ShuffleNet V1, g=3, 1.0x)
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
    with pytest.raises(ValueError, match="unknown ShuffleNet V1 'shufflenet_v1_g4_x1_0'"):
        PersonSearchModel(tiny_config(backbone="shufflenet_v1_g4_x1_0", backbone_library="builtin"))


def megvii_shufflenet_v1_layout(groups: int = 3, stage_channels=(24, 240, 480, 960)) -> dict[str, tuple]:
    """Key -> shape of megvii ShuffleNet-Series' ShuffleNetV1 (network.py / blocks.py) state dict, written out
    from that code: first_conv = Conv(3->c0, 3x3) + BN; 16 ShuffleV1Blocks (4, 8, 4 per stage), each with
    branch_main_1 = [pw conv (groups=1 in the very first block), BN, ReLU, dw conv 3x3, BN] and
    branch_main_2 = [pw-linear group conv to out (- in when stride 2), BN], mid = out // 4; classifier =
    [Linear(c4, 1000, bias=False)]."""
    layout = {"first_conv.0.weight": (stage_channels[0], 3, 3, 3)}

    def batchnorm(prefix, channels):
        for name in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{prefix}.{name}"] = (channels,)
        layout[f"{prefix}.num_batches_tracked"] = ()

    batchnorm("first_conv.1", stage_channels[0])
    index, inp = 0, stage_channels[0]
    for stage, repeats in enumerate((4, 8, 4)):
        oup = stage_channels[stage + 1]
        for unit in range(repeats):
            mid, outputs = oup // 4, oup - inp if unit == 0 else oup
            first_groups = 1 if stage == 0 and unit == 0 else groups
            prefix = f"features.{index}"
            layout[f"{prefix}.branch_main_1.0.weight"] = (mid, inp // first_groups, 1, 1)
            batchnorm(f"{prefix}.branch_main_1.1", mid)
            layout[f"{prefix}.branch_main_1.3.weight"] = (mid, 1, 3, 3)
            batchnorm(f"{prefix}.branch_main_1.4", mid)
            layout[f"{prefix}.branch_main_2.0.weight"] = (outputs, mid // groups, 1, 1)
            batchnorm(f"{prefix}.branch_main_2.1", outputs)
            index, inp = index + 1, oup
    layout["classifier.0.weight"] = (1000, stage_channels[3])
    return layout


@pytest.mark.parametrize("freeze_batchnorm", [True, False])
def test_shufflenet_v1_imports_the_papers_megvii_layout_strictly(freeze_batchnorm, tmp_path):
    layout = megvii_shufflenet_v1_layout()
    assert len(layout) == 1 + 5 + 16 * (3 + 3 * 5) + 1
    torch.manual_seed(0)
    state = {key: torch.randn(shape) if shape else torch.tensor(5) for key, shape in layout.items()}
    state = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in state.items()}
    torch.save({"state_dict": state}, tmp_path / "shufflenetv1-ps19.pth")  # the psvis file's structure
    model = PersonSearchModel(
        tiny_config(backbone="shufflenet_v1_g3_x1_0", backbone_library="builtin", freeze_batchnorm=freeze_batchnorm)
    )
    report = load_backbone_weights(model, tmp_path / "shufflenetv1-ps19.pth")
    counters = {key for key in layout if key.endswith("num_batches_tracked")}
    own = model.backbone.body.state_dict()
    # every weight of the file lands in the backbone, nothing of the backbone is left at its init
    assert (
        set(report.loaded_keys)
        == set(own)
        == set(layout) - {"classifier.0.weight"} - (counters if freeze_batchnorm else set())
    )
    assert set(report.ignored_keys) == {"classifier.0.weight"} | (counters if freeze_batchnorm else set())
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def test_shufflenet_v1_channel_shuffle_is_megvii_s():
    # megvii: reshape(B, C // g, g, H, W).permute(0, 2, 1, 3, 4): channels 0..5 with g=3 -> 0, 3, 1, 4, 2, 5
    unit = ShuffleUnit(24, 240, groups=3, stride=2, first_unit=True)
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert unit._channel_shuffle(x).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_frozen_batchnorm_replaces_batchnorm_and_loads_checkpoints_of_either_setting(tmp_path):
    torch.manual_seed(0)
    trained = PersonSearchModel(tiny_config(freeze_batchnorm=False))  # BatchNorm2d, with num_batches_tracked
    with torch.no_grad():
        for module in trained.backbone.body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.num_batches_tracked.fill_(9)
    trained.save_pretrained(tmp_path / "unfrozen")
    frozen = PersonSearchModel.from_pretrained(tmp_path / "unfrozen", freeze_batchnorm=True, dtype=torch.float32)
    batchnorms = [m for m in frozen.backbone.body.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert batchnorms and all(isinstance(m, FrozenBatchNorm2d) for m in batchnorms)
    assert not any("num_batches_tracked" in key for key in frozen.state_dict() if key.startswith("backbone."))
    for key, value in frozen.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key
    # frozen: train() and an SGD step change nothing in the BatchNorms (no train() override needed)
    frozen.train()
    pixel_batch, labels = scene_batch(((0, 1),))
    frozen_names = {name for name, m in frozen.backbone.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    before = {k: v.clone() for k, v in frozen.backbone.state_dict().items() if k.rsplit(".", 1)[0] in frozen_names}
    assert len(before) == 4 * len(batchnorms)
    frozen(pixel_batch["pixel_values"], pixel_batch["image_sizes"], labels=labels).loss.backward()
    torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.1).step()
    for key, value in before.items():
        assert torch.equal(frozen.backbone.state_dict()[key], value), key
    # and back: a frozen checkpoint (no counters) into BatchNorm2d starts the counters at 0, not garbage
    frozen.save_pretrained(tmp_path / "frozen")
    unfrozen = PersonSearchModel.from_pretrained(tmp_path / "frozen", freeze_batchnorm=False, dtype=torch.float32)
    counters = {k: v for k, v in unfrozen.state_dict().items() if k.endswith("num_batches_tracked")}
    assert counters and all(v.item() == 0 for k, v in counters.items() if k.startswith("backbone."))
    for key, value in frozen.state_dict().items():
        assert torch.equal(value, unfrozen.state_dict()[key]), key


@pytest.mark.parametrize("stride, in_channels", [(1, 24), (2, 12)])
@torch.no_grad()
def test_shufflenet_v1_unit_computes_megvii_s_forward(stride, in_channels):
    # megvii's ShuffleV1Block.forward, spelled out with functional ops on the unit's own weights:
    # pw group conv, BN, ReLU, dw conv, BN, channel shuffle, pw-linear group conv, BN; then
    # relu(main + x) (stride 1) or cat(avgpool(x), relu(main)) (stride 2)
    torch.manual_seed(0)
    unit = ShuffleUnit(in_channels, 24, groups=3, stride=stride, first_unit=False).eval()
    for module in unit.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)
    pw, bn1, _, dw, bn2 = unit.branch_main_1
    pw_linear, bn3 = unit.branch_main_2

    def batchnorm(x, bn):
        return nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    x = torch.randn(2, in_channels, 8, 8)
    main = torch.relu(batchnorm(nn.functional.conv2d(x, pw.weight, groups=3), bn1))
    main = batchnorm(nn.functional.conv2d(main, dw.weight, stride=stride, padding=1, groups=6), bn2)
    main = main.reshape(2, 2, 3, *main.shape[2:]).permute(0, 2, 1, 3, 4).reshape(main.shape)
    main = batchnorm(nn.functional.conv2d(main, pw_linear.weight, groups=3), bn3)
    if stride == 1:
        expected = torch.relu(main + x)
    else:
        expected = torch.cat((nn.functional.avg_pool2d(x, 3, 2, 1), torch.relu(main)), dim=1)
    torch.testing.assert_close(unit(x), expected)


def test_training_encoder_takes_channels_last_input_with_the_same_values_and_gradients():
    """On CPU the training path feeds the encoder a channels-last input (oneDNN skips a reorder per convolution);
    the map and the weight gradients are those of the contiguous input, to float rounding."""
    torch.manual_seed(0)
    backbone = PersonSearchModel(tiny_config(backbone="test_resnet")).backbone.train()
    pixels = torch.randn(2, 3, 64, 96)
    features = backbone.encode(pixels)
    assert features.is_contiguous(memory_format=torch.channels_last)
    features.square().sum().backward()
    gradients = [p.grad.clone() for p in backbone.parameters() if p.grad is not None]
    backbone.zero_grad()
    reference = backbone._run(backbone._encoder_names, pixels.contiguous())
    assert reference.is_contiguous()  # the layout the weights keep: the comparison runs the other kernels
    reference.square().sum().backward()
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-5)
    for gradient, parameter in zip(gradients, [p for p in backbone.parameters() if p.grad is not None]):
        # Float rounding relative to the gradient's scale (a near-zero BatchNorm bias gradient moves by 1e-4).
        torch.testing.assert_close(gradient, parameter.grad, rtol=1e-3, atol=1e-3 * float(parameter.grad.abs().max()))
    assert all(p.is_contiguous() for p in backbone.parameters())
