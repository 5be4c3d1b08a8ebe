"""The photometric augmentation: torchvision's parameter draws and pixel functions, computed faster, per view."""

import itertools
import math

import pytest
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import v2

from hf_personsearch import PersonSearchImageProcessor
from hf_personsearch.data.collate import collate_pretrain
from hf_personsearch.data.photometric import (
    PhotometricAugmentation,
    PhotometricParams,
    adjust_brightness_,
    adjust_contrast_,
    adjust_hue_,
    adjust_saturation_,
    gaussian_blur,
)
from hf_personsearch.image_processing_person_search import IMAGENET_MEAN, IMAGENET_STD

ATOL = 1e-5
"""Float32 rounding of a reordered computation on values in [0, 1] (the largest difference seen is ~2e-6)."""


def _test_image(height=37, width=53, seed=0) -> torch.Tensor:
    """Random colours with the hue's edge cases: grey pixels, ties between the max channels, saturated
    primaries and pure black/white."""
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))
    image[:, 0:4, 0:4] = 0.5  # grey
    image[:, 4:6, :] = torch.tensor([1.0, 1.0, 0.2]).view(3, 1, 1)  # red = green = max
    image[:, 6:8, :] = torch.tensor([0.3, 0.9, 0.9]).view(3, 1, 1)  # green = blue = max
    image[:, 8:10, :] = torch.tensor([0.7, 0.1, 0.7]).view(3, 1, 1)  # red = blue = max
    image[:, 10:12, :] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    image[:, 12:14, :] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)
    image[:, 14, :] = 0.0
    image[:, 15, :] = 1.0
    image[0, 20:30, 20:30] = image[1, 20:30, 20:30]  # ties inside random colours
    return image


@pytest.mark.parametrize("factor", [-0.5, -0.1, -0.03, 0.0, 0.01, 0.07, 0.1, 0.5])
def test_hue_matches_torchvision(factor):
    image = _test_image()
    torch.testing.assert_close(adjust_hue_(image.clone(), factor), F.adjust_hue(image, factor), atol=ATOL, rtol=0)


@pytest.mark.parametrize("factor", [0.6, 0.95, 1.4])
def test_brightness_contrast_saturation_match_torchvision(factor):
    image = _test_image(seed=1)
    for ours, reference in (
        (adjust_brightness_, F.adjust_brightness),
        (adjust_contrast_, F.adjust_contrast),
        (adjust_saturation_, F.adjust_saturation),
    ):
        torch.testing.assert_close(ours(image.clone(), factor), reference(image, factor), atol=ATOL, rtol=0)


@pytest.mark.parametrize("sigma", [0.1, 0.73, 2.0])
@pytest.mark.parametrize("size", [(37, 53), (9, 64), (64, 5)])
def test_separable_blur_matches_torchvision(sigma, size):
    image = _test_image(*size) if size[0] > 16 else torch.rand(3, *size)
    torch.testing.assert_close(
        gaussian_blur(image, 9 if min(size) > 5 else 5, sigma),
        F.gaussian_blur(image, [9, 9] if min(size) > 5 else [5, 5], [sigma, sigma]),
        atol=ATOL,
        rtol=0,
    )


def test_blur_of_a_constant_is_the_constant_and_an_impulse_spreads_as_the_1d_kernel():
    flat = torch.full((3, 20, 20), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, 9, 1.5), flat)
    impulse = torch.zeros(1, 21, 21)
    impulse[0, 10, 10] = 1.0
    out = gaussian_blur(impulse, 9, 1.0)
    offsets = torch.arange(-4, 5, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / 2.0)
    kernel /= kernel.sum()  # by hand: exp(-x^2 / 2 sigma^2), normalised
    torch.testing.assert_close(out[0, 6:15, 6:15], torch.outer(kernel, kernel), atol=1e-7, rtol=0)


def _reference_pipeline() -> v2.Compose:
    """The photometric half of the two-view augmentation as torchvision transforms (SimSiam's settings)."""
    return v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=0.5),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def test_same_seed_same_draws_and_pixels_as_the_torchvision_pipeline():
    image = (_test_image(40, 44, seed=3) * 255).round().to(torch.uint8)
    reference, ours = _reference_pipeline(), PhotometricAugmentation()
    kinds = set()
    for seed in range(400):
        torch.manual_seed(seed)
        expected = reference(image)
        after_reference = torch.rand(1)
        torch.manual_seed(seed)
        params = ours.draw()
        assert torch.rand(1) == after_reference  # the same number of draws: the streams stay aligned
        torch.testing.assert_close(ours.apply(image, params), expected, atol=ATOL, rtol=0)
        kinds.add((bool(params.jitter_order), params.grayscale, params.blur_sigma is not None))
        if len(kinds) == 8 and seed >= 40:
            break
    assert len(kinds) == 8  # every combination of jitter / grayscale / blur was compared


