"""Aligned feature aggregation (AFA) of AlignPS: the feature pyramid C3, C4, C5 aggregated into ONE map at
stride 8 whose feature at a location is both the detection head's input and that location's re-ID feature.

AlignPS's "scale alignment": every person is detected and described on the same stride-8 map, so re-ID
features of a person do not depend on which pyramid level its size would select. The top-down path
concatenates (instead of FPN's sum) each level with the upsampled coarser ones, so the stride-8 map keeps
the semantics of C5 and C4 side by side; "region alignment": the lateral and output convolutions are
deformable (``torchvision.ops.deform_conv2d``, offsets predicted from the input), so the feature of a
location is sampled where the person is rather than on a fixed square window.

Built as the public AlignPS neck ``FPNDcnLconv3Dcn`` describes it (3x3 deformable laterals, concatenating top-down
path, one 3x3 deformable output convolution on the finest level). torchvision's FeaturePyramidNetwork sums
its levels and has plain convolutions, so it is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d


class DeformableConv2d(nn.Module):
    """3x3 deformable convolution whose sampling offsets a plain convolution predicts from the same input
    (mmcv's ``DeformConv2dPack``). The offset convolution starts at zero, so the layer starts as a plain 3x3
    convolution and learns where to look."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size, padding=self.padding)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)  # mmdet's FPN init (xavier_init, uniform)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset(x)
        # torchvision's CPU kernel has no bf16 / fp16 version (under autocast the maps arrive in bf16): those run
        # in float32, as torchvision's CUDA autocast rule for this op does, and come back in the input's dtype.
        # float32 and float64 inputs are computed as they are.
        dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        output = deform_conv2d(
            x.to(dtype),
            offset.to(dtype),
            self.weight.to(dtype),
            self.bias.to(dtype),
            padding=(self.padding, self.padding),
        )
        return output.to(x.dtype)


def _conv3x3(in_channels: int, out_channels: int, deformable: bool) -> nn.Module:
    if deformable:
        return DeformableConv2d(in_channels, out_channels)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class AlignedFeatureAggregation(nn.Module):
    """C3, C4, C5 (finest first) -> one (B, out_channels, H3, W3) map at the finest level's stride.

    laterals: L_i = conv3x3(C_i) (out_channels each); top-down, coarsest first:
    M_n = L_n, M_i = concat(L_i, upsample_nearest(M_{i+1})) (so M_1 has n x out_channels);
    output = conv3x3(M_1).

    Args:
        in_channels: channels of the input levels, finest first.
        out_channels: channels of the laterals and of the output (AlignPS: 256).
        deformable: deformable 3x3 convolutions (AlignPS) or plain ones (the "w/o dcn" ablation).
    """

    def __init__(self, in_channels: list[int], out_channels: int, deformable: bool = True):
        super().__init__()
        self.deformable = deformable
        self.laterals = nn.ModuleList(_conv3x3(channels, out_channels, deformable) for channels in in_channels)
        self.output = _conv3x3(len(in_channels) * out_channels, out_channels, deformable)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, DeformableConv2d):
                module.reset_parameters()
            elif isinstance(module, nn.Conv2d) and not self.deformable:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.laterals):
            raise ValueError(f"AlignedFeatureAggregation: expected {len(self.laterals)} levels, got {len(features)}")
        merged = self.laterals[-1](features[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            finer = lateral(feature)
            merged = torch.cat([finer, F.interpolate(merged, size=finer.shape[-2:], mode="nearest")], dim=1)
        return self.output(merged)
