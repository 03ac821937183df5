"""Box-aware augmentations for SSD and RetinaNet training, and the evaluation resize.

Each transform maps a :class:`Sample` (float CHW image in ``[0, 1]``, ``xyxy`` pixel boxes,
labels) and a ``numpy.random.Generator`` to a new :class:`Sample`; every random choice comes
from that generator, so a sample's augmentation depends only on its seed. The pipelines:

- SSD (``ssd_train_transform``), as torchvision's detection reference builds it: photometric
  distortion, zoom out onto a mean-filled canvas, SSD's IoU crop, horizontal flip, then
  resize to the square input.
- RetinaNet (``retinanet_train_transform``): flip, then resize keeping the aspect ratio
  (letterbox, padded bottom-right with the mean) or plain resize to the square.
- Evaluation (``eval_transform``): the resize alone.

Resizing is bilinear with antialiasing (``torch.nn.functional.interpolate``, as torchvision's
``Resize`` does on tensors). Every sample also tracks the axis-aligned map from original
pixels to the output's pixels (``scale``, ``offset``), so predictions made on the network
input can be mapped back: ``x_original = (x - offset_x) / scale_x``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mnasnet.data.preprocess import IMAGENET_MEAN

__all__ = [
    "Compose",
    "HorizontalFlip",
    "IoUCrop",
    "Letterbox",
    "PhotometricDistort",
    "Resize",
    "Sample",
    "ZoomOut",
    "eval_transform",
    "retinanet_train_transform",
    "ssd_train_transform",
]

Transform = Callable[["Sample", np.random.Generator], "Sample"]


@dataclasses.dataclass
class Sample:
    """An image and its boxes while being transformed.

    Attributes:
        image: ``[3, H, W]`` float32 in ``[0, 1]``.
        boxes: ``[N, 4]`` float32 ``x1, y1, x2, y2`` in this image's pixels.
        labels: ``[N]`` int64.
        scale, offset: the map from the original image's pixels to this image's,
            ``x' = x * scale[0] + offset[0]`` (likewise y with index 1).
    """

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def mapped(self, image, boxes, labels, scale_xy, offset_xy) -> Sample:
        """A new sample after a map ``x' = x * s + o``, composed with this sample's."""
        (sx, sy), (ox, oy) = self.scale, self.offset
        (ax, ay), (bx, by) = scale_xy, offset_xy
        return Sample(image, boxes, labels, (sx * ax, sy * ay), (ox * ax + bx, oy * ay + by))


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(t).__name__ for t in self.transforms)})"


# -- geometry ----------------------------------------------------------------------------


def hflip(sample: Sample) -> Sample:
    width = sample.size[1]
    boxes = sample.boxes.clone()
    boxes[:, 0], boxes[:, 2] = width - sample.boxes[:, 2], width - sample.boxes[:, 0]
    return sample.mapped(sample.image.flip(-1), boxes, sample.labels, (-1.0, 1.0), (float(width), 0.0))


def resize(sample: Sample, height: int, width: int) -> Sample:
    old_height, old_width = sample.size
    image = sample.image
    if (height, width) != (old_height, old_width):
        image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        image = image[0].clamp_(0.0, 1.0)
    sx, sy = width / old_width, height / old_height
    boxes = sample.boxes * torch.tensor([sx, sy, sx, sy], dtype=sample.boxes.dtype)
    return sample.mapped(image, boxes, sample.labels, (sx, sy), (0.0, 0.0))


def crop(sample: Sample, top: int, left: int, height: int, width: int, keep: torch.Tensor | None = None) -> Sample:
    """The window ``[left, left + width) x [top, top + height)``; boxes shifted and clamped to it.

    ``keep`` (bool per box) selects the boxes to carry; boxes left narrower or shorter than a
    pixel are dropped (torchvision's ``SanitizeBoundingBoxes`` rule).
    """
    image = sample.image[:, top : top + height, left : left + width]
    boxes = sample.boxes - torch.tensor([left, top, left, top], dtype=sample.boxes.dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    if keep is None:
        keep = torch.ones(len(boxes), dtype=torch.bool)
    keep = keep & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return sample.mapped(image, boxes[keep], sample.labels[keep], (1.0, 1.0), (-float(left), -float(top)))


def pad(sample: Sample, top: int, left: int, height: int, width: int, fill: Sequence[float]) -> Sample:
    """Places the image at ``(left, top)`` on a ``height x width`` canvas of colour ``fill``."""
    old_height, old_width = sample.size
    canvas = torch.tensor(fill, dtype=sample.image.dtype).view(3, 1, 1).repeat(1, height, width)
    canvas[:, top : top + old_height, left : left + old_width] = sample.image
    boxes = sample.boxes + torch.tensor([left, top, left, top], dtype=sample.boxes.dtype)
    return sample.mapped(canvas, boxes, sample.labels, (1.0, 1.0), (float(left), float(top)))


def box_iou(boxes: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    other_area = (other[:, 2] - other[:, 0]) * (other[:, 3] - other[:, 1])
    top_left = torch.maximum(boxes[:, None, :2], other[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], other[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    return intersection / (area[:, None] + other_area[None, :] - intersection)


class HorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return hflip(sample) if rng.random() < self.p else sample


class Resize:
    """Resize to ``size x size`` (or ``(height, width)``), ignoring the aspect ratio: SSD's input."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.height, self.width = (size, size) if isinstance(size, int) else size

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return resize(sample, self.height, self.width)


class Letterbox:
    """Resize so the longer side is ``size``, keeping the aspect ratio; pad bottom and right to a square."""

    def __init__(self, size: int, fill: Sequence[float] = IMAGENET_MEAN) -> None:
        self.size, self.fill = size, tuple(fill)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        height, width = sample.size
        ratio = self.size / max(height, width)
        new_height = min(self.size, max(1, round(height * ratio)))
        new_width = min(self.size, max(1, round(width * ratio)))
        return pad(resize(sample, new_height, new_width), 0, 0, self.size, self.size, self.fill)


class ZoomOut:
    """SSD's "expand": with probability ``p`` place the image on a canvas ``r`` times larger,
    ``r`` uniform in ``side_range``, filled with ``fill`` (torchvision ``RandomZoomOut``)."""

    def __init__(
        self, fill: Sequence[float] = IMAGENET_MEAN, side_range: tuple[float, float] = (1.0, 4.0), p: float = 0.5
    ) -> None:
        if not 1.0 <= side_range[0] <= side_range[1]:
            raise ValueError(f"side_range must satisfy 1 <= low <= high, got {side_range}")
        self.fill, self.side_range, self.p = tuple(fill), side_range, p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        height, width = sample.size
        ratio = rng.uniform(*self.side_range)
        canvas_width, canvas_height = int(width * ratio), int(height * ratio)
        left, top = int((canvas_width - width) * rng.random()), int((canvas_height - height) * rng.random())
        return pad(sample, top, left, canvas_height, canvas_width, self.fill)


class IoUCrop:
    """SSD's random crop (torchvision ``RandomIoUCrop``, the SSD paper's sampling).

    Draw a minimum IoU from ``options`` (1.0 means keep the whole image); then up to
    ``trials`` times a window of ``min_scale..max_scale`` of each side with aspect ratio in
    ``[min_aspect, max_aspect]``, accepted if some box has its centre inside and IoU with the
    window of at least the minimum. Boxes whose centre is inside are kept, clamped to the window.
    If no window is accepted the draw starts over; after ``max_rounds`` the image is kept whole
    (torchvision loops until one is found; an image without boxes is kept whole at once).
    """

    def __init__(
        self,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect: float = 0.5,
        max_aspect: float = 2.0,
        options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
        trials: int = 40,
        max_rounds: int = 100,
    ) -> None:
        self.min_scale, self.max_scale, self.min_aspect, self.max_aspect = min_scale, max_scale, min_aspect, max_aspect
        self.options, self.trials, self.max_rounds = tuple(options), trials, max_rounds

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if len(sample.boxes) == 0:
            return sample
        for _ in range(self.max_rounds):
            min_iou = self.options[rng.integers(len(self.options))]
            if min_iou >= 1.0:
                return sample
            window = self._find_window(sample, min_iou, rng)
            if window is not None:
                return crop(sample, *window)
        return sample

    def _find_window(self, sample: Sample, min_iou: float, rng: np.random.Generator):
        height, width = sample.size
        boxes = sample.boxes
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        for _ in range(self.trials):
            scale_w, scale_h = self.min_scale + (self.max_scale - self.min_scale) * rng.random(2)
            new_width, new_height = int(width * scale_w), int(height * scale_h)
            if new_height == 0 or not self.min_aspect <= new_width / new_height <= self.max_aspect:
                continue
            left, top = int((width - new_width) * rng.random()), int((height - new_height) * rng.random())
            right, bottom = left + new_width, top + new_height
            if left == right or top == bottom:
                continue
            inside = (left < centre_x) & (centre_x < right) & (top < centre_y) & (centre_y < bottom)
            if not inside.any():
                continue
            window = torch.tensor([[left, top, right, bottom]], dtype=boxes.dtype)
            if box_iou(boxes[inside], window).max() < min_iou:
                continue
            return top, left, new_height, new_width, inside
        return None


# -- colour ------------------------------------------------------------------------------
# The formulas of torchvision.transforms.v2.functional for float images, so the two agree.


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    red, green, blue = image.unbind(-3)
    return (0.2989 * red + 0.587 * green + 0.114 * blue).unsqueeze(-3)


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: float) -> torch.Tensor:
    return (ratio * image + (1.0 - ratio) * other).clamp_(0.0, 1.0)


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    return (image * factor).clamp_(0.0, 1.0)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(image, _grayscale(image).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(image, _grayscale(image), factor)


def adjust_hue(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Rotates the hue by ``factor`` turns (``-0.5..0.5``) through HSV."""
    hue, saturation, value = _rgb_to_hsv(image).unbind(-3)
    hue = (hue + factor) % 1.0
    return _hsv_to_rgb(torch.stack((hue, saturation, value), dim=-3))


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    red, green, blue = image.unbind(-3)
    maximum, _ = image.max(-3)
    minimum, _ = image.min(-3)
    equal = maximum == minimum
    chroma = maximum - minimum
    saturation = chroma / torch.where(equal, torch.ones_like(maximum), maximum)
    chroma_divisor = torch.where(equal, torch.ones_like(chroma), chroma)
    red_c = (maximum - red) / chroma_divisor
    green_c = (maximum - green) / chroma_divisor
    blue_c = (maximum - blue) / chroma_divisor
    max_red, max_green = maximum == red, (maximum == green) & (maximum != red)
    max_other = (maximum != green) & (maximum != red)
    hue = max_red * (blue_c - green_c) + max_green * (2.0 + red_c - blue_c) + max_other * (4.0 + green_c - red_c)
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack((hue, saturation, maximum), dim=-3)


def _hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = image.unbind(-3)
    hue6 = hue * 6.0
    sector = torch.floor(hue6)
    fraction = hue6 - sector
    sector = sector.to(torch.int64) % 6
    p = (value * (1.0 - saturation)).clamp_(0.0, 1.0)
    q = (value * (1.0 - saturation * fraction)).clamp_(0.0, 1.0)
    t = (value * (1.0 - saturation * (1.0 - fraction))).clamp_(0.0, 1.0)
    red = torch.stack((value, q, p, p, t, value), dim=-3)
    green = torch.stack((t, value, value, q, p, p), dim=-3)
    blue = torch.stack((p, p, t, value, value, q), dim=-3)
    index = sector.unsqueeze(-3)
    return torch.cat(
        [channel.gather(-3, index) for channel in (red, green, blue)],
        dim=-3,
    )


class PhotometricDistort:
    """SSD's photometric distortion (torchvision ``RandomPhotometricDistort``): each of brightness,
    contrast, saturation and hue changes with probability ``p``, contrast before or after the
    colour changes at random, then a random channel permutation with probability ``p``."""

    def __init__(
        self,
        brightness: tuple[float, float] = (0.875, 1.125),
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue: tuple[float, float] = (-0.05, 0.05),
        p: float = 0.5,
    ) -> None:
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def draw(self, rng: np.random.Generator) -> dict:
        """The random choices of one call (also what tests replay through torchvision)."""

        def factor(low_high):
            chosen = rng.random() < self.p
            value = rng.uniform(*low_high)
            return value if chosen else None

        params = {
            "brightness": factor(self.brightness),
            "contrast": factor(self.contrast),
            "saturation": factor(self.saturation),
            "hue": factor(self.hue),
            "contrast_before": rng.random() < 0.5,
        }
        params["permutation"] = rng.permutation(3).tolist() if rng.random() < self.p else None
        return params

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = self.apply(sample.image, self.draw(rng))
        return Sample(image, sample.boxes, sample.labels, sample.scale, sample.offset)

    @staticmethod
    def apply(image: torch.Tensor, params: dict) -> torch.Tensor:
        if params["brightness"] is not None:
            image = adjust_brightness(image, params["brightness"])
        if params["contrast"] is not None and params["contrast_before"]:
            image = adjust_contrast(image, params["contrast"])
        if params["saturation"] is not None:
            image = adjust_saturation(image, params["saturation"])
        if params["hue"] is not None:
            image = adjust_hue(image, params["hue"])
        if params["contrast"] is not None and not params["contrast_before"]:
            image = adjust_contrast(image, params["contrast"])
        if params["permutation"] is not None:
            image = image[params["permutation"]]
        return image


# -- pipelines ---------------------------------------------------------------------------


def ssd_train_transform(
    size: int = 320,
    *,
    photometric: bool = True,
    zoom_out: bool = True,
    iou_crop: bool = True,
    fill: Sequence[float] = IMAGENET_MEAN,
) -> Compose:
    """SSD's training augmentation (torchvision reference ``"ssd"``; without photometric and
    zoom-out it is the ``"ssdlite"`` recipe), then the resize to ``size x size``. ``iou_crop=False``
    leaves out the random crop, which short schedules may not need."""
    steps: list[Transform] = []
    if photometric:
        steps.append(PhotometricDistort())
    if zoom_out:
        steps.append(ZoomOut(fill=fill))
    if iou_crop:
        steps.append(IoUCrop())
    steps += [HorizontalFlip(), Resize(_check_size(size))]
    return Compose(steps)


def retinanet_train_transform(
    size: int = 640, *, letterbox: bool = True, fill: Sequence[float] = IMAGENET_MEAN
) -> Compose:
    """RetinaNet's training augmentation: horizontal flip, then letterbox (or plain resize) to ``size``."""
    size = _check_size(size)
    return Compose([HorizontalFlip(), Letterbox(size, fill) if letterbox else Resize(size)])


def eval_transform(size: int, *, letterbox: bool = False, fill: Sequence[float] = IMAGENET_MEAN) -> Compose:
    """The evaluation resize: plain to ``size x size`` (SSD) or letterbox (RetinaNet)."""
    size = _check_size(size)
    return Compose([Letterbox(size, fill) if letterbox else Resize(size)])


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 4096:
        raise ValueError(f"input size must be an integer from 1 to 4096, got {size!r}")
    return size
