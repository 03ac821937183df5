"""The reference training preprocessing: Inception-style random crop, resize, horizontal flip.

Ported from Google's ``models/official/mnasnet/preprocessing.py`` and TensorFlow's
``sample_distorted_bounding_box`` kernel, so that crops follow the same distribution:
the crop *height* is drawn uniformly between the smallest and largest height the
area range allows (not the area), the offsets never touch the last row/column, and
a failed search (or a crop equal to the whole image) falls back to the 0.875 centre
crop. Every random draw comes from a generator seeded per sample, so a resumed run
sees the same crops as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from PIL import Image

from mnasnet.data.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CropParams", "TrainTransform", "center_crop_box", "resize_bilinear_tf", "sample_distorted_bounding_box"]

CROP_PADDING = 32  # the reference's eval crop: image_size / (image_size + 32) of the short side


@dataclasses.dataclass(frozen=True)
class CropParams:
    """``sample_distorted_bounding_box`` settings; the defaults are the reference's."""

    min_object_covered: float = 0.1
    aspect_ratio_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    area_range: tuple[float, float] = (0.08, 1.0)
    max_attempts: int = 10


def _lrint(value: float) -> int:
    # C's lrintf rounds half to even, like Python's round()
    return int(round(value))


def _random_crop(
    width: int, height: int, params: CropParams, aspect_ratio: float, rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """One attempt of TF's GenerateRandomCrop: (x, y, w, h) or None."""
    min_area = params.area_range[0] * width * height
    max_area = params.area_range[1] * width * height
    crop_height = _lrint(math.sqrt(min_area / aspect_ratio))
    max_height = _lrint(math.sqrt(max_area / aspect_ratio))
    if _lrint(max_height * aspect_ratio) > width:
        max_height = int((width + 0.5 - 1e-7) / aspect_ratio)
        if _lrint(max_height * aspect_ratio) > width:
            max_height -= 1
    max_height = min(max_height, height)
    crop_height = min(crop_height, max_height)
    if crop_height < max_height:
        crop_height += int(rng.integers(0, max_height - crop_height + 1))
    crop_width = _lrint(crop_height * aspect_ratio)
    area = crop_width * crop_height
    # TF nudges the height by one pixel when rounding pushed the area out of range
    if area < min_area:
        crop_height += 1
        crop_width = _lrint(crop_height * aspect_ratio)
        area = crop_width * crop_height
    if area > max_area:
        crop_height -= 1
        crop_width = _lrint(crop_height * aspect_ratio)
        area = crop_width * crop_height
    if area < min_area or area > max_area or not (0 < crop_width <= width) or not (0 < crop_height <= height):
        return None
    # TF draws offsets in [0, size - crop): a crop never ends on the last row or column
    y = int(rng.integers(0, height - crop_height)) if crop_height < height else 0
    x = int(rng.integers(0, width - crop_width)) if crop_width < width else 0
    return x, y, crop_width, crop_height


def sample_distorted_bounding_box(
    width: int, height: int, rng: np.random.Generator, params: CropParams = CropParams()
) -> tuple[int, int, int, int]:
    """TF's ``sample_distorted_bounding_box`` with the whole image as the only box.

    Returns:
        ``(x, y, crop_width, crop_height)``; the whole image when no attempt succeeds.
    """
    low, high = params.aspect_ratio_range
    for _ in range(params.max_attempts):
        aspect_ratio = float(rng.random()) * (high - low) + low
        box = _random_crop(width, height, params, aspect_ratio, rng)
        if box is None:
            continue
        # min_object_covered: the crop must hold that fraction of the (whole-image) box
        if box[2] * box[3] >= 1 and box[2] * box[3] / (width * height) >= params.min_object_covered:
            return box
    return 0, 0, width, height


def center_crop_box(width: int, height: int, resolution: int) -> tuple[int, int, int, int]:
    """The reference's eval crop: ``resolution / (resolution + 32)`` of the short side, centred."""
    size = int(resolution / (resolution + CROP_PADDING) * min(width, height))
    return ((width - size) + 1) // 2, ((height - size) + 1) // 2, size, size


def resize_bilinear_tf(array: np.ndarray, size: int) -> np.ndarray:
    """TF1's ``tf.image.resize`` (bilinear, align_corners=False, half_pixel_centers=False), HWC float32.

    No antialiasing: the reference samples the source at ``dst * in / out``.
    """
    in_h, in_w = array.shape[:2]

    def axis(in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.arange(size, dtype=np.float32) * np.float32(in_size / size)
        low = np.floor(source).astype(np.int64)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, (source - low).astype(np.float32)

    y0, y1, fy = axis(in_h)
    x0, x1, fx = axis(in_w)
    array = array.astype(np.float32, copy=False)
    top = array[y0][:, x0] + (array[y0][:, x1] - array[y0][:, x0]) * fx[None, :, None]
    bottom = array[y1][:, x0] + (array[y1][:, x1] - array[y1][:, x0]) * fx[None, :, None]
    return top + (bottom - top) * fy[:, None, None]


class TrainTransform:
    """Random crop (reference parameters), resize to ``resolution``, random flip, normalise.

    Called as ``transform(image, rng)`` with an RGB PIL image and a NumPy generator;
    returns a float32 CHW tensor.
    """

    def __init__(
        self,
        resolution: int,
        *,
        crop: CropParams = CropParams(),
        hflip: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.resolution = resolution
        self.crop = crop
        self.hflip = hflip
        # the reference normalises 0-255 pixels
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.std = np.asarray(std, dtype=np.float32) * 255.0

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        width, height = image.size
        x, y, crop_width, crop_height = sample_distorted_bounding_box(width, height, rng, self.crop)
        if crop_width == width and crop_height == height:
            # the reference treats "crop == whole image" as a failed search
            x, y, crop_width, crop_height = center_crop_box(width, height, self.resolution)
        pixels = np.asarray(image.crop((x, y, x + crop_width, y + crop_height)), dtype=np.float32)
        pixels = resize_bilinear_tf(pixels, self.resolution)
        if self.hflip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        pixels = (pixels - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
