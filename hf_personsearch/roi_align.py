"""RoIAlign of boxes on the encoder map (what torchvision's MultiScaleRoIAlign does with one map), with a fast
CPU path.

RoIAlign is linear in the feature map: each output value is a fixed weighted sum of at most
``4 * sampling_ratio**2`` map locations (bilinear corners of the bin's sampling points), the same weights for
every channel. torchvision's CPU kernel computes them channel by channel, and its backward scatters every
sampling point of every channel one at a time. On CPU, :func:`roi_align` builds those weights once per call as a
sparse ``(boxes * output**2) x (locations)`` matrix and multiplies the channels-last map with it. Measured on
one core (``benchmarks/bench_roi_align.py``, medians of 5), torchvision's -> this module's time:

- the CPU benchmark's test_resnet model (48 boxes, 192 channels, 8x8 output): forward 5.4 -> 4.7 ms, backward
  30.8 -> 1.9 ms (torchvision's backward was a quarter of a fine-tuning step);
- ResNet-50 at 900x1500 (300 boxes, 1024 channels, 14x14): forward 0.77 -> 0.58 s, backward 3.4 -> 0.30 s.

``bin_step`` keeps every ``bin_step``-th bin of each side only (bins 0, step, 2 * step, ...), what a 1x1
convolution of that stride reads from the pooled map (see :mod:`.map_first_box_head`).

Autograd's backward is the transposed product. The values are torchvision's ``roi_align(..., aligned=False)`` (the
call MultiScaleRoIAlign makes): the same sampling points (``sampling_ratio`` per bin side, each bin's mean), the
same border rule (points more than one cell outside the map count as zero, the others are clamped to it); they
differ by float summation order only (tested). As torchvision's, the boxes get no gradient. Elsewhere (CUDA, whose
kernel is fast) and for ``sampling_ratio <= 0`` (torchvision's adaptive sampling: a different number of points per
box) it calls torchvision.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops import roi_align as torchvision_roi_align


def infer_spatial_scale(feature_height: int, image_sizes) -> float:
    """torchvision's MultiScaleRoIAlign rule: the power of two nearest to map height / largest image height."""
    largest = max(int(size[0]) for size in image_sizes)
    return 2 ** float(torch.tensor(float(feature_height) / float(largest)).log2().round())


def _axis_samples(start: torch.Tensor, length: torch.Tensor, size: int, points: int):
    """Bilinear corners and weights of ``points`` evenly spaced samples along one axis of each box.

    Returns (low index, high index, low weight, high weight), each (num_boxes, points); a sample more than one
    cell outside the map has weight zero, as in torchvision's ``bilinear_interpolate``.
    """
    offsets = (torch.arange(points, dtype=start.dtype, device=start.device) + 0.5) / points
    position = start[:, None] + offsets[None] * length[:, None]
    inside = ((position >= -1.0) & (position <= size)).to(start.dtype)
    position = position.clamp(min=0.0)
    low = position.floor().long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    position = torch.where(low >= size - 1, low.to(position.dtype), position)
    fraction = position - low
    return low, high, (1.0 - fraction) * inside, fraction * inside