def test_parameter_distribution_is_simsiams():
    torch.manual_seed(0)
    augmentation = PhotometricAugmentation()
    draws = [augmentation.draw() for _ in range(4000)]
    jittered = [p for p in draws if p.jitter_order]

    def near(count, probability):  # within 4 binomial standard deviations
        return abs(count - probability * len(draws)) < 4 * math.sqrt(len(draws) * probability * (1 - probability))

    assert near(len(jittered), 0.8)
    assert near(sum(p.grayscale for p in draws), 0.2)
    assert near(sum(p.blur_sigma is not None for p in draws), 0.5)
    for name, low, high in [
        ("brightness", 0.6, 1.4),
        ("contrast", 0.6, 1.4),
        ("saturation", 0.6, 1.4),
        ("hue", -0.1, 0.1),
    ]:
        values = torch.tensor([getattr(p, name) for p in jittered])
        assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() <= high, name
        assert abs(values.mean() - (low + high) / 2) < 0.01, name  # uniform: the mean is the middle
    sigmas = torch.tensor([p.blur_sigma for p in draws if p.blur_sigma is not None])
    assert 0.1 <= sigmas.min() < 0.11 and 1.99 < sigmas.max() <= 2.0 and abs(sigmas.mean() - 1.05) < 0.03
    assert {p.jitter_order for p in jittered} == set(itertools.permutations(range(4)))  # random order
    untouched = [p for p in draws if not p.jitter_order]
    assert all((p.brightness, p.contrast, p.saturation, p.hue) == (1.0, 1.0, 1.0, 0.0) for p in untouched)


def test_probabilities_and_kernel_are_checked():
    with pytest.raises(ValueError, match="grayscale_p must be a probability"):
        PhotometricAugmentation(grayscale_p=1.5)
    with pytest.raises(ValueError, match="blur_kernel must be odd"):
        PhotometricAugmentation(blur_kernel=8)
    with pytest.raises(ValueError, match=r"expected a uint8 \(3, H, W\) image"):
        PhotometricAugmentation().apply(torch.zeros(3, 4, 4), PhotometricParams())


def test_no_augmentation_is_the_normalisation_by_hand():
    processor = PersonSearchImageProcessor(image_mean=(0.5, 0.25, 0.0), image_std=(0.25, 0.5, 2.0))
    white = torch.full((3, 6, 6), 255, dtype=torch.uint8)
    out = PhotometricAugmentation(processor).apply(white, PhotometricParams())
    torch.testing.assert_close(out[:, 3, 3], torch.tensor([2.0, 1.5, 0.5]))  # (1 - mean) / std


def test_grayscale_view_has_equal_channels_of_the_luma():
    image = torch.tensor([[[255]], [[0]], [[0]]], dtype=torch.uint8).expand(3, 5, 5).contiguous()
    processor = PersonSearchImageProcessor(image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))
    out = PhotometricAugmentation(processor).apply(image, PhotometricParams(grayscale=True))
    torch.testing.assert_close(out, torch.full((3, 5, 5), 0.2989))  # pure red: the red luma weight


def _item(height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    view = {
        "pixel_values": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator),
        "boxes": torch.tensor([[1.0, 1.0, 5.0, 9.0]]),
        "person_ids": torch.tensor([seed]),
        "person_index": torch.tensor([0]),
    }
    return view


def test_batch_step_applies_each_views_own_parameters_and_keeps_the_padding_zero():
    augmentation = PhotometricAugmentation()
    torch.manual_seed(5)
    items = []
    for seed, (height, width) in enumerate([(20, 30), (32, 18), (25, 25)]):
        view1, view2 = _item(height, width, seed), _item(width, height, seed + 10)
        view1["photometric"], view2["photometric"] = augmentation.draw(), augmentation.draw()
        items.append(
            {"view1": view1, "view2": view2, "domain_id": 0, "is_reid": False, "has_identity": False, "source": "x"}
        )
    batch = collate_pretrain(items)
    assert batch["pixel_values"].dtype == torch.uint8 and len(batch["photometric"]) == 3
    out = augmentation(batch)
    assert "photometric" not in out and "photometric_2" not in out
    for suffix, key in (("", "view1"), ("_2", "view2")):
        pixel_values = out["pixel_values" + suffix]
        assert pixel_values.dtype == torch.float32
        for index, item in enumerate(items):
            height, width = out["image_sizes" + suffix][index].tolist()
            expected = augmentation.apply(item[key]["pixel_values"], item[key]["photometric"])
            assert torch.equal(pixel_values[index, :, :height, :width], expected)
            assert not pixel_values[index, :, height:].any() and not pixel_values[index, :, :, width:].any()
    assert out["labels"] is batch["labels"]  # everything else is passed through
    with pytest.raises(ValueError, match="3 images, 3 sizes and 2 photometric parameter sets"):
        augmentation.apply_to_batch(batch["pixel_values"], batch["image_sizes"], batch["photometric"][:2])
