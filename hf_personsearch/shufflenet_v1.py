"""ShuffleNet V1 (Zhang et al., CVPR 2018), the paper's third backbone, without its classifier.

The module and parameter names follow megvii's ShuffleNet-Series PyTorch implementation
(``first_conv.0/1``, ``maxpool``, ``features.<i>.branch_main_1.<j>`` / ``branch_main_2.<j>``), the layout of
its ImageNet checkpoints and of the paper's released ``shufflenetv1-ps19.pth``, so those state dicts load
without renaming (their ``classifier.*`` is left out). Two details of that implementation are kept because
its weights depend on them: the channel shuffle sits after the depthwise convolution (between
``branch_main_1`` and ``branch_main_2``) and reshapes to (channels / groups, groups) before transposing.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

# Output channels of the stem and of stages 2-4 for each (groups, width multiplier): Table 1 of the
# ShuffleNet paper (1.0x) scaled as in megvii's ShuffleNet-Series.
_STAGE_CHANNELS = {
    (3, "0_5"): (12, 120, 240, 480),
    (3, "1_0"): (24, 240, 480, 960),
    (3, "1_5"): (24, 360, 720, 1440),
    (3, "2_0"): (48, 480, 960, 1920),
    (8, "0_5"): (16, 192, 384, 768),
    (8, "1_0"): (24, 384, 768, 1536),
    (8, "1_5"): (24, 576, 1152, 2304),
    (8, "2_0"): (48, 768, 1536, 3072),
}
STAGE_REPEATS = (4, 8, 4)
"""Units of stages 2, 3 and 4 (the first of each has stride 2)."""

_NAME = re.compile(r"shufflenet_v1_g(\d+)_x(\d_\d)")

MODEL_NAMES = tuple(f"shufflenet_v1_g{groups}_x{width}" for groups, width in _STAGE_CHANNELS)
"""Backbone names accepted by :func:`shufflenet_v1`, e.g. ``shufflenet_v1_g3_x1_0`` (groups 3, width 1.0x)."""


class ShuffleUnit(nn.Module):
    """One ShuffleNet unit: 1x1 group conv -> 3x3 depthwise conv -> channel shuffle -> 1x1 group conv, added
    to the input (stride 1) or concatenated with its 3x3 average pool (stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, first_unit: bool):
        super().__init__()
        self.stride = stride
        self.groups = groups
        # A stride-2 unit concatenates the pooled input, so its main branch makes only the missing channels.
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid_channels = out_channels // 4  # the bottleneck is a quarter of the unit's output (paper, Sec. 3.3)
        # The very first unit sees the 24-channel stem: too few channels to split into groups (paper, Sec. 3.3).
        first_groups = 1 if first_unit else groups
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False, groups=first_groups),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, mid_channels, 3, stride, 1, bias=False, groups=mid_channels),
            nn.BatchNorm2d(mid_channels),
        )
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid_channels, branch_channels, 1, bias=False, groups=groups),
            nn.BatchNorm2d(branch_channels),
        )
        self.branch_proj = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def _channel_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        x = x.reshape(batch, channels // self.groups, self.groups, height, width).transpose(1, 2)
        return x.reshape(batch, channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.branch_main_1(x)
        if self.groups > 1:
            main = self._channel_shuffle(main)
        main = self.branch_main_2(main)
        if self.branch_proj is None:
            return F.relu(main + x)
        return torch.cat((self.branch_proj(x), F.relu(main)), dim=1)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 feature extractor: ``first_conv`` (stride 2), ``maxpool`` (4), ``features`` = the 16 units of
    stages 2 (``features.0-3``, stride 8), 3 (``features.4-11``, 16) and 4 (``features.12-15``, 32).

    Attributes:
        stage_channels: output channels of the stem and of stages 2, 3, 4.
        stage_ends: index in ``features`` of the last unit of stages 2, 3, 4.
    """

    def __init__(self, groups: int = 3, width: str = "1_0"):
        super().__init__()
        if (groups, width) not in _STAGE_CHANNELS:
            raise ValueError(
                f"ShuffleNet V1 exists for groups/width {sorted(_STAGE_CHANNELS)}; got groups={groups}, width={width!r}"
            )
        self.stage_channels = _STAGE_CHANNELS[(groups, width)]
        stem_channels = self.stage_channels[0]
        self.first_conv = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        units, in_channels, ends = [], stem_channels, []
        for stage, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, self.stage_channels[1:])):
            for index in range(repeats):
                first = index == 0
                units.append(ShuffleUnit(in_channels, out_channels, groups, 2 if first else 1, stage == 0 and first))
                in_channels = out_channels
            ends.append(len(units) - 1)
        self.features = nn.Sequential(*units)
        self.stage_ends = tuple(ends)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.maxpool(self.first_conv(x)))


def shufflenet_v1(name: str) -> ShuffleNetV1:
    """The ShuffleNet V1 named ``shufflenet_v1_g<groups>_x<width>`` (one of :data:`MODEL_NAMES`), random init."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown ShuffleNet V1 {name!r}; expected one of {MODEL_NAMES}")
    match = _NAME.fullmatch(name)
    return ShuffleNetV1(groups=int(match.group(1)), width=match.group(2))
