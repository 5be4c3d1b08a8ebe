"""Photometric augmentation of the pre-training views: SimSiam's colour jitter, grayscale and blur.

SimSiam (Chen and He 2021), whose augmentation the paper's contrastive branch builds on: ColorJitter(0.4,
0.4, 0.4, 0.1) with p=0.8, grayscale with p=0.2, Gaussian blur sigma 0.1-2 with p=0.5. The parameters of a
view are drawn in the data worker (:meth:`PhotometricAugmentation.draw`, from torch's RNG, which the training
loop seeds per sample, so a resumed run draws the same ones) and applied to the pixels by
:meth:`PhotometricAugmentation.apply`, either right there or later on the batch on the training device
(:meth:`PhotometricAugmentation.apply_to_batch`): on a GPU the per-pixel work costs next to nothing, while
on a CPU core the hue jitter and the blur cost more than the decoding, the unification and the geometric
augmentation together.

The draws are torchvision's own, in the order of ``v2.RandomApply([v2.ColorJitter(...)], p)``,
``v2.RandomGrayscale(p)``, ``v2.RandomApply([v2.GaussianBlur(...)], p)``: the same seed gives the same
parameters as that pipeline. The pixel operations compute torchvision's functions (``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``, ``gaussian_blur``) with
fewer passes over the image; they agree with them to float rounding (tests/data/test_photometric.py):

- hue: torchvision converts RGB -> HSV -> RGB with masks, ``where``, ``fmod`` and a gather. Rotating the hue
  keeps each pixel's max and min channel; each output channel is ``min + (max - min) * profile(hue)``, the
  HSV hexagon's piecewise-linear profile, written with ``sign``, ``abs`` and ``clamp`` (3x faster on a CPU
  core: ~20 instead of ~60 ms for a 640 x 960 view);
- blur: the 2-D Gaussian kernel of torchvision is the outer product of its 1-D kernel, so the blur is one
  9-tap pass along each axis (18 multiply-adds per pixel instead of 81), with the same reflect padding
  (~16 instead of ~42 ms);
- contrast: the mean of the grayscale image is the grayscale weighting of the channel means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torchvision.transforms import v2

from ..image_processing_person_search import PersonSearchImageProcessor

GRAYSCALE_WEIGHTS = (0.2989, 0.587, 0.114)
"""ITU-R 601-2 luma weights, as ``torchvision.transforms.v2.functional.rgb_to_grayscale``."""

JITTER_OPERATIONS = ("brightness", "contrast", "saturation", "hue")
"""ColorJitter's operations by index (its ``fn_idx``): the order they run in is drawn per view."""


