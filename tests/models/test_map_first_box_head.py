"""MapFirstBoxHead: a box head's leading 1x1 convolutions run on the encoder map before the RoIAlign give the head's
output (RoIAlign and a 1x1 convolution commute), are chosen only when the RoIs outnumber the map, and a whole
bottleneck-ResNet model's inference gives the detections of its modules as built."""

from dataclasses import dataclass, field

import pytest
import torch
import torch.fx
from test_batchnorm_folding import assert_same_detections, randomise_statistics
from test_roi_align import edge_case_boxes, random_boxes
from tiny_models import scene_batch, tiny_config
from torch import nn

from hf_personsearch import PersonSearchModel
from hf_personsearch.inference_copy import build_inference_parts
from hf_personsearch.map_first_box_head import MapFirstBoxHead
from hf_personsearch.roi_align import EncoderRoIAlign, RoIPooling, roi_align


@pytest.mark.parametrize("sampling_ratio", [2, 0], ids=["sparse", "torchvision"])
@pytest.mark.parametrize("bin_step", [2, 3])
def test_roi_align_bin_step_keeps_every_step_th_bin(sampling_ratio, bin_step):
    generator = torch.Generator().manual_seed(bin_step)
    features = torch.randn(2, 6, 8, 14, generator=generator, dtype=torch.float64)
    boxes = [torch.cat([random_boxes(generator, 9, 128, 224), edge_case_boxes()]).double(), torch.zeros(0, 4).double()]
    full = roi_align(features, boxes, 14, 1.0 / 16, sampling_ratio)
    kept = roi_align(features, boxes, 14, 1.0 / 16, sampling_ratio, bin_step)
    assert kept.shape == (15, 6, -(-14 // bin_step), -(-14 // bin_step))
    torch.testing.assert_close(kept, full[..., ::bin_step, ::bin_step], rtol=0, atol=1e-12)


class Bottleneck(nn.Module):
    """A ResNet bottleneck as timm writes it: two 1x1 convolutions read the input (conv1, the strided
    downsample), a 3x3 one does not."""

    def __init__(self, channels: int = 6, width: int = 4, out_channels: int = 10, stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1)
        self.conv3 = nn.Conv2d(width, out_channels, 1)
        self.downsample = nn.Conv2d(channels, out_channels, 1, stride=stride)

    def forward(self, x):
        shortcut = self.downsample(x)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(self.conv3(x) + shortcut)


@dataclass
class CountingPooling(RoIPooling):
    """RoIPooling that records the bin step of each call."""

    calls: list = field(default_factory=list)

    def __call__(self, feature_map, bin_step=1):
        self.calls.append(bin_step)
        return super().__call__(feature_map, bin_step)


def pooled_problem(num_boxes: int, seed: int = 0, sampling_ratio: int = 2):
    """A float64 encoder map (2 images of 128 x 224, 8 x 14 at stride 16), boxes on it, their 14 x 14 RoI features
    and their RoIPooling (counting its calls)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 6, 8, 14, generator=generator, dtype=torch.float64)
    boxes = [random_boxes(generator, num_boxes, 128, 224).double(), edge_case_boxes().double()]
    pooling = CountingPooling(EncoderRoIAlign(14, sampling_ratio), boxes, [(128, 224), (128, 224)])
    return features, roi_align(features, boxes, 14, 1.0 / 16, sampling_ratio), pooling


def test_pointwise_convolutions_on_the_map_give_the_heads_output():
    torch.manual_seed(0)
    block = Bottleneck().double().eval()
    head = MapFirstBoxHead.from_traced(torch.fx.symbolic_trace(block))
    assert [conv.stride[0] for conv in head.convolutions] == [2, 1]  # downsample, conv1 (the traced order)
    features, roi_features, pooling = pooled_problem(num_boxes=30)
    with torch.no_grad():
        expected = block(roi_features)
        on_rois = head(roi_features)
        on_map = head(roi_features, features, pooling)
    assert sorted(pooling.calls) == [1, 2]  # both convolutions ran on the map (36 boxes: 7,056 RoI locations vs 224)
    torch.testing.assert_close(on_rois, expected, rtol=0, atol=1e-12)
    # The bias is added after the pooling: boxes over the border pool a constant to less than itself.
    torch.testing.assert_close(on_map, expected, rtol=0, atol=1e-12)


def test_a_convolution_stays_on_the_rois_when_they_are_fewer_than_twice_the_map():
    torch.manual_seed(0)
    block = Bottleneck().double().eval()
    head = MapFirstBoxHead.from_traced(torch.fx.symbolic_trace(block))
    # 2 + 6 boxes: 1,568 RoI locations for conv1 (> 2 x 224, on the map), 392 for the stride-2 downsample (not)
    features, roi_features, pooling = pooled_problem(num_boxes=2)
    with torch.no_grad():
        output = head(roi_features, features, pooling)
    assert pooling.calls == [1]
    torch.testing.assert_close(output, block(roi_features), rtol=0, atol=1e-12)


def test_the_head_runs_as_traced_where_roialign_is_torchvisions():
    """torchvision's kernel (CUDA; adaptive sampling, here on the CPU) pools every bin, and the map path was
    measured on the sparse CPU RoIAlign only: no convolution moves."""
    torch.manual_seed(0)
    block = Bottleneck().double().eval()
    head = MapFirstBoxHead.from_traced(torch.fx.symbolic_trace(block))
    features, roi_features, pooling = pooled_problem(num_boxes=30, sampling_ratio=0)
    with torch.no_grad():
        output = head(roi_features, features, pooling)
    assert pooling.calls == []
    torch.testing.assert_close(output, block(roi_features), rtol=0, atol=1e-12)


def test_heads_without_pointwise_convolutions_on_their_input_are_not_converted():
    class Basic(nn.Module):  # ResNet's BasicBlock: a 3x3 convolution and an average-pooled shortcut
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 3, padding=1)
            self.pool = nn.AvgPool2d(2)

        def forward(self, x):
            return self.pool(self.conv(x) + x)

    assert MapFirstBoxHead.from_traced(torch.fx.symbolic_trace(Basic())) is None
    padded = nn.Sequential(nn.Conv2d(6, 6, 1, padding=1))  # pads: a location of its output is not one of its input
    assert MapFirstBoxHead.from_traced(torch.fx.symbolic_trace(padded)) is None


def test_resnet_layer4_copy_runs_its_conv1_and_downsample_on_the_map():
    """timm's ResNet-26 (ResNet-50's bottlenecks): the inference copy of layer4 moves the two convolutions."""
    from hf_personsearch.backbone import SplitBackbone

    backbone = SplitBackbone("resnet26", freeze_batchnorm=True)
    randomise_statistics(backbone.body)
    encoder, head = build_inference_parts(*(nn.Sequential(*parts) for parts in _parts(backbone)))
    assert isinstance(head, MapFirstBoxHead)
    assert [(conv.in_channels, conv.out_channels, conv.stride[0]) for conv in head.convolutions] == [
        (1024, 512, 1),
        (1024, 2048, 2),
    ]


def _parts(backbone):
    modules = backbone._modules_by_name
    return [modules[name] for name in backbone._encoder_names], [modules[name] for name in backbone._head_names]


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_bottleneck_model_inference_on_each_device_gives_the_plain_detections(device, monkeypatch):
    """A whole model whose box head starts with 1x1 convolutions (ResNet-26): the default inference, which runs
    them on the encoder map here on the CPU (150 proposals of 8 x 8 against 3 maps of 8 x 10; on CUDA the head
    runs as traced), detects what the modules as built detect, and builds each sampling matrix once."""
    import hf_personsearch.roi_align as roi_align_module

    torch.manual_seed(0)
    model = PersonSearchModel(
        tiny_config(backbone="resnet26", freeze_batchnorm=True, freeze_stem=True, box_score_thresh=0.0)
    )
    randomise_statistics(model.backbone.body)
    model.to(device).eval()
    pixel_batch, _ = scene_batch()
    pixel_batch["pixel_values"] = pixel_batch["pixel_values"].to(device)
    bin_steps, builds = [], []
    roi_align = model.search_head.roi_align
    original = roi_align.forward
    roi_align.forward = lambda *args: bin_steps.append(args[3] if len(args) > 3 else 1) or original(*args)
    build = roi_align_module.sampling_matrix
    monkeypatch.setattr(roi_align_module, "sampling_matrix", lambda *args: builds.append(args[-1]) or build(*args))
    with torch.no_grad():
        model.backbone.fold_batchnorm = False
        plain = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])
        assert bin_steps == [1]
        model.backbone.fold_batchnorm = True
        optimised = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])
    # the RoI features, then (on the sparse CPU RoIAlign) conv1's and the downsample's maps
    assert bin_steps[1:] == ([1, 1, 2] if device == "cpu" else [1])
    if device == "cpu":  # plain: one matrix; default: one for the RoI features and conv1's map, one strided
        assert builds == [1, 1, 2]
    assert_same_detections(plain, optimised)
