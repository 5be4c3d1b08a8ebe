"""Data unification (paper, Method: "Data unification"; Table 4 for the random_paste ablation).

Pre-training mixes scene images with boxes (detection sets) and single-person crops (re-ID sets).
Unification gives both the same interface, a scene image with boxes and global identities:

- a detection image keeps its pixels, boxes and ignore regions; each box gets a new identity
  (:mod:`.identity`);
- a re-ID crop is placed on a larger canvas by :func:`expand_resize` (the paper's choice): the canvas
  is a random multiple of the crop size, then resized to a fixed size, so the person appears at
  many scales (the paper credits this with scale-invariant features: Table 4, 47.08 vs 46.49 mAP);
- :func:`random_paste` is the ablation: the crop pasted unscaled at a random place of a fixed canvas.

Canvas fill: the mean colour of the crop's border pixels plus mild Gaussian noise (std 8 grey levels).
A constant black canvas would let the detector learn "person = the only textured rectangle on black";
the border mean continues the crop's own background colour, so the crop edge is a weak cue, and the
noise keeps the fill from being perfectly flat. "mean" (no noise) and "zero" are available.

The noise is drawn by inverse-CDF sampling from :data:`FILL_NOISE_LEVELS` equiprobable quantiles of the
Gaussian (its CDF is matched to 1/65536), which turns the fill into one table look-up per pixel: the
uint8 colour of each noise level is computed once per canvas. Drawing float noise for a 512 x 512 canvas
and converting it cost more than decoding, unifying and resizing the crop together.

Painting a canvas and cutting its two views (two resizes of ~700 x 700 px) cost a CPU core 3-4x what decoding the
crop and resizing it once do (``benchmarks/bench_data.py``). With ``plan_only`` (``canvas_in_step`` in
pre-training) the worker draws everything random as it would for a painted canvas and returns a
:class:`CanvasPlan`, which the training step paints on the training device: on a GPU that work costs next to
nothing. The plan draws one seed in place of the noise, so its samples differ from the painted path's while
following the same distribution (the same noise table, the same persons' sizes and places).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy.special import ndtri
from torchvision.transforms.v2 import functional as TF

from ..image_loading import load_image
from .identity import IdentitySpace, alignment_task
from .schema import NO_IDENTITY

DEFAULT_RATIO_RANGE = (1.0, 3.0)
"""Canvas side / crop side. 1 = the crop fills the canvas (the re-ID scale); 3 = the person takes a
third of the canvas height, the size of a mid-distance pedestrian in PRW/CUHK-SYSU frames. Larger
ratios upsample a 128-px crop into mostly fill; the two-view scale jitter adds smaller persons anyway."""

DEFAULT_CANVAS_SIZE = (512, 512)
"""(height, width) of the unified re-ID image. Square, so a 2:1 person keeps its aspect with room to
move sideways; 512 is within the multi-scale range the two-view augmentation resizes scenes to."""

FILL_NOISE_STD = 8.0
"""Standard deviation (grey levels) of the noise added to the canvas fill; see the module docstring."""

FILL_NOISE_LEVELS = 2**16
"""Equiprobable Gaussian quantiles the fill noise is drawn from (uint16 indices; see the module docstring)."""

_FILL_NOISE = (FILL_NOISE_STD * ndtri((np.arange(FILL_NOISE_LEVELS) + 0.5) / FILL_NOISE_LEVELS)).astype(np.float32)


FILLS = ("mean_noise", "mean", "zero")
"""Canvas fills (see the module docstring); "mean_noise" is the default of every operation."""


def _check_fill(fill: str) -> None:
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")


def _border_mean(crop: np.ndarray) -> np.ndarray:
    """(3,) float32 mean colour of the crop's border pixels."""
    return np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]).astype(np.float32).mean(axis=0)


