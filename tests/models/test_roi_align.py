"""hf_personsearch.roi_align: the sparse-matrix CPU RoIAlign equals torchvision's (forward and gradient), in
every case a detector meets: boxes over the border, far outside, smaller than a cell, images with no box."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as torchvision_roi_align

from hf_personsearch.roi_align import EncoderRoIAlign, infer_spatial_scale, roi_align


def random_boxes(generator: torch.Generator, count: int, height: float, width: float) -> torch.Tensor:
    """xyxy boxes in image pixels, some reaching over the image border (as proposals do)."""
    x1 = torch.rand(count, generator=generator) * width * 1.1 - 0.05 * width
    y1 = torch.rand(count, generator=generator) * height * 1.1 - 0.05 * height
    w = torch.rand(count, generator=generator) * width * 0.5 + 0.5
    h = torch.rand(count, generator=generator) * height * 0.5 + 0.5
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


def edge_case_boxes() -> torch.Tensor:
    """Boxes torchvision's border rule treats specially (image 128 x 224, stride 16: map 8 x 14)."""
    return torch.tensor(
        [
            [0.0, 0.0, 224.0, 128.0],  # the whole image
            [-40.0, -30.0, 20.0, 10.0],  # over the top-left corner
            [210.0, 120.0, 260.0, 170.0],  # over the bottom-right corner: samples beyond the last cell
            [300.0, 200.0, 330.0, 230.0],  # entirely outside: samples more than a cell out count as zero
            [50.0, 60.0, 50.5, 60.2],  # smaller than a cell (the box size is clamped to one cell)
            [100.0, 40.0, 100.0, 40.0],  # degenerate
        ]
    )


@pytest.mark.parametrize("output_size,sampling_ratio", [(8, 2), (7, 1), (14, 2), (4, 3)])
def test_forward_and_gradient_equal_torchvision(output_size, sampling_ratio):
    generator = torch.Generator().manual_seed(output_size * 10 + sampling_ratio)
    scale = 1.0 / 16
    features = torch.randn(3, 24, 8, 14, generator=generator, dtype=torch.float64)
    boxes = [
        torch.cat([random_boxes(generator, 20, 128, 224), edge_case_boxes()]).double(),
        random_boxes(generator, 5, 128, 224).double(),
        torch.zeros(0, 4, dtype=torch.float64),  # an image without a box
    ]
    ours_input = features.clone().requires_grad_(True)
    reference_input = features.clone().requires_grad_(True)
    ours = roi_align(ours_input, boxes, output_size, scale, sampling_ratio)
    reference = torchvision_roi_align(reference_input, boxes, output_size, scale, sampling_ratio, aligned=False)
    assert ours.shape == reference.shape == (31, 24, output_size, output_size)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    upstream = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    (ours * upstream).sum().backward()
    (reference * upstream).sum().backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad, rtol=0, atol=1e-12)


def test_float32_and_channels_last_map():
    """The training dtype, on the channels-last map the encoder now returns on CPU: torchvision's values to
    float rounding, and a contiguous (boxes, C, out, out) result as torchvision returns."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 32, 8, 14, generator=generator).contiguous(memory_format=torch.channels_last)
    boxes = [random_boxes(generator, 30, 128, 224), edge_case_boxes()]
    ours = roi_align(features, boxes, 8, 1.0 / 16, 2)
    reference = torchvision_roi_align(features.contiguous(), boxes, 8, 1.0 / 16, 2, aligned=False)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert ours.is_contiguous()
    # Without gradients (inference), the channels-last product is returned as it is: the same values, no copy.
    with torch.no_grad():
        viewed = roi_align(features, boxes, 8, 1.0 / 16, 2)
    assert viewed.is_contiguous(memory_format=torch.channels_last) and not viewed.is_contiguous()
    assert torch.equal(viewed, ours)
    with torch.no_grad():
        assert roi_align(features.contiguous(), boxes, 8, 1.0 / 16, 2).is_contiguous()


def test_inference_copy_detections_are_unchanged_by_the_channels_last_roi_output(monkeypatch):
    """The inference copy's box head gets the channels-last RoIAlign output without a copy: bit for bit the
    detections it gave on the contiguous output."""
    import hf_personsearch.roi_align as module
    from hf_personsearch import PersonSearchConfig, PersonSearchModel

    torch.manual_seed(0)
    model = PersonSearchModel(PersonSearchConfig(backbone="test_resnet", num_person_ids=5, box_score_thresh=0.0))
    model.eval()
    pixel_values = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        viewed = model(pixel_values)
        original = module.roi_align
        monkeypatch.setattr(module, "roi_align", lambda *args: original(*args).contiguous())
        copied = model(pixel_values)
    assert sum(len(boxes) for boxes in viewed.boxes) > 0
    for key in ("boxes", "scores", "embeddings"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(viewed, key), getattr(copied, key))), key


def test_no_box_at_all():
    features = torch.randn(2, 16, 8, 14, requires_grad=True)
    pooled = roi_align(features, [torch.zeros(0, 4), torch.zeros(0, 4)], 8, 1.0 / 16, 2)
    assert pooled.shape == (0, 16, 8, 8)
    pooled.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_adaptive_sampling_calls_torchvision():
    """sampling_ratio <= 0 (a different number of points per box) is torchvision's own computation."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 8, 8, 14, generator=generator)
    boxes = [random_boxes(generator, 10, 128, 224)]
    assert torch.equal(
        roi_align(features, boxes, 7, 1.0 / 16, 0),
        torchvision_roi_align(features, boxes, 7, 1.0 / 16, 0, aligned=False),
    )


