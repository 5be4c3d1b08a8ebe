"""Box-aware augmentation: two views for pre-training (SimSiam), one view for fine-tuning.

The paper applies "two data augmentations to each image, resulting in two different views" and
trains the contrastive loss on the persons seen in both. Each view is the torchvision ``transforms.v2``
pipeline IoU crop -> shortest-side resize -> flip -> clamp -> sanitize over a ``tv_tensors.Image`` and
``tv_tensors.BoundingBoxes``, written out with torchvision's image kernels on plain tensors and its box arithmetic on
numpy arrays (:class:`ViewGeometry`, bit for bit the pipeline, draw for draw, at a fraction of its per-call cost), so
boxes follow every geometric change; the person ids and the ``person_index`` (position of the person in the unified
record) are sanitized together with the boxes, so the three stay in correspondence. A person whose box is lost
in a view (cropped out, or shrunk below ``min_box_size``) is dropped from that view only; the model matches the two
views by ``person_index``.

Ignore regions (crowds, depictions: areas whose persons are not annotated) ride along as boxes of their
own (:class:`IgnoreRegions`): flip, resize and crop move them exactly as person boxes, they are clipped to
the view, and a region cut away entirely disappears. Unlike persons they are never dropped for their
centre leaving the IoU crop or for being small, and they play no part in choosing the crop.

Probabilities follow SimSiam's augmentation (Chen and He 2021: colour jitter 0.4/0.4/0.4/0.1 with
p=0.8, grayscale p=0.2, Gaussian blur sigma 0.1-2 with p=0.5, horizontal flip p=0.5), the recipe the
paper builds its contrastive branch on. Scale/crop is detection-style instead of SimSiam's
RandomResizedCrop to 224 px: an SSD IoU crop (keeps at least one person) with p=0.5, then a random
shortest side from the multi-scale detection list, so the views stay scene images at detector sizes.
The geometric part runs here on uint8 pixels; the photometric part (:mod:`.photometric`) runs after
it, here or in the training step on the batch.

Resizing and normalisation are the image processor's (:class:`PersonSearchImageProcessor`, passed in):
its resize rule (:func:`resized_size`, :func:`resize`) and its ``image_mean``/``image_std``, so a view
without random scale is the tensor the processor gives at evaluation and search, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..image_processing_person_search import PersonSearchImageProcessor, normalize, resize, resized_size
from .photometric import PhotometricAugmentation
from .unification import CanvasPlan

PRETRAIN_MIN_SIZES = tuple(range(480, 801, 32))
PRETRAIN_MAX_SIZE = 1333
"""Multi-scale detection training sizes (shortest side 480-800 step 32, longest side <= 1333, the
DETR/Detectron list): smaller than fine-tuning's 900/1500 to keep pre-training cheap, still varied."""


