import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_personsearch import PersonSearchImageProcessor, PersonSearchOutput
from hf_personsearch.image_processing_person_search import IMAGENET_MEAN, IMAGENET_STD, resize_scale, resized_size


def test_resize_rule_min_side_unless_the_long_side_is_too_long():
    assert resize_scale(600, 800, 900, 1500) == pytest.approx(1.5)  # short side 600 -> 900, long 1200 ok
    assert resize_scale(600, 1200, 900, 1500) == pytest.approx(1.25)  # 1200 * 1.5 > 1500: capped


def test_resized_sides_are_rounded_to_the_nearest_pixel():
    assert resized_size(1080, 1920, 900, 1500) == (844, 1500)  # 843.75 rows: truncation would give 843
    assert resized_size(1920, 1080, 900, 1500) == (1500, 844)
    assert resized_size(100, 309, 900, 1500) == (485, 1500)  # 309 * (1500 / 309) = 1499.9999999999998
    assert resized_size(2, 3000, 900, 1500) == (1, 1500)  # at least one pixel
    assert resized_size(600, 800, 900, 1500) == (900, 1200)


def test_batch_is_resized_normalised_and_padded_with_sizes_and_scaled_boxes():
    processor = PersonSearchImageProcessor(min_size=100, max_size=200)
    white = Image.new("RGB", (80, 50), (255, 255, 255))  # width 80, height 50 -> scale 2 -> 100x160
    tall = np.zeros((120, 60, 3), np.uint8)  # -> scale 5/3 -> 200x100
    batch = processor([white, tall], boxes=[[[10, 5, 20, 25]], [[0, 0, 30, 60]]])
    assert batch["pixel_values"].shape == (2, 3, 200, 160)
    assert batch["image_sizes"].tolist() == [[100, 160], [200, 100]]
    assert batch["original_sizes"].tolist() == [[50, 80], [120, 60]]
    assert torch.allclose(batch["boxes"][0], torch.tensor([[20.0, 10.0, 40.0, 50.0]]))
    assert torch.allclose(batch["boxes"][1], torch.tensor([[0.0, 0.0, 50.0, 100.0]]))
    assert torch.allclose(batch["scale_factors"], torch.tensor([[2.0, 2.0], [5 / 3, 5 / 3]], dtype=torch.float64))
    white_normalised = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert batch["pixel_values"][0, 0, 50, 80].item() == pytest.approx(white_normalised, rel=1e-4)
    assert batch["pixel_values"][0, :, 150:, :].abs().sum() == 0  # padding below the first image


def test_post_processing_maps_boxes_back_and_applies_the_threshold():
    processor = PersonSearchImageProcessor(min_size=100, max_size=200)
    outputs = PersonSearchOutput(
        boxes=[torch.tensor([[20.0, 10.0, 40.0, 50.0], [0.0, 0.0, 10.0, 10.0]])],
        scores=[torch.tensor([0.9, 0.3])],
        embeddings=[torch.ones(2, 4)],
    )
    result = processor.post_process_person_search(
        outputs, target_sizes=[[50, 80]], image_sizes=[[100, 160]], threshold=0.5
    )
    assert torch.allclose(result[0]["boxes"], torch.tensor([[10.0, 5.0, 20.0, 25.0]]))
    assert result[0]["scores"].tolist() == pytest.approx([0.9])
    with pytest.raises(ValueError, match="image_sizes"):
        processor.post_process_person_search(outputs, target_sizes=[[50, 80]])


def test_bad_images_raise_naming_the_index():
    processor = PersonSearchImageProcessor()
    with pytest.raises(ValueError, match="image 1"):
        processor([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 4), np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        processor([])
    with pytest.raises(ValueError, match="min_size"):
        PersonSearchImageProcessor(min_size=2000, max_size=1000)
    with pytest.raises(ValueError, match="image_std positive"):
        PersonSearchImageProcessor(image_std=(0.2, 0.0, 0.2))


def test_boxes_follow_the_rounded_size_per_axis():
    # 1080 x 1920 -> 844 x 1500: the row ratio is 844 / 1080, not the exact scale 0.78125.
    batch = PersonSearchImageProcessor()([np.zeros((1080, 1920, 3), np.uint8)], boxes=[[[0, 1080, 1920, 1080]]])
    assert batch["scale_factors"].tolist() == [[844 / 1080, 1500 / 1920]]
    torch.testing.assert_close(batch["boxes"][0], torch.tensor([[0.0, 844.0, 1500.0, 844.0]]))


def test_custom_mean_std_are_saved_and_applied(tmp_path):
    PersonSearchImageProcessor(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.25, 1.0)).save_pretrained(tmp_path)
    loaded = PersonSearchImageProcessor.from_pretrained(tmp_path)
    pixels = loaded([np.full((4, 4, 3), 255, np.uint8)])["pixel_values"]
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor([1.0, 2.0, 0.5]))  # (1 - mean) / std


def test_saved_and_reloaded_with_auto_image_processor(tmp_path):
    PersonSearchImageProcessor(min_size=128, max_size=256).save_pretrained(tmp_path)
    # Hub remote code: the processor's file and the image loader it imports travel with it.
    assert (tmp_path / "image_processing_person_search.py").exists() and (tmp_path / "image_loading.py").exists()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, PersonSearchImageProcessor)
    assert (loaded.min_size, loaded.max_size) == (128, 256)