@dataclass(frozen=True)
class PhotometricParams:
    """One view's photometric parameters.

    Attributes:
        jitter_order: the ColorJitter operations by index into :data:`JITTER_OPERATIONS`, in the order they run;
            empty when the jitter is not applied.
        brightness / contrast / saturation / hue: the jitter factors (1, 1, 1, 0 do nothing).
        grayscale: convert the view to grayscale after the jitter.
        blur_sigma: standard deviation (pixels) of the Gaussian blur applied last, ``None`` for no blur.
    """

    jitter_order: tuple[int, ...] = ()
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    grayscale: bool = False
    blur_sigma: float | None = None


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (H, W) luma."""
    red, green, blue = image.unbind(-3)
    return red.mul(GRAYSCALE_WEIGHTS[0]).add_(green, alpha=GRAYSCALE_WEIGHTS[1]).add_(blue, alpha=GRAYSCALE_WEIGHTS[2])


def adjust_brightness_(image: torch.Tensor, factor: float) -> torch.Tensor:
    """In place on a float (3, H, W) image in [0, 1]: ``torchvision`` ``adjust_brightness``."""
    return image.mul_(factor).clamp_(0.0, 1.0)


def adjust_contrast_(image: torch.Tensor, factor: float) -> torch.Tensor:
    """In place: ``adjust_contrast`` (blend with the mean luma of the image)."""
    channel_means = image.mean(dim=(-2, -1))
    mean = sum(weight * channel_means[c] for c, weight in enumerate(GRAYSCALE_WEIGHTS))
    return image.mul_(factor).add_(mean * (1.0 - factor)).clamp_(0.0, 1.0)


def adjust_saturation_(image: torch.Tensor, factor: float) -> torch.Tensor:
    """In place: ``adjust_saturation`` (blend with the luma image)."""
    gray = _grayscale(image)
    return image.mul_(factor).add_(gray.unsqueeze(-3), alpha=1.0 - factor).clamp_(0.0, 1.0)


def adjust_hue_(image: torch.Tensor, factor: float) -> torch.Tensor:
    """In place: ``adjust_hue``, the HSV hue turned by ``factor`` of a full turn, saturation and value kept.

    In sixths of a turn, the hue ``h`` of a pixel with max channel ``mx``, min ``mn`` and chroma ``c = mx - mn``
    is ``(g - b) / c`` when red is the max, ``2 + (b - r) / c`` for green, ``4 + (r - g) / c`` for blue
    (ties give the same hue either way); a channel of the turned pixel is ``mn + c * profile(h)`` with the
    hexagon's profiles red ``clamp(|h - 3| - 1)``, green ``clamp(2 - |h - 2|)``, blue ``clamp(2 - |h - 4|)``
    on [0, 1] (torchvision's ``_hsv_to_rgb`` table of ``v``, ``p``, ``q``, ``t`` per sector, written out).
    The branch masks are exact 0/1 floats from ``sign``, which is cheaper than ``where`` on a CPU, and every
    step writes into one of seven planes: on a CPU, fresh tensors cost more than the arithmetic.
    """
    red, green, blue = image.unbind(-3)
    high = torch.maximum(red, green)
    torch.maximum(high, blue, out=high)
    low = torch.minimum(red, green)
    torch.minimum(low, blue, out=low)
    chroma = torch.sub(high, low)
    red_is_max = torch.sub(red, high).sign_().add_(1.0)
    green_is_max = torch.sub(green, high).sign_().add_(1.0)
    green_is_max.sub_(green_is_max * red_is_max)
    hue = torch.sub(red, green).add_(chroma, alpha=4.0)  # blue is the max
    other = torch.sub(blue, red).add_(chroma, alpha=2.0)
    hue.lerp_(other, green_is_max)
    hue.lerp_(torch.sub(green, blue, out=other), red_is_max)
    # A grey pixel (chroma 0) has numerator 0: any finite divisor leaves its hue 0 and its colour unchanged.
    hue.div_(torch.clamp(chroma, min=torch.finfo(image.dtype).tiny, out=other)).add_(6.0 * factor)
    hue.add_(torch.div(hue, 6.0, out=other).floor_(), alpha=-6.0)  # into [0, 6)
    # clamp(2 - |h - k|) = 1 - clamp(|h - k| - 1): green and blue are mx - c * clamp(|h - k| - 1), red mn + c * it.
    for channel, centre, base, sign in zip((red, green, blue), (3.0, 2.0, 4.0), (low, high, high), (1.0, -1.0, -1.0)):
        profile = torch.sub(hue, centre, out=other).abs_().sub_(1.0).clamp_(0.0, 1.0)
        torch.addcmul(base, chroma, profile, value=sign, out=channel)
    return image


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """torchvision's 1-D Gaussian kernel (``exp(-x^2 / 2 sigma^2)`` on integer offsets, normalised)."""
    half = (kernel_size - 1) * 0.5
    offsets = torch.linspace(-half, half, steps=kernel_size, dtype=dtype, device=device)
    return torch.softmax(-(offsets / sigma).pow(2) / 2.0, dim=0)


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """``gaussian_blur(image, [k, k], [sigma, sigma])`` as two 1-D passes over the reflect-padded image.

    Both passes run on the flattened padded image, whose shifted slices are contiguous: a tap of the
    horizontal pass shifts by one element, of the vertical pass by one padded row. Outputs near a row's or
    a channel's end read into the next one; those are the padding positions, cut off at the end. The two
    passes write into two buffers in turn (a new tensor per tap would cost more than the taps on a CPU).
    """
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    half = kernel_size // 2
    height, width = image.shape[-2:]
    weights = gaussian_kernel1d(kernel_size, sigma, image.dtype, image.device).tolist()
    source = nnf.pad(image.unsqueeze(0), (half, half, half, half), mode="reflect").reshape(-1)
    target = torch.empty_like(source)
    row = width + 2 * half
    for step in (1, row):
        length = source.numel() - (kernel_size - 1) * step
        blurred = torch.mul(source[:length], weights[0], out=target[:length])
        for tap in range(1, kernel_size):
            blurred.add_(source[tap * step : tap * step + length], alpha=weights[tap])
        source, target = target, source
    return source.view(-1, height + 2 * half, row)[:, :height, :width].reshape(image.shape)


class PhotometricAugmentation:
    """Draw (in the worker) and apply (there or in the training step) one view's photometric augmentation.

    Args:
        processor: its ``image_mean``/``image_std`` normalise the result (default ``PersonSearchImageProcessor()``:
            ImageNet statistics).
        color_jitter_p: probability of ColorJitter(``brightness``, ``contrast``, ``saturation``, ``hue``)
            (0.8 and 0.4, 0.4, 0.4, 0.1: SimSiam).
        grayscale_p: grayscale probability (0.2, SimSiam).
        blur_p: Gaussian blur probability (0.5, SimSiam), sigma uniform in ``blur_sigma`` ((0.1, 2.0), SimSiam)
            with a ``blur_kernel`` px kernel (9: SimSiam scales the kernel to 10% of a 224-px image; at
            detector sizes that kernel would cost more than the rest of the pipeline, and 9 px covers +-2
            sigma at sigma 2).
    """

    def __init__(
        self,
        processor: PersonSearchImageProcessor | None = None,
        *,
        color_jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_kernel: int = 9,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ):
        processor = processor if processor is not None else PersonSearchImageProcessor()
        for name, p in (("color_jitter_p", color_jitter_p), ("grayscale_p", grayscale_p), ("blur_p", blur_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if blur_kernel % 2 == 0 or blur_kernel < 1:
            raise ValueError(f"blur_kernel must be odd and positive, got {blur_kernel}")
        self.color_jitter_p = color_jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.blur_kernel = blur_kernel
        # torchvision's transforms, kept for their parameter draws (ranges checked by their constructors).
        self.color_jitter = v2.ColorJitter(brightness, contrast, saturation, hue)
        self.blur = v2.GaussianBlur(blur_kernel, sigma=blur_sigma)
        self.image_mean = tuple(float(m) for m in processor.image_mean)
        self.image_std = tuple(float(s) for s in processor.image_std)

    def draw(self) -> PhotometricParams:
        """One view's parameters from torch's global RNG (see the module docstring for the order)."""
        jitter = {}
        if torch.rand(1) < self.color_jitter_p:
            jitter = self.color_jitter.make_params([])
            jitter = {
                "jitter_order": tuple(int(i) for i in jitter["fn_idx"]),
                "brightness": jitter["brightness_factor"],
                "contrast": jitter["contrast_factor"],
                "saturation": jitter["saturation_factor"],
                "hue": jitter["hue_factor"],
            }
        grayscale = bool(torch.rand(1) < self.grayscale_p)
        blur_sigma = float(self.blur.make_params([])["sigma"][0]) if torch.rand(1) < self.blur_p else None
        return PhotometricParams(**jitter, grayscale=grayscale, blur_sigma=blur_sigma)

    def apply(self, image: torch.Tensor, params: PhotometricParams) -> torch.Tensor:
        """uint8 (3, H, W) image -> the augmented float32 image, normalised, on the image's device."""
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
        out = image.to(torch.float32).div_(255.0)
        for operation in params.jitter_order:
            name = JITTER_OPERATIONS[operation]
            if name == "brightness":
                adjust_brightness_(out, params.brightness)
            elif name == "contrast":
                adjust_contrast_(out, params.contrast)
            elif name == "saturation":
                adjust_saturation_(out, params.saturation)
            else:
                adjust_hue_(out, params.hue)
        if params.grayscale:
            out.copy_(_grayscale(out).unsqueeze(-3).expand_as(out))
        if params.blur_sigma is not None:
            out = gaussian_blur(out, self.blur_kernel, params.blur_sigma)
        mean = torch.tensor(self.image_mean, dtype=out.dtype, device=out.device).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=out.dtype, device=out.device).view(3, 1, 1)
        return out.sub_(mean).div_(std)

    def apply_to_batch(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, params: Sequence[PhotometricParams]
    ) -> torch.Tensor:
        """uint8 (B, 3, H, W) zero-padded views (``image_sizes`` (B, 2) before padding) -> float32 normalised,
        each view augmented with its own parameters, the padding zero (the collate contract)."""
        if len(params) != len(pixel_values) or len(image_sizes) != len(pixel_values):
            raise ValueError(
                f"{len(pixel_values)} images, {len(image_sizes)} sizes and {len(params)} photometric parameter sets: "
                "they must have the same length"
            )
        out = torch.zeros(pixel_values.shape, dtype=torch.float32, device=pixel_values.device)
        for index, ((height, width), view_params) in enumerate(zip(image_sizes.tolist(), params)):
            out[index, :, :height, :width] = self.apply(pixel_values[index, :, :height, :width], view_params)
        return out

    def __call__(self, batch: Mapping) -> dict:
        """The training-step hook: a :func:`~.collate.collate_pretrain` batch whose views are uint8 with their
        ``photometric``/``photometric_2`` parameters -> the batch the model takes (float views, no parameters).
        """
        out = dict(batch)
        for suffix in ("", "_2"):
            params = out.pop("photometric" + suffix, None)
            if params is not None:
                out["pixel_values" + suffix] = self.apply_to_batch(
                    out["pixel_values" + suffix], out["image_sizes" + suffix], params
                )
        return out