class ShortestSideResize(v2.Transform):
    """The image processor's resize (:func:`resized_size`, :func:`resize`), boxes following the image,
    with the shortest side drawn uniformly from ``min_sizes`` for each call (one size: no randomness).
    ``max_size`` bounds the longest side: one value for every draw, or one per entry of ``min_sizes``, drawn
    with it (mmdetection's ``multiscale_mode="value"`` pairs, as AlignPS trains)."""

    def __init__(self, min_sizes: Sequence[int], max_size: int | Sequence[int]):
        super().__init__()
        self.min_sizes = [int(size) for size in min_sizes]
        max_sizes = [int(max_size)] * len(self.min_sizes) if isinstance(max_size, int) else list(max_size)
        if len(max_sizes) != len(self.min_sizes):
            raise ValueError(f"max_size: one value or one per min_sizes entry ({self.min_sizes}), got {max_size}")
        if not self.min_sizes or not all(0 < low <= high for low, high in zip(self.min_sizes, max_sizes)):
            raise ValueError(f"need 0 < min_sizes ({self.min_sizes}) <= max_size ({max_size})")
        self.max_sizes = [int(size) for size in max_sizes]

    def draw_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) of a ``height`` x ``width`` image after this resize, drawn from torch's RNG (one
        ``torch.randint`` when there are several sizes, none otherwise)."""
        draw = int(torch.randint(len(self.min_sizes), ())) if len(self.min_sizes) > 1 else 0
        return resized_size(height, width, self.min_sizes[draw], self.max_sizes[draw])

    def make_params(self, flat_inputs: list) -> dict:
        return {"size": self.draw_size(*v2.query_size(flat_inputs))}

    def transform(self, inpt, params: dict):
        return resize(inpt, params["size"])  # torchvision's dispatcher: images resized, boxes scaled


class IgnoreRegions(tv_tensors.BoundingBoxes):
    """The ignore regions of an image: bounding boxes for every geometric kernel (torchvision dispatches
    on the type's ancestors and keeps the subclass), told apart from the persons by their type."""


class PersonIoUCrop(v2.RandomIoUCrop):
    """SSD's IoU crop chosen on the persons only; ignore regions are cropped but not dropped.

    ``RandomIoUCrop`` reads the first ``BoundingBoxes`` of the sample and zeroes the boxes whose centre is
    outside the crop: the ignore regions are hidden from its choice (a crop must keep a person, not an
    empty crowd area), and a region partly inside keeps its inside part (ClampBoundingBoxes clips it).
    """

    def make_params(self, flat_inputs: list) -> dict:
        """``RandomIoUCrop.make_params`` on the persons: the same crop for the same seed, and torch's RNG left
        where torchvision leaves it (tested against it), see :meth:`_first_crop`."""
        flat_inputs = [inpt for inpt in flat_inputs if not isinstance(inpt, IgnoreRegions)]
        height, width = v2.query_size(flat_inputs)
        persons = next(inpt for inpt in flat_inputs if isinstance(inpt, tv_tensors.BoundingBoxes))
        boxes = v2.functional.convert_bounding_box_format(
            persons.as_subclass(torch.Tensor), persons.format, tv_tensors.BoundingBoxFormat.XYXY
        )
        return self.draw_crop(height, width, boxes)

    def draw_crop(self, height: int, width: int, boxes: torch.Tensor) -> dict:
        """The crop of a ``height`` x ``width`` image with persons ``boxes`` (n, 4) float32 xyxy, drawn from torch's
        RNG: ``{}`` for the "keep the whole image" option, else ``top``, ``left``, ``height``, ``width`` and
        ``is_within_crop_area`` (n,) bool (the persons whose centre is inside)."""
        while True:
            min_iou = self.options[int(torch.randint(low=0, high=len(self.options), size=(1,)))]
            if min_iou >= 1.0:  # the "keep the whole image" option
                return {}
            params = self._first_crop(height, width, boxes, min_iou)
            if params:
                return params

    def _first_crop(self, height: int, width: int, boxes: torch.Tensor, min_iou: float) -> dict:
        """The first of ``self.trials`` trials that torchvision's loop would accept, all tested at once.

        A trial draws ``torch.rand(2)`` for its scale and, when the aspect ratio is allowed, ``torch.rand(2)``
        for its position. Here enough pairs for every trial are drawn in one call, the loop's pairing is
        walked through, the candidate crops are tested together in numpy (in torchvision each trial costs
        ~1 ms of tensor calls, and a crowded scene with a high IoU option takes dozens), and the RNG is then
        rewound and advanced by exactly the pairs the loop would have drawn. Sizes and positions are computed
        in float32 as torchvision does on its float32 draws.
        """
        state = torch.get_rng_state()
        pairs = torch.rand(4 * self.trials).numpy().reshape(-1, 2)
        scales = np.float32(self.min_scale) + np.float32(self.max_scale - self.min_scale) * pairs
        new_w = (np.float32(width) * scales[:, 0]).astype(np.int64)
        new_h = (np.float32(height) * scales[:, 1]).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            aspect = new_w / new_h
        allowed = (self.min_aspect_ratio <= aspect) & (aspect <= self.max_aspect_ratio)
        candidates, pair = [], 0
        for _ in range(self.trials):
            if allowed[pair]:
                candidates.append(pair)
                pair += 2
            else:
                pair += 1
        drawn, chosen = pair, None
        if candidates:
            scale_at = np.array(candidates)
            w, h = new_w[scale_at], new_h[scale_at]
            left = ((width - w).astype(np.float32) * pairs[scale_at + 1, 0]).astype(np.int64)
            top = ((height - h).astype(np.float32) * pairs[scale_at + 1, 1]).astype(np.int64)
            crops = np.stack([left, top, left + w, top + h], axis=1).astype(np.float32)
            boxes_np = boxes.numpy()
            centre_x = (0.5 * (boxes[:, 0] + boxes[:, 2])).numpy()
            centre_y = (0.5 * (boxes[:, 1] + boxes[:, 3])).numpy()
            inside = (
                (crops[:, :1] < centre_x)
                & (centre_x < crops[:, 2:3])
                & (crops[:, 1:2] < centre_y)
                & (centre_y < crops[:, 3:])
            )
            lt = np.maximum(boxes_np[None, :, :2], crops[:, None, :2])
            rb = np.minimum(boxes_np[None, :, 2:], crops[:, None, 2:])
            overlap = np.clip(rb - lt, 0, None)
            intersection = overlap[..., 0] * overlap[..., 1]
            areas = (boxes_np[:, 2] - boxes_np[:, 0]) * (boxes_np[:, 3] - boxes_np[:, 1])
            crop_areas = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = intersection / (areas[None, :] + crop_areas[:, None] - intersection)
            best = np.where(inside, iou, -np.inf).max(axis=1, initial=-np.inf)
            accepted = (w > 0) & (h > 0) & inside.any(axis=1) & ~(best < min_iou)
            if accepted.any():
                chosen = int(np.argmax(accepted))
                drawn = int(scale_at[chosen]) + 2
        torch.set_rng_state(state)
        torch.rand(2 * drawn)
        if chosen is None:
            return {}
        return {
            "top": int(top[chosen]),
            "left": int(left[chosen]),
            "height": int(h[chosen]),
            "width": int(w[chosen]),
            "is_within_crop_area": torch.from_numpy(inside[chosen].copy()),
        }

    def transform(self, inpt, params: dict):
        if isinstance(inpt, IgnoreRegions) and params:
            params = {**params, "is_within_crop_area": torch.ones(len(inpt), dtype=torch.bool, device=inpt.device)}
        return super().transform(inpt, params)


def to_image_tensor(image) -> torch.Tensor:
    """(H, W, 3) uint8 array or PIL image -> uint8 (3, H, W) tensor, a view of the pixels in (H, W, 3) order: the
    memory layout in which torchvision's uint8 resize takes its fast path (2.5x the (3, H, W)-contiguous one)."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {array.shape} {array.dtype}")
    if not array.flags.writeable:  # decoded PIL images are read-only views; torch needs its own memory
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def kept_persons(boxes: torch.Tensor, canvas_size: tuple[int, int], min_size: float) -> torch.Tensor:
    """(n,) bool: the persons of a view that are kept, those whose box (n, 4) xyxy is at least ``min_size`` wide
    and high, ``min_size ** 2`` in area and inside the ``canvas_size`` = (height, width) view: torchvision's
    ``SanitizeBoundingBoxes(min_size=min_size, min_area=min_size ** 2)`` rule (tested against it). In numpy: a
    handful of boxes costs a torch call more than its arithmetic (in torch, 14% of a re-ID view's draws)."""
    array = boxes.numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes, np.float32)
    widths, heights = array[:, 2] - array[:, 0], array[:, 3] - array[:, 1]
    keep = (widths >= min_size) & (heights >= min_size) & (array >= 0).all(axis=-1) & (widths * heights >= min_size**2)
    height, width = canvas_size
    keep &= (array[:, 0::2] <= width).all(axis=-1) & (array[:, 1::2] <= height).all(axis=-1)
    return torch.from_numpy(keep)


def _clamp_boxes(boxes: np.ndarray, canvas_size: tuple[int, int]) -> None:
    """In place: xyxy ``boxes`` clipped to the ``canvas_size`` = (height, width) canvas, ``clamp_bounding_boxes``'
    two ``clamp_`` calls on a float32 array."""
    height, width = canvas_size
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])