def sampling_matrix(
    rois: torch.Tensor,
    image_index: torch.Tensor,
    map_shape,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    bin_step: int = 1,
) -> torch.Tensor:
    """The sparse CSR matrix M with ``M @ map`` = RoIAlign: one row per (box, bin row, bin column), one column per
    (image, y, x) location of the (num_images, height, width) map, ``4 * sampling_ratio**2`` entries per row; with
    ``bin_step`` > 1 only the rows of bins 0, step, 2 * step, ... of each side."""
    num_images, height, width = map_shape
    num_boxes = rois.shape[0]
    x1, y1, x2, y2 = (rois * spatial_scale).unbind(1)
    points = output_size * sampling_ratio
    y_low, y_high, y_weight_low, y_weight_high = _axis_samples(y1, (y2 - y1).clamp(min=1.0), height, points)
    x_low, x_high, x_weight_low, x_weight_high = _axis_samples(x1, (x2 - x1).clamp(min=1.0), width, points)
    shape = (num_boxes, output_size, sampling_ratio, 2)  # box, bin, sample within the bin, low/high corner
    y_index = torch.stack([y_low, y_high], -1).view(shape)[:, ::bin_step]
    y_weight = torch.stack([y_weight_low, y_weight_high], -1).view(shape)[:, ::bin_step]
    x_index = torch.stack([x_low, x_high], -1).view(shape)[:, ::bin_step]
    x_weight = torch.stack([x_weight_low, x_weight_high], -1).view(shape)[:, ::bin_step]
    output_size = y_index.shape[1]  # the bins kept per side
    # (box, bin row, bin column, y sample, y corner, x sample, x corner)
    column = (
        image_index.view(-1, 1, 1, 1, 1, 1, 1) * (height * width)
        + y_index.view(num_boxes, output_size, 1, sampling_ratio, 2, 1, 1) * width
        + x_index.view(num_boxes, 1, output_size, 1, 1, sampling_ratio, 2)
    )
    weight = (
        y_weight.view(num_boxes, output_size, 1, sampling_ratio, 2, 1, 1)
        * x_weight.view(num_boxes, 1, output_size, 1, 1, sampling_ratio, 2)
        / sampling_ratio**2
    )
    rows, per_row = num_boxes * output_size**2, 4 * sampling_ratio**2
    return _summed_csr(column.reshape(rows, per_row), weight.reshape(rows, per_row), num_images * height * width)


