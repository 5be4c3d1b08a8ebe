"""PersonSearchImageProcessor: resize (min side / max side), normalise, pad; map boxes back afterwards."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BaseImageProcessor, BatchFeature

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale that brings the short side to ``min_size`` unless the long side would exceed ``max_size``
    (Faster R-CNN's rule, as NAE/SeqNet: 900 / 1500)."""
    return min(min_size / min(height, width), max_size / max(height, width))


def _to_chw_float(image, index: int) -> torch.Tensor:
    """PIL image, HWC uint8/float numpy array or CHW tensor -> float CHW tensor in [0, 1]."""
    if hasattr(image, "convert"):  # PIL
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (1, 3):
            raise ValueError(f"image {index}: expected an (H, W, 3) array, got shape {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
    elif torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image {index}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        tensor = image
    else:
        raise ValueError(
            f"image {index}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}"
        )
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    return tensor.float()


class PersonSearchImageProcessor(BaseImageProcessor):
    r"""Prepares scene images for :class:`PersonSearchModel`.

    Args:
        min_size (`int`, 900): target short side (NAE/SeqNet on CUHK-SYSU and PRW).
        max_size (`int`, 1500): cap on the long side (NAE/SeqNet).
        image_mean / image_std: ImageNet statistics, those of the backbones' pre-training.
        size_divisor (`int`, 1): pad the batch to a multiple of this (1 = no extra padding; 32 can help
            cudnn autotuning).

    ``processor(images, boxes=None)`` returns ``pixel_values`` (B, 3, H, W), ``image_sizes`` (B, 2)
    (height, width after resizing, before padding), ``original_sizes`` (B, 2), ``scale_factors`` (B,)
    and, when ``boxes`` (one (n, 4) xyxy array per image, e.g. query boxes) are given, ``boxes`` scaled
    to the resized images.
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        min_size: int = 900,
        max_size: int = 1500,
        image_mean: tuple[float, ...] = IMAGENET_MEAN,
        image_std: tuple[float, ...] = IMAGENET_STD,
        size_divisor: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size ({min_size}) <= max_size ({max_size})")
        self.min_size = min_size
        self.max_size = max_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisor = size_divisor

    def __call__(self, images, boxes=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, boxes=boxes, **kwargs)

    def preprocess(self, images, boxes=None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given")
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} box arrays for {len(images)} images")
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        resized, original_sizes, scales = [], [], []
        for index, image in enumerate(images):
            tensor = _to_chw_float(image, index)
            height, width = tensor.shape[1:]
            if height == 0 or width == 0:
                raise ValueError(f"image {index} is empty ({height}x{width})")
            scale = resize_scale(height, width, self.min_size, self.max_size)
            new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
            tensor = F.interpolate(tensor[None], size=new_size, mode="bilinear", align_corners=False, antialias=True)[
                0
            ]
            resized.append((tensor - mean) / std)
            original_sizes.append((height, width))
            scales.append(scale)
        max_height = max(t.shape[1] for t in resized)
        max_width = max(t.shape[2] for t in resized)
        divisor = self.size_divisor
        max_height, max_width = -(-max_height // divisor) * divisor, -(-max_width // divisor) * divisor
        pixel_values = torch.zeros((len(resized), 3, max_height, max_width))
        for index, tensor in enumerate(resized):
            pixel_values[index, :, : tensor.shape[1], : tensor.shape[2]] = tensor
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor([t.shape[1:] for t in resized], dtype=torch.long),
            "original_sizes": torch.tensor(original_sizes, dtype=torch.long),
            "scale_factors": torch.tensor(scales, dtype=torch.float64),
        }
        if boxes is not None:
            data["boxes"] = [
                torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(-1, 4)) * scale
                for b, scale in zip(boxes, scales)
            ]
        return BatchFeature(data=data, tensor_type=None)

    def post_process_person_search(
        self, outputs, target_sizes=None, image_sizes=None, threshold: float = 0.5
    ) -> list[dict[str, torch.Tensor]]:
        """Per image {"boxes", "scores", "embeddings"} of the detections with score >= threshold.

        Args:
            outputs: a :class:`PersonSearchOutput` of the model in eval mode.
            target_sizes: (B, 2) (height, width) to map the boxes to, usually the processor's
                ``original_sizes``; None keeps the coordinates of the model's input.
            image_sizes: (B, 2) sizes the model saw (the processor's ``image_sizes``); required with
                ``target_sizes``.
            threshold: minimum detection score (0.5 = the search protocols' det_thresh).
        """
        if target_sizes is not None and image_sizes is None:
            raise ValueError(
                "post_process_person_search: image_sizes (the model's input sizes) must come with target_sizes"
            )
        results = []
        for index, (boxes, scores, embeddings) in enumerate(zip(outputs.boxes, outputs.scores, outputs.embeddings)):
            keep = scores >= threshold
            boxes = boxes[keep]
            if target_sizes is not None:
                target = torch.as_tensor(target_sizes[index], dtype=boxes.dtype, device=boxes.device)
                source = torch.as_tensor(image_sizes[index], dtype=boxes.dtype, device=boxes.device)
                height_ratio, width_ratio = target / source
                boxes = boxes * torch.stack([width_ratio, height_ratio, width_ratio, height_ratio])
            results.append({"boxes": boxes, "scores": scores[keep], "embeddings": embeddings[keep]})
        return results