def _as_regions(ignore_regions) -> torch.Tensor:
    if ignore_regions is None:
        return torch.zeros((0, 4), dtype=torch.float32)
    regions = np.asarray(ignore_regions, np.float32)
    if regions.size and (regions.ndim != 2 or regions.shape[1] != 4):
        raise ValueError(f"ignore_regions must be a (k, 4) xyxy array, got shape {regions.shape}")
    return torch.as_tensor(regions.reshape(-1, 4))


@dataclass(frozen=True)
class ViewParams:
    """The drawn geometry of one view: what :class:`ViewGeometry` does to the pixels.

    Attributes:
        crop: ``(top, left, height, width)`` of the IoU crop, ``None`` when the view keeps the whole image.
        size: ``(height, width)`` of the view after the resize.
        flip: the view is flipped horizontally.
    """

    crop: tuple[int, int, int, int] | None
    size: tuple[int, int]
    flip: bool


class ViewGeometry:
    """The geometric half of a view, on a uint8 (3, H, W) image and plain box tensors: an SSD IoU crop chosen on
    the persons (with probability ``crop_p``; ``None``: no crop step), a shortest-side resize drawn from
    ``min_sizes`` (:class:`ShortestSideResize`), a horizontal flip (``flip_p``), the boxes clipped to the view.

    It is the transforms.v2 pipeline ``RandomApply([PersonIoUCrop()], p=crop_p)`` -> ``ShortestSideResize`` ->
    ``RandomHorizontalFlip(flip_p)`` -> ``ClampBoundingBoxes()`` on a ``tv_tensors.Image``, persons as
    ``BoundingBoxes`` and ignore regions as :class:`IgnoreRegions`, bit for bit and draw for draw from torch's
    RNG (tested against it): the same parameter draws (:meth:`PersonIoUCrop.draw_crop`,
    :meth:`ShortestSideResize.draw_size`, ``torch.rand(1)`` per random application), torchvision's own image kernels
    and its box kernels' arithmetic.
    Written out because that pipeline's per-call machinery (flattening the sample, wrapping every tensor, for each
    of its transforms) cost 1-2 ms a view on a CPU core, more than the resize of a re-ID canvas itself
    (``benchmarks/bench_data.py``).

    The draws need only the image size and the persons, never the pixels: :meth:`draw_and_move_boxes` gives the
    view's boxes and its :class:`ViewParams`, and :meth:`apply_to_image` does the pixel work, in the same call
    (:meth:`__call__`) or later, elsewhere (a re-ID canvas painted in the training step, on the training device:
    :class:`~.unification.CanvasPlan`).
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int | Sequence[int], crop_p: float | None, flip_p: float):
        self.resize = ShortestSideResize(min_sizes, max_size)
        self.crop = PersonIoUCrop() if crop_p is not None else None
        self.crop_p = crop_p
        self.flip_p = flip_p

    def draw_and_move_boxes(
        self, image_size: tuple[int, int], boxes: torch.Tensor, regions: torch.Tensor
    ) -> tuple[ViewParams, torch.Tensor, torch.Tensor]:
        """The view's parameters drawn for an image of ``image_size`` = (height, width), and the persons (n, 4) and
        the ignore regions (k, 4), float32 xyxy, moved onto the view. A person whose centre the crop leaves out
        becomes an all-zero box (removed with :func:`kept_persons`, as ``RandomIoUCrop`` leaves it to
        ``SanitizeBoundingBoxes``); regions are only moved and clipped. Without persons there is no crop step
        (``RandomIoUCrop`` needs a box)."""
        height, width = image_size
        # Persons and regions go through every box operation together (elementwise: the same values as one by one),
        # in numpy: torchvision's box kernels (crop_bounding_boxes, resize_bounding_boxes,
        # horizontal_flip_bounding_boxes, clamp_bounding_boxes) with their float32 arithmetic, step for step, without
        # their per-call cost (a quarter of a re-ID view's draws on a CPU core, profiled). Tested bit for bit against them.
        count = len(boxes)
        both = np.concatenate([boxes.numpy(), regions.numpy()]).astype(np.float32).reshape(-1, 4)
        crop_rect = None
        if self.crop is not None and count and torch.rand(1) < self.crop_p:
            crop = self.crop.draw_crop(height, width, boxes)
            if crop:
                top, left, height, width = crop["top"], crop["left"], crop["height"], crop["width"]
                crop_rect = (top, left, height, width)
                both -= np.array([left, top, left, top], np.float32)
                _clamp_boxes(both, (height, width))
                both[:count][~crop["is_within_crop_area"].numpy()] = 0  # persons only: regions are moved and clipped
        size = self.resize.draw_size(height, width)
        if size != (height, width):
            width_ratio, height_ratio = size[1] / width, size[0] / height
            both *= np.array([width_ratio, height_ratio, width_ratio, height_ratio], np.float32)
        flip = bool(torch.rand(1) < self.flip_p)
        if flip:
            both[:, [2, 0]] = -(both[:, [0, 2]] - np.float32(size[1]))
        _clamp_boxes(both, size)
        moved = torch.from_numpy(both)
        return ViewParams(crop=crop_rect, size=tuple(size), flip=flip), moved[:count], moved[count:]

    @staticmethod
    def apply_to_image(image: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """The view's pixels: the uint8 (3, H, W) ``image`` cropped, resized and flipped as ``params`` say, on the
        image's device."""
        F = v2.functional
        if params.crop is not None:
            # Copied to (H, W, 3) order: a crop is a strided view, on which the uint8 resize takes its slow path
            # (3.5x on a CPU core; the same pixels either way).
            image = F.crop_image(image, *params.crop).permute(1, 2, 0).contiguous().permute(2, 0, 1)
        image = resize(image, params.size)
        return F.horizontal_flip_image(image) if params.flip else image

    def __call__(
        self, image: torch.Tensor, boxes: torch.Tensor, regions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image, boxes, regions)`` of the view: the uint8 image, the persons (n, 4) and the ignore regions
        (k, 4), float32 xyxy on it (see :meth:`draw_and_move_boxes`)."""
        params, boxes, regions = self.draw_and_move_boxes(tuple(image.shape[-2:]), boxes, regions)
        return self.apply_to_image(image, params), boxes, regions


def _augment(geometry: ViewGeometry, min_box_size: float, image, boxes, person_ids, person_index, ignore_regions):
    """One view: :class:`ViewGeometry`, then the persons smaller than ``min_box_size`` (or cut away by the crop)
    dropped with their ids and indices, and the regions left without area dropped. uint8 pixels; for a
    :class:`~.unification.CanvasPlan` no pixels yet: the view carries the plan (``canvas_plan``), its drawn
    geometry (``view_params``, :class:`ViewParams`) and its ``image_size`` for the training step to paint it."""
    planned = isinstance(image, CanvasPlan)
    if planned:
        image_size = image.size
    else:
        image = image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else to_image_tensor(image)
        image_size = tuple(image.shape[-2:])
    boxes = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    person_ids = torch.as_tensor(np.asarray(person_ids, np.int64).reshape(-1))
    if person_index is None:
        person_index = torch.arange(len(person_ids), dtype=torch.int64)
    else:
        person_index = torch.as_tensor(np.asarray(person_index, np.int64).reshape(-1))
    if not len(boxes) == len(person_ids) == len(person_index):
        raise ValueError(
            f"{len(boxes)} boxes, {len(person_ids)} person ids and {len(person_index)} person indices: "
            "they must have the same length"
        )
    params, boxes, regions = geometry.draw_and_move_boxes(image_size, boxes, _as_regions(ignore_regions))
    keep = kept_persons(boxes, params.size, min_box_size)
    # Clipped to the view; a region wholly outside it is left with no area.
    regions = regions[(regions[:, 2] > regions[:, 0]) & (regions[:, 3] > regions[:, 1])]
    view = {
        "boxes": boxes[keep],
        "person_ids": person_ids[keep],
        "person_index": person_index[keep],
        "ignore_regions": regions,
    }
    if planned:
        return {"canvas_plan": image, "view_params": params, "image_size": params.size, **view}
    return {"pixel_values": geometry.apply_to_image(image, params), **view}


class TwoViewAugmentation:
    """Two independently augmented, box-aware views of one unified image (pre-training).

    Args:
        processor: the run's image processor; its resize rule and ``image_mean``/``image_std`` are used
            (default ``PersonSearchImageProcessor()``: ImageNet statistics). Its sizes are not: views are
            resized to the multi-scale training sizes below.
        min_sizes: candidate shortest sides (one drawn per view); default :data:`PRETRAIN_MIN_SIZES`.
        max_size: cap on the longest side; default :data:`PRETRAIN_MAX_SIZE`.
        crop_p: probability of the IoU crop (0.5: half of the views keep the whole scene, as SSD).
        flip_p: horizontal flip probability (0.5, SimSiam).
        color_jitter_p / grayscale_p / blur_p / blur_kernel: the photometric augmentation
            (:class:`~.photometric.PhotometricAugmentation`: SimSiam's 0.8 / 0.2 / 0.5, 9-px blur kernel).
        min_box_size: persons smaller than this (pixels, either side) after augmentation are dropped
            from the view (2: a 1-px box carries no appearance to contrast).
        photometric_in_step: leave the photometric augmentation and the normalisation to the training step
            (False: done here). The views then keep uint8 pixels and carry their drawn parameters as
            ``photometric``; :func:`~.collate.collate_pretrain` batches them and the step applies them with
            :attr:`photometric` (:meth:`~.photometric.PhotometricAugmentation.__call__`), on the training
            device. The parameters are drawn here either way, at the same point of torch's RNG stream.

    Call with ``(image, boxes, person_ids, person_index=None, ignore_regions=None)``; returns two dicts
    with ``pixel_values`` float32 (3, H, W) normalised (uint8 with ``photometric_in_step``), ``boxes`` float32
    (n, 4) xyxy on that view, ``person_ids`` int64 (n,), ``person_index`` int64 (n,) and ``ignore_regions``
    float32 (k, 4) xyxy on that view (see the module docstring). ``image`` may be a
    :class:`~.unification.CanvasPlan` (``photometric_in_step`` only): the views then carry the plan, their drawn
    :class:`ViewParams` and their ``image_size`` instead of ``pixel_values``, and :meth:`in_step` paints them.
    """

    def __init__(
        self,
        processor: PersonSearchImageProcessor | None = None,
        *,
        min_sizes: Sequence[int] = PRETRAIN_MIN_SIZES,
        max_size: int = PRETRAIN_MAX_SIZE,
        crop_p: float = 0.5,
        flip_p: float = 0.5,
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_kernel: int = 9,
        min_box_size: float = 2.0,
        photometric_in_step: bool = False,
    ):
        processor = processor if processor is not None else PersonSearchImageProcessor()
        # On uint8 pixels: the resize kernel has a fast uint8 path, and nothing is converted twice.
        self.geometry = ViewGeometry(min_sizes, max_size, crop_p=crop_p, flip_p=flip_p)
        self.photometric = PhotometricAugmentation(
            processor, color_jitter_p=color_jitter_p, grayscale_p=grayscale_p, blur_p=blur_p, blur_kernel=blur_kernel
        )
        self.photometric_in_step = photometric_in_step
        self.min_box_size = min_box_size

    def _view(self, tensor, boxes, person_ids, person_index, ignore_regions) -> dict:
        view = _augment(self.geometry, self.min_box_size, tensor, boxes, person_ids, person_index, ignore_regions)
        params = self.photometric.draw()
        if self.photometric_in_step:
            view["photometric"] = params
        else:
            view["pixel_values"] = self.photometric.apply(view["pixel_values"], params)
        return view

    def __call__(self, image, boxes, person_ids, person_index=None, ignore_regions=None) -> tuple[dict, dict]:
        if isinstance(image, CanvasPlan):
            if not self.photometric_in_step:
                raise ValueError(
                    "a CanvasPlan (a re-ID canvas painted in the training step) needs photometric_in_step=True: its "
                    "views get their pixels in the step, after the collate"
                )
            source = image
        else:
            source = to_image_tensor(image)
        return tuple(self._view(source, boxes, person_ids, person_index, ignore_regions) for _ in range(2))

    def in_step(self, batch: Mapping) -> dict:
        """The training-step hook (``TrainingData.on_device``): the planned views of the batch painted on its
        device (:func:`paint_planned_views`), then the photometric augmentation and the normalisation
        (:meth:`~.photometric.PhotometricAugmentation.__call__`)."""
        return self.photometric(paint_planned_views(batch))


def paint_planned_views(batch: Mapping) -> dict:
    """A :func:`~.collate.collate_pretrain` batch with its planned views painted: for each ``planned_views`` /
    ``planned_views_2`` entry ``(index, plan, params)`` the canvas is painted once per sample on the device of
    the batch's ``pixel_values`` (:meth:`~.unification.CanvasPlan.paint`, from the plan's seed: the same pixels
    whenever the same batch is painted), the view cut from it (:meth:`ViewGeometry.apply_to_image`) and written
    into the view's zero area of the uint8 batch. A batch without planned views is returned as it is."""
    out = dict(batch)
    canvases = {}
    for suffix in ("", "_2"):
        planned = out.pop("planned_views" + suffix, None)
        if not planned:
            continue
        pixel_values = out["pixel_values" + suffix].clone()
        for index, plan, params in planned:
            if index not in canvases:  # both views of a sample come from its one canvas
                canvases[index] = plan.paint(pixel_values.device)
            height, width = params.size
            pixel_values[index, :, :height, :width] = ViewGeometry.apply_to_image(canvases[index], params)
        out["pixel_values" + suffix] = pixel_values
    return out