def _summed_csr(column: torch.Tensor, weight: torch.Tensor, num_columns: int) -> torch.Tensor:
    """The sparse CSR matrix with the (rows, k) entries ``weight`` at ``column``: each row's columns sorted, repeated
    ones summed. Bit for bit what ``torch.sparse_coo_tensor(...).coalesce().to_sparse_csr()`` gives, at a third to
    a half of its time (test_resnet's 48 boxes: 4.2 -> 1.8 ms; ResNet-50's 300 boxes of 14 x 14: 90 -> 49 ms; one
    core): coalesce's own sort of the flat indices (``Tensor.sort``, not stable: it decides the order in which
    repeated entries are summed), without its copies of the index rows and the CSR conversion after it."""
    rows, per_row = column.shape
    row = torch.arange(rows, device=column.device).view(-1, 1).expand(rows, per_row)
    flat, order = (row * num_columns + column).reshape(-1).sort(0)
    first = torch.ones_like(flat, dtype=torch.bool)
    first[1:] = flat[1:] != flat[:-1]
    entry = torch.cumsum(first, 0) - 1  # the summed entry each one goes to, in the sort's order
    values = weight.reshape(-1)[order]
    summed = torch.zeros(int(entry[-1]) + 1 if len(entry) else 0, dtype=weight.dtype, device=weight.device)
    summed.scatter_add_(0, entry, values)  # one at a time, in the sort's order: coalesce's sum
    kept = flat[first]
    crow = torch.zeros(rows + 1, dtype=torch.long, device=column.device)
    torch.cumsum(torch.bincount(kept // num_columns, minlength=rows), 0, out=crow[1:])
    size = (rows, num_columns)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")  # printed once per process
        # The invariants hold by construction (sorted columns, in range, one entry each), so torch's checks are
        # skipped, explicitly: no warning.
        return torch.sparse_csr_tensor(crow, kept % num_columns, summed, size, check_invariants=False)


def pools_sparsely(features: torch.Tensor, sampling_ratio: int) -> bool:
    """True when :func:`roi_align` takes the sparse-matrix path (CPU, a fixed sampling ratio), which also computes
    only the kept bins for ``bin_step`` > 1; elsewhere torchvision's kernel pools every bin."""
    return features.device.type == "cpu" and sampling_ratio > 0


def roi_align(
    features: torch.Tensor,
    boxes: list[torch.Tensor],
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    bin_step: int = 1,
    matrices: dict | None = None,
) -> torch.Tensor:
    """torchvision's ``roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned=False)``:
    (num_images, C, H, W) map, one (n_i, 4) xyxy box tensor per image (image pixels) -> (sum n_i, C, out, out),
    contiguous, or in channels-last memory format for a channels-last map when gradients are off (see below).
    With ``bin_step`` > 1: ``[..., ::bin_step, ::bin_step]`` of that, computed for the kept bins only on CPU.
    ``matrices`` (optional, for several maps pooled at the same boxes): the sampling matrices built so far for these
    boxes, read and filled in, so that each is built once (a ResNet-50 one of 300 boxes of 14 x 14 takes about 50 ms).
    """
    if not pools_sparsely(features, sampling_ratio):
        pooled = torchvision_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned=False)
        return pooled[..., ::bin_step, ::bin_step] if bin_step > 1 else pooled
    num_images, channels, height, width = features.shape
    dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    key = (num_images, height, width, output_size, spatial_scale, sampling_ratio, bin_step, dtype)
    matrix = None if matrices is None else matrices.get(key)
    if matrix is None:
        with torch.no_grad():
            rois = torch.cat([box.to(dtype) for box in boxes]).reshape(-1, 4)
            image_index = torch.cat(
                [torch.full((len(box),), index, dtype=torch.long) for index, box in enumerate(boxes)]
            )
            matrix = sampling_matrix(
                rois, image_index, (num_images, height, width), output_size, spatial_scale, sampling_ratio, bin_step
            )
        if matrices is not None:
            matrices[key] = matrix
    output_size = -(-output_size // bin_step)
    locations = features.to(dtype).permute(0, 2, 3, 1).reshape(num_images * height * width, channels)
    with torch.autocast("cpu", enabled=False):  # a sparse product has no lower-precision autocast kernel
        pooled = matrix @ locations
    # The product is (num_boxes, out, out, C): a channels-last (num_boxes, C, out, out) view. In training it is made
    # contiguous, as torchvision returns it: the box head's convolutions then run the same kernels (the view would
    # switch them to other, differently rounded ones). Without gradients (inference), from channels-last features
    # (the channels-last inference copy of the backbone), the view is returned as it is: that copy's box head would
    # convert it back to channels last, the same values, and the copy there and back cost 0.7 of 10 s of a ResNet-50
    # inference (300 boxes of 1024 x 14 x 14, one thread; benchmarks/bench_model.py).
    pooled = pooled.view(-1, output_size, output_size, channels).permute(0, 3, 1, 2).to(features.dtype)
    if not torch.is_grad_enabled() and features.is_contiguous(memory_format=torch.channels_last):
        return pooled
    return pooled.contiguous()


class EncoderRoIAlign(nn.Module):
    """RoIAlign on the encoder map, the scale inferred from the image sizes as torchvision's MultiScaleRoIAlign
    infers it (no parameters: checkpoints are unchanged).

    Args:
        output_size: bins per side of each box's pooled map.
        sampling_ratio: sampling points per bin side (<= 0: torchvision's adaptive number).
    """

    def __init__(self, output_size: int, sampling_ratio: int):
        super().__init__()
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)

    def forward(
        self, features: torch.Tensor, boxes: list[torch.Tensor], image_sizes, bin_step: int = 1, matrices=None
    ) -> torch.Tensor:
        scale = infer_spatial_scale(features.shape[-2], image_sizes)
        return roi_align(features, boxes, self.output_size, scale, self.sampling_ratio, bin_step, matrices)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio}"


@dataclass
class RoIPooling:
    """One call's RoIAlign (the module, the boxes, the image sizes), to pool the encoder map and other maps of its
    size at the same boxes: what the backbone's map-first box head (:mod:`.map_first_box_head`) needs. Each sampling
    matrix is built once for all of them (``matrices``)."""

    roi_align: EncoderRoIAlign
    boxes: list[torch.Tensor]
    image_sizes: list[tuple[int, int]]
    matrices: dict = field(default_factory=dict, repr=False)

    def __call__(self, feature_map: torch.Tensor, bin_step: int = 1) -> torch.Tensor:
        return self.roi_align(feature_map, self.boxes, self.image_sizes, bin_step, self.matrices)

    def pools_sparsely(self, feature_map: torch.Tensor) -> bool:
        """Whether pooling ``feature_map`` takes the sparse CPU path (:func:`pools_sparsely`)."""
        return pools_sparsely(feature_map, self.roi_align.sampling_ratio)
