"""Box decoding in float32 under mixed precision.

Under bf16 autocast the detector heads give their box deltas in bf16, and torchvision's ``BoxCoder`` decodes in
the deltas' dtype (it converts the reference boxes to it). bf16 keeps 8 significant bits: pixel coordinates from
512 to 1024 come out on a grid of 4 px, from 1024 to 2048 (beyond x = 1024: the right third of a 1500-pixel-wide
image) on a grid of 8 px, for the proposals the box head pools, the boxes NMS compares and the detections returned
(the GPU recipes train under bf16 autocast). Measured on a test_resnet trained 160 steps on the synthetic PRW
(240 x 135 frames, where the grid is only 1 px; ``benchmarks/bench_model.py --map-model``), bf16 autocast against
float32: mAP -0.22 and detection AP -0.35 points with bf16 decoding, +0.06 and +0.20 with this one.
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder


class Float32BoxCoder(BoxCoder):
    """torchvision's ``BoxCoder`` whose decoding runs in float32 at least (float64 stays float64): the deltas
    and the reference boxes are converted before decoding, so boxes keep float32 precision whatever precision
    the head ran in."""

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(rel_codes.dtype, boxes.dtype)
        return super().decode_single(at_least_float32(rel_codes.to(dtype)), at_least_float32(boxes.to(dtype)))


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is in a lower precision (bf16, fp16), else as it is."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