class SingleViewAugmentation:
    """One box-aware view for fine-tuning and evaluation on target data (NAE recipe).

    Args:
        processor: the run's image processor (default ``PersonSearchImageProcessor()``: 900/1500, the
            NAE/SeqNet sizes on PRW and CUHK-SYSU, ImageNet statistics). The view is resized to its
            ``min_size``/``max_size`` by its rule and normalised with its ``image_mean``/``image_std``:
            with ``flip_p=0`` the pixels are the processor's own output for that image.
        flip_p: horizontal flip probability (0.5 for training, NAE; 0.0 for evaluation).
        min_sizes / max_size: multi-scale training: the shortest side is drawn from ``min_sizes`` for each image,
            the longest kept <= ``max_size`` (one value, or one per size drawn with it: AlignPS's (400, 667) ...
            (1200, 2000) pairs). None (default) keeps the processor's one size, as NAE/SeqNet train.

    Same call and output as one view of :class:`TwoViewAugmentation`.
    """

    def __init__(
        self,
        processor: PersonSearchImageProcessor | None = None,
        *,
        flip_p: float = 0.5,
        min_sizes: Sequence[int] | None = None,
        max_size: int | Sequence[int] | None = None,
    ):
        processor = processor if processor is not None else PersonSearchImageProcessor()
        sizes = min_sizes or [processor.min_size]
        self.geometry = ViewGeometry(sizes, max_size or processor.max_size, crop_p=None, flip_p=flip_p)
        self.image_mean, self.image_std = processor.image_mean, processor.image_std

    def __call__(self, image, boxes, person_ids, person_index=None, ignore_regions=None) -> dict:
        # 1 px: a fine-tuning person is dropped only when nothing of it is left.
        view = _augment(self.geometry, 1.0, image, boxes, person_ids, person_index, ignore_regions)
        view["pixel_values"] = normalize(view["pixel_values"], self.image_mean, self.image_std)
        return view
