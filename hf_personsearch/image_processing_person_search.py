"""PersonSearchImageProcessor: resize (min side / max side), normalise, pad; map boxes back afterwards.

The processor is the one owner of the resize rule (:func:`resized_size`) and of the normalisation
(:func:`normalize` with the processor's ``image_mean``/``image_std``): training augmentation
(``hf_personsearch.data.augmentation``) calls the same functions with the run's processor, so a scene
is resized and normalised identically for training, evaluation and search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from transformers import BaseImageProcessor, BatchFeature

from .image_loading import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""timm.data.IMAGENET_DEFAULT_MEAN/STD: the statistics the ImageNet-initialised backbones were trained with."""


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale that brings the short side to ``min_size`` unless the long side would exceed ``max_size``
    (Faster R-CNN's rule, as NAE/SeqNet: 900 / 1500)."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(height, width)`` of a ``height`` x ``width`` image after resizing by :func:`resize_scale`.

    Each side is ROUNDED to the nearest pixel (at least 1). Rounding, not truncating as torchvision's
    ``Resize(max_size=...)`` does, keeps each side within half a pixel of the exact scale and puts the
    capped side exactly on ``min_size`` / ``max_size`` even when ``side * scale`` lands at 1499.9999
    (a 1920x1080 frame at 900/1500 is 844x1500: 1080 * 0.78125 = 843.75).
    """
    scale = resize_scale(height, width, min_size, max_size)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a (3, H, W) image to ``size`` = (height, width).

    torchvision's kernel (the one ``transforms.v2`` applies in training): a uint8 image is resized in
    uint8 on the CPU (the fast native path), a float image in float.
    """
    return TF.resize(image, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) uint8 (0-255) or float (0-1) image -> float32 ``(image - mean) / std``."""
    image = TF.to_dtype(image, torch.float32, scale=True)
    return TF.normalize(image, mean=list(mean), std=list(std))


def _to_chw(image, index: int) -> torch.Tensor:
    """PIL image, HWC uint8/float numpy array or CHW tensor -> CHW tensor (uint8 0-255 or float 0-1).

    PIL images are brought to the displayed orientation and RGB by the package's image loader
    (``image_loading.to_rgb``: EXIF orientation, 16-bit, palette, CMYK, alpha).
    """
    if isinstance(image, Image.Image):
        image = np.array(to_rgb(image, f"image {index}"))
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
        return tensor
    return tensor.float()


class PersonSearchImageProcessor(BaseImageProcessor):
    r"""Prepares scene images for :class:`PersonSearchModel`.

    Args:
        min_size (`int`, 900): target short side (NAE/SeqNet on CUHK-SYSU and PRW).
        max_size (`int`, 1500): cap on the long side (NAE/SeqNet).
        image_mean / image_std (`tuple[float]`, :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`): normalisation
            of 0-1 pixel values; ImageNet statistics, those of the backbones' pre-training. Training reads
            them from here too (``SingleViewAugmentation(processor)``).
        size_divisor (`int`, 1): pad the batch to a multiple of this (1 = no extra padding; 32 can help
            cudnn autotuning).

    Each image is resized to :func:`resized_size` (short side ``min_size``, long side at most
    ``max_size``, sides rounded to the nearest pixel) with :func:`resize` and normalised with
    :func:`normalize`. ``processor(images, boxes=None)`` returns ``pixel_values`` (B, 3, H, W),
    ``image_sizes`` (B, 2) (height, width after resizing, before padding), ``original_sizes`` (B, 2),
    ``scale_factors`` (B, 2) (the height and width ratios applied, resized / original) and, when ``boxes``
    (one (n, 4) xyxy array per image, e.g. query boxes) are given, ``boxes`` scaled by those ratios.
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
        if len(image_mean) != 3 or len(image_std) != 3 or not all(s > 0 for s in image_std):
            raise ValueError(
                f"image_mean and image_std need 3 values (RGB), image_std positive; got {image_mean}, {image_std}"
            )
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
        resized, original_sizes, scales = [], [], []
        for index, image in enumerate(images):
            tensor = _to_chw(image, index)
            height, width = tensor.shape[1:]
            if height == 0 or width == 0:
                raise ValueError(f"image {index} is empty ({height}x{width})")
            new_height, new_width = resized_size(height, width, self.min_size, self.max_size)
            resized.append(normalize(resize(tensor, (new_height, new_width)), self.image_mean, self.image_std))
            original_sizes.append((height, width))
            scales.append((new_height / height, new_width / width))
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
            "scale_factors": torch.tensor(scales, dtype=torch.float64).reshape(-1, 2),
        }
        if boxes is not None:
            data["boxes"] = [
                torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(-1, 4))
                * torch.tensor([width_ratio, height_ratio, width_ratio, height_ratio], dtype=torch.float32)
                for b, (height_ratio, width_ratio) in zip(boxes, scales)
            ]
        return BatchFeature(data=data, tensor_type=None)

    def post_process_person_search(
        self, outputs, target_sizes=None, image_sizes=None, threshold: float = 0.5
    ) -> list[dict[str, torch.Tensor]]:
        """Per image {"boxes", "scores", "embeddings"} of the detections with score >= threshold.

        The embeddings are the model's norm-aware ones (NAE): unit re-ID direction x detection score, so their
        norm is the score. Rank them against a query with :func:`search_similarity`, the toolkit's one scoring
        rule (the pipeline, the gallery index, the CLI and the evaluation protocols all use it).

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


def search_similarity(query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor) -> torch.Tensor:
    """How well detected gallery persons match query persons: the toolkit's one scoring rule.

    similarity = unit query embedding . norm-aware gallery embedding = detection score x cosine similarity of
    the re-ID embeddings. This is NAE's ranking and the one of the person search protocols (the gallery
    features are weighted by their detection score, as in NAE/SeqNet's evaluation), so a search ranks as the
    evaluation that produced a model's mAP did: a confident detection of a person beats a background box that
    merely looks alike. The pipeline, the gallery index, the CLI and the README snippet rank with it.

    Args:
        query_embeddings: (d,) or (Q, d) embeddings of the query persons (``model.embed_boxes``); normalised here.
        gallery_embeddings: (N, d) detections' embeddings as ``post_process_person_search`` returns them
            (norm = detection score).

    Returns:
        (N,) for one query, (Q, N) for Q queries; values in [-1, 1], higher = better match.
    """
    queries = torch.as_tensor(query_embeddings)
    gallery = torch.as_tensor(gallery_embeddings)
    if gallery.dim() != 2 or queries.dim() not in (1, 2) or queries.shape[-1] != gallery.shape[1]:
        raise ValueError(
            f"search_similarity: expected query embeddings (d,) or (Q, d) and gallery embeddings (N, d) with the "
            f"same d, got {tuple(queries.shape)} and {tuple(gallery.shape)}"
        )
    queries = torch.nn.functional.normalize(queries.float(), dim=-1)
    return queries @ gallery.float().to(queries.device).T