def test_encoder_roi_align_equals_multiscale_roi_align():
    """What the RoI head used before: torchvision's MultiScaleRoIAlign with one map, its scale inferred from
    the padded batch's largest image."""
    generator = torch.Generator().manual_seed(2)
    image_sizes = [(128, 224), (120, 200)]
    features = torch.randn(2, 16, 8, 14, generator=generator)
    boxes = [random_boxes(generator, 12, 128, 224), random_boxes(generator, 7, 120, 200)]
    reference = MultiScaleRoIAlign(["encoder"], 8, 2)({"encoder": features}, boxes, image_sizes)
    ours = EncoderRoIAlign(8, 2)(features, boxes, image_sizes)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert infer_spatial_scale(8, image_sizes) == 1.0 / 16
    assert infer_spatial_scale(57, [(900, 1500)]) == 1.0 / 16  # ResNet-50's C4 at 900 x 1500 (900 / 16 = 56.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampling_matrix_sums_repeated_locations_bit_for_bit_as_coalesce(monkeypatch, dtype):
    """The sampling matrix is built without ``coalesce`` (a third to a half of its time) but sums the repeated
    locations of a row (clamped corners, samples in one cell) in coalesce's order: the same matrix bit for bit,
    so training and inference give the same numbers as before. Boxes over the border, smaller than a cell and
    larger than the map, one to three samples per bin side, every bin and every second bin."""
    from hf_personsearch import roi_align as roi_align_module

    entries = []
    summed_csr = roi_align_module._summed_csr
    monkeypatch.setattr(
        roi_align_module,
        "_summed_csr",
        lambda column, weight, n: entries.append((column, weight, n)) or summed_csr(column, weight, n),
    )
    generator = torch.Generator().manual_seed(3)
    cases = 0
    for sampling_ratio in (1, 2, 3):
        for output_size, bin_step in ((8, 1), (7, 1), (14, 2), (4, 3)):
            boxes = torch.cat([random_boxes(generator, 40, 128, 224), edge_case_boxes()]).to(dtype)
            boxes[:8, 2:] += torch.rand(8, 2, generator=generator, dtype=dtype) * 400  # larger than the image
            image_index = torch.randint(0, 3, (len(boxes),), generator=generator)
            matrix = roi_align_module.sampling_matrix(
                boxes, image_index, (3, 8, 14), output_size, 1.0 / 16, sampling_ratio, bin_step
            )
            column, weight, num_columns = entries[-1]
            row = torch.arange(column.shape[0]).view(-1, 1).expand_as(column)
            reference = (
                torch.sparse_coo_tensor(
                    torch.stack([row.reshape(-1), column.reshape(-1)]),
                    weight.reshape(-1),
                    (column.shape[0], num_columns),
                    check_invariants=False,
                )
                .coalesce()
                .to_sparse_csr()
            )
            assert matrix.shape == reference.shape
            assert torch.equal(matrix.crow_indices(), reference.crow_indices())
            assert torch.equal(matrix.col_indices(), reference.col_indices())
            assert torch.equal(matrix.values(), reference.values())  # bit for bit: the same order of summation
            assert matrix._nnz() < column.numel()  # there were repeated locations to sum
            cases += 1
    assert cases == 12