def fill_canvas(crop: np.ndarray, size: tuple[int, int], fill: str, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` = (height, width) uint8 canvas filled for ``crop`` (H, W, 3) uint8: "mean_noise", "mean" or "zero"
    (see the module docstring); the noise is drawn from ``rng``."""
    _check_fill(fill)
    height, width = size
    if fill == "zero":
        return np.zeros((height, width, 3), np.uint8)
    mean = _border_mean(crop)
    if fill == "mean":
        return np.broadcast_to(np.clip(mean, 0, 255).astype(np.uint8), (height, width, 3)).copy()
    # The same noise on the three channels (grey noise), truncated to uint8 as a float canvas would be; one channel
    # at a time, contiguous (3x faster than broadcasting over (levels, 3), the same values).
    colours = np.empty((FILL_NOISE_LEVELS, 3), np.uint8)
    for channel in range(3):
        colours[:, channel] = np.clip(_FILL_NOISE + mean[channel], 0, 255)
    return np.take(colours, rng.integers(0, FILL_NOISE_LEVELS, size=(height, width), dtype=np.uint16), axis=0)


@dataclass
class CanvasPlan:
    """A re-ID canvas drawn in the data worker, painted later on the training device (:meth:`paint`).

    Attributes:
        size: (height, width) of the canvas.
        fill: one of :data:`FILLS`.
        fill_mean: (3,) float32 mean colour of the (first) crop's border.
        noise_seed: seed of the fill noise, drawn in place of the noise; None unless ``fill`` is "mean_noise".
        crops: the crops, (h, w, 3) uint8 each, at their own size.
        boxes: the place of each crop on the canvas, (4,) float32 xyxy with integer corners, in crop order.
    """

    size: tuple[int, int]
    fill: str
    fill_mean: np.ndarray
    noise_seed: int | None = None
    crops: list = field(default_factory=list)
    boxes: list = field(default_factory=list)

    @classmethod
    def draw(cls, crop: np.ndarray, size: tuple[int, int], fill: str, rng: np.random.Generator) -> CanvasPlan:
        """The plan of an empty canvas for ``crop``: :func:`fill_canvas`'s counterpart, one draw of ``rng`` (the
        noise seed) for "mean_noise", none otherwise."""
        _check_fill(fill)
        seed = int(rng.integers(0, 2**62)) if fill == "mean_noise" else None
        return cls(size=tuple(int(side) for side in size), fill=fill, fill_mean=_border_mean(crop), noise_seed=seed)

    def paint(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The canvas, uint8 (3, H, W) on ``device`` (default CPU), in (H, W, 3) memory order like
        :func:`~.augmentation.to_image_tensor`.

        The fill is :func:`fill_canvas`'s: the same colour table of the noise levels (float32 sums truncated to
        uint8), indexed by a uniform draw of a torch generator on ``device`` seeded with ``noise_seed``, so a plan
        paints the same canvas every time on a given device. Each crop is resized to its box with torchvision's
        antialiased bilinear kernel (the painted path resizes with PIL's bilinear filter, which that kernel
        follows to about a grey level) and pasted."""
        device = torch.device(device or "cpu")
        height, width = self.size
        if self.fill == "zero":
            canvas = torch.zeros((height, width, 3), dtype=torch.uint8, device=device)
        else:
            mean = torch.from_numpy(np.asarray(self.fill_mean, np.float32)).to(device)
            if self.fill == "mean":
                canvas = mean.clamp(0, 255).to(torch.uint8).expand(height, width, 3).contiguous()
            else:
                noise = torch.from_numpy(_FILL_NOISE).to(device)
                colours = (noise[:, None] + mean[None, :]).clamp_(0, 255).to(torch.uint8)
                generator = torch.Generator(device=device).manual_seed(self.noise_seed)
                levels = torch.randint(0, FILL_NOISE_LEVELS, (height, width), generator=generator, device=device)
                canvas = colours[levels]
        canvas = canvas.permute(2, 0, 1)
        for crop, box in zip(self.crops, self.boxes):
            left, top, right, bottom = (int(value) for value in box)
            pixels = torch.from_numpy(np.array(crop, np.uint8, order="C")).to(device).permute(2, 0, 1)  # own memory
            if (bottom - top, right - left) != tuple(pixels.shape[-2:]):
                pixels = TF.resize(pixels, [bottom - top, right - left], antialias=True)
            canvas[:, top:bottom, left:right] = pixels
        return canvas


def _new_canvas(crop: np.ndarray, size: tuple[int, int], fill: str, rng, plan_only: bool):
    """A filled canvas (ndarray), or with ``plan_only`` its :class:`CanvasPlan`."""
    return CanvasPlan.draw(crop, size, fill, rng) if plan_only else fill_canvas(crop, size, fill, rng)


def _as_array(crop) -> np.ndarray:
    array = np.asarray(load_image(crop, "crop") if isinstance(crop, Image.Image) else crop)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape[:2]:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 crop, got {array.shape} {array.dtype}")
    return array


def _paste(canvas, crop: np.ndarray, person_size: tuple[int, int], rng, origin=(0, 0), area=None):
    """Resize ``crop`` to ``person_size`` and paste it at a uniform random position of ``area`` of ``canvas`` (an
    ndarray, or a :class:`CanvasPlan`, which records the crop and its place to paint later)."""
    planned = isinstance(canvas, CanvasPlan)
    area_h, area_w = area if area is not None else (canvas.size if planned else canvas.shape[:2])
    person_h, person_w = person_size
    top = origin[0] + int(rng.integers(0, area_h - person_h + 1))
    left = origin[1] + int(rng.integers(0, area_w - person_w + 1))
    box = np.array([left, top, left + person_w, top + person_h], dtype=np.float32)
    if planned:
        canvas.crops.append(crop)
        canvas.boxes.append(box)
        return box
    if (person_h, person_w) != crop.shape[:2]:
        crop = np.asarray(Image.fromarray(crop).resize((person_w, person_h), Image.BILINEAR))
    canvas[top : top + person_h, left : left + person_w] = crop
    return box


def _expanded_person_size(crop_hw, out_hw, rng, ratio_range, keep_aspect) -> tuple[int, int]:
    low, high = ratio_range
    if not 1.0 <= low <= high:
        raise ValueError(f"ratio_range must satisfy 1 <= low <= high, got {ratio_range}")
    crop_h, crop_w = crop_hw
    out_h, out_w = out_hw
    ratio_h = rng.uniform(low, high)
    if keep_aspect:
        # One scale for both sides: the canvas width follows from the height ratio and the output
        # aspect, at least the crop width (a crop wider than the output aspect is then squeezed).
        scale = out_h / (ratio_h * crop_h)
        person_h, person_w = out_h / ratio_h, min(crop_w * scale, out_w)
    else:
        ratio_w = rng.uniform(low, high)
        person_h, person_w = out_h / ratio_h, out_w / ratio_w
    return max(1, min(out_h, round(person_h))), max(1, min(out_w, round(person_w)))


def expand_resize(
    crop,
    rng: np.random.Generator,
    *,
    ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
    out_size: tuple[int, int] = DEFAULT_CANVAS_SIZE,
    keep_aspect: bool = True,
    fill: str = "mean_noise",
    plan_only: bool = False,
) -> tuple[np.ndarray | CanvasPlan, np.ndarray]:
    """The paper's "expand_resize": a crop at a random place of a canvas of random proportions to
    the crop, the canvas resized to ``out_size`` (height, width).

    The canvas height is ``ratio_h * crop height`` with ``ratio_h ~ U(ratio_range)``. With
    ``keep_aspect`` (default: persons in scene images are never stretched, so neither should the
    pre-training persons be) the canvas width is chosen so the resized person keeps its aspect ratio;
    without it the width ratio is drawn independently from the same range (the literal per-side
    reading). Equivalent to building the canvas and resizing it, but the crop is resized once to its
    final size and pasted on an ``out_size`` canvas (cheaper, same geometry).

    Returns:
        (canvas (out_h, out_w, 3) uint8 or, with ``plan_only``, its :class:`CanvasPlan`; box (4,) float32 xyxy of
        the person on it).
    """
    array = _as_array(crop)
    canvas = _new_canvas(array, out_size, fill, rng, plan_only)
    person_size = _expanded_person_size(array.shape[:2], out_size, rng, ratio_range, keep_aspect)
    return canvas, _paste(canvas, array, person_size, rng)


def random_paste(
    crop,
    rng: np.random.Generator,
    *,
    canvas_size: tuple[int, int] = DEFAULT_CANVAS_SIZE,
    fill: str = "mean_noise",
    plan_only: bool = False,
) -> tuple[np.ndarray | CanvasPlan, np.ndarray]:
    """The Table 4 ablation: paste the crop at its own size at a random place of a fixed canvas.

    A crop larger than the canvas is first shrunk (keeping its aspect) to fit. Returns
    (canvas (h, w, 3) uint8 or, with ``plan_only``, its :class:`CanvasPlan`; box (4,) float32 xyxy).
    """
    array = _as_array(crop)
    canvas = _new_canvas(array, canvas_size, fill, rng, plan_only)
    crop_h, crop_w = array.shape[:2]
    shrink = min(1.0, canvas_size[0] / crop_h, canvas_size[1] / crop_w)
    person_size = (max(1, int(crop_h * shrink)), max(1, int(crop_w * shrink)))
    return canvas, _paste(canvas, array, person_size, rng)


def expand_resize_many(
    crops: Sequence,
    rng: np.random.Generator,
    *,
    ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
    out_size: tuple[int, int] = DEFAULT_CANVAS_SIZE,
    keep_aspect: bool = True,
    fill: str = "mean_noise",
    plan_only: bool = False,
) -> tuple[np.ndarray | CanvasPlan, np.ndarray]:
    """Several crops on one canvas (beyond the paper, for throughput: one image, several persons).

    The canvas is split into ``len(crops)`` equal vertical strips and each crop is expand_resized into
    its own strip, so persons never overlap. Returns (canvas or, with ``plan_only``, its :class:`CanvasPlan`;
    boxes (k, 4) float32 in crop order).
    """
    arrays = [_as_array(c) for c in crops]
    if not arrays:
        raise ValueError("expand_resize_many needs at least one crop")
    out_h, out_w = out_size
    if out_w < len(arrays):
        raise ValueError(f"cannot split a canvas {out_w} px wide into {len(arrays)} strips")
    canvas = _new_canvas(arrays[0], out_size, fill, rng, plan_only)
    edges = np.linspace(0, out_w, len(arrays) + 1).round().astype(int)
    boxes = []
    for array, left, right in zip(arrays, edges[:-1], edges[1:]):
        strip = (out_h, int(right - left))
        person_size = _expanded_person_size(array.shape[:2], strip, rng, ratio_range, keep_aspect)
        boxes.append(_paste(canvas, array, person_size, rng, origin=(0, int(left)), area=strip))
    return canvas, np.stack(boxes)


def _ignore_regions(record: dict, where: str) -> np.ndarray:
    """A scene record's ignore regions as (k, 4) float32; a record without the field has none."""
    regions = np.asarray(record.get("ignore_regions", ()), np.float32)
    if regions.size == 0:
        return np.zeros((0, 4), np.float32)
    if regions.ndim != 2 or regions.shape[1] != 4:
        raise ValueError(f"{where}: ignore_regions must be a (k, 4) xyxy array, got shape {regions.shape}")
    return regions


def unify_record(
    record: dict,
    identity_space: IdentitySpace,
    source_index: int,
    record_index: int,
    rng: np.random.Generator,
    *,
    reid_operation: str = "expand_resize",
    ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
    canvas_size: tuple[int, int] = DEFAULT_CANVAS_SIZE,
    extra_crops: Sequence[tuple[int, dict]] = (),
    canvas_in_step: bool = False,
) -> dict:
    """Turn one record of any source into a unified pre-training sample.

    Args:
        record: a unified record (:mod:`.schema`); ``image`` in any form :func:`load_image` reads.
        identity_space: the global identity index built from every source.
        source_index / record_index: where the record sits in ``identity_space``.
        rng: randomness for canvas size, position and fill.
        reid_operation: "expand_resize" (paper) or "random_paste" (Table 4 ablation) for re-ID crops.
        ratio_range / canvas_size: see :func:`expand_resize` (``canvas_size`` is the fixed canvas of
            both operations).
        extra_crops: ``(record_index, record)`` of more crops of the same re-ID source to place on the
            same canvas (:func:`expand_resize_many`); empty by default (the paper's one crop per canvas).
        canvas_in_step: a re-ID canvas is returned as its :class:`CanvasPlan` (``image``), painted later in the
            training step (module docstring); detection images are unaffected.

    Returns:
        ``{"image": (H, W, 3) uint8 (or a CanvasPlan), "boxes": (n, 4) float32, "person_ids": (n,) int64 global ids,
        "person_index": (n,) int64 index of the person in the source record(s), "ignore_regions": (k, 4)
        float32 xyxy (the record's; a re-ID canvas has none), "domain_id": int,
        "task": the IAM task ("detection" | "reid"), "has_identity": bool (a labeled person is present),
        "source": str}``.
    """
    block = identity_space.sources[source_index]
    where = f"{block.name}[{record_index}] {record.get('image_id', '')}".strip()
    image = np.asarray(load_image(record["image"], where))
    person_ids = np.asarray(record["person_ids"], np.int64).reshape(-1)
    global_ids = identity_space.global_ids(source_index, record_index, person_ids)
    has_identity = block.task != "detection" and bool((person_ids != NO_IDENTITY).any())
    if block.task == "reid":
        crops = [image] + [np.asarray(load_image(r["image"], f"{block.name}[{i}]")) for i, r in extra_crops]
        for index, extra in extra_crops:
            extra_ids = np.asarray(extra["person_ids"], np.int64).reshape(-1)
            global_ids = np.concatenate([global_ids, identity_space.global_ids(source_index, index, extra_ids)])
            has_identity = has_identity or bool((extra_ids != NO_IDENTITY).any())
        if len(crops) > 1:
            if reid_operation != "expand_resize":
                raise ValueError("several crops per canvas is only defined for reid_operation='expand_resize'")
            image, boxes = expand_resize_many(
                crops, rng, ratio_range=ratio_range, out_size=canvas_size, plan_only=canvas_in_step
            )
        elif reid_operation == "expand_resize":
            image, box = expand_resize(
                image, rng, ratio_range=ratio_range, out_size=canvas_size, plan_only=canvas_in_step
            )
            boxes = box[None]
        elif reid_operation == "random_paste":
            image, box = random_paste(image, rng, canvas_size=canvas_size, plan_only=canvas_in_step)
            boxes = box[None]
        else:
            raise ValueError(f"reid_operation must be 'expand_resize' or 'random_paste', got {reid_operation!r}")
        if len(boxes) != len(global_ids):
            raise ValueError(f"{where}: a re-ID record must hold exactly one person, got {len(person_ids)}")
        ignore_regions = np.zeros((0, 4), np.float32)
    else:
        boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
        ignore_regions = _ignore_regions(record, where)
    return {
        "image": image,
        "boxes": boxes,
        "person_ids": global_ids,
        "person_index": np.arange(len(global_ids), dtype=np.int64),
        "ignore_regions": ignore_regions,
        "domain_id": block.domain_id,
        "task": alignment_task(block.task),
        "has_identity": has_identity,
        "source": block.name,
    }
