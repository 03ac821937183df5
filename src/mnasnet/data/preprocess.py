"""How a model's inputs are prepared: the settings a checkpoint carries with it.

Two evaluation pipelines, each reproducing its publisher's to the last bit that
matters:

- ``"resize_crop"`` (torchvision ``weights.transforms()``, timm ``create_transform``):
  resize the short side with PIL, centre-crop, ``/ 255``, normalise.
- ``"crop_resize"`` (Google's reference ``preprocessing.py``): centre-crop a
  fraction of the short side with the reference's integer arithmetic, resize with
  TF's legacy bilinear kernel (``align_corners=False``, ``half_pixel_centers=False``),
  normalise the 0-255 pixels. Implemented in numpy; TensorFlow is not needed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from mnasnet import limits
from mnasnet.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocess",
    "build_eval_transform",
    "tf_legacy_resize_bilinear",
]

# The reference normalises 0-255 pixels with these times 255 ([123.675, 116.28,
# 103.53] / [58.395, 57.12, 57.375]), so one pair serves Google, torchvision and timm.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODES = ("resize_crop", "crop_resize")
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
# The reference crops image_size / (image_size + CROP_PADDING) of the short side.
REFERENCE_CROP_PADDING = 32
MAX_SIDE = limits.MAX_PREPROCESS_SIDE
MAX_RESIZED_PIXELS = limits.MAX_RESIZED_PIXELS


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing.

    Attributes:
        resolution: side of the square the model sees.
        resize: ``"resize_crop"`` only: the short side before cropping; ``None``
            means ``floor(resolution / crop_pct)`` (timm's rule).
        crop_pct: the fraction of the image kept: ``resolution / resize`` for
            ``"resize_crop"`` when ``resize`` is ``None``, the centre-crop fraction of
            the short side for ``"crop_resize"``.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (PIL kernels);
            ``"crop_resize"`` always uses TF's legacy bilinear kernel.
        mean, std: per-channel normalisation of pixels scaled to 0-1.
        mode: ``"resize_crop"`` (torchvision/timm) or ``"crop_resize"`` (Google's reference).
    """

    resolution: int = 224
    resize: int | None = 256
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mode: str = "resize_crop"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown preprocessing mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}; choose from {', '.join(INTERPOLATIONS)}")
        if self.mode == "crop_resize" and self.interpolation != "bilinear":
            raise ConfigError("the reference crop_resize preprocessing resizes bilinearly only")
        sizes_ok = (
            _is_int_in(self.resolution, 1, MAX_SIDE)
            and (self.resize is None or _is_int_in(self.resize, 1, MAX_SIDE))
            and isinstance(self.crop_pct, int | float)
            and 0 < self.crop_pct <= 1
            and self.scale_size <= MAX_SIDE
        )
        if not sizes_ok:
            raise ConfigError(
                f"bad preprocessing sizes: resolution={self.resolution}, resize={self.resize}, "
                f"crop_pct={self.crop_pct} (sides up to {MAX_SIDE})"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise ConfigError(f"preprocessing {name} must be 3 finite numbers, got {values!r}")
        if min(self.std) <= 0:
            raise ConfigError(f"preprocessing std must be positive, got {self.std!r}")

    @property
    def scale_size(self) -> int:
        """The short side before the centre crop (``"resize_crop"`` mode)."""
        return self.resize if self.resize is not None else math.floor(self.resolution / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def for_resolution(cls, resolution: int, **overrides: Any) -> Preprocess:
        """The timm-style centre-crop evaluation at any resolution: resize to ``floor(resolution / crop_pct)``."""
        crop_pct = overrides.pop("crop_pct", 0.875)
        resize = overrides.pop("resize", math.floor(resolution / crop_pct))
        return cls(resolution=resolution, resize=resize, crop_pct=crop_pct, **overrides)

    @classmethod
    def reference(cls, resolution: int = 224) -> Preprocess:
        """Google's reference evaluation at ``resolution`` (crop 224/256 of the short side at 224)."""
        return cls(
            resolution=resolution,
            resize=None,
            crop_pct=resolution / (resolution + REFERENCE_CROP_PADDING),
            interpolation="bilinear",
            mode="crop_resize",
        )

    def describe(self) -> str:
        """One short line for tables: ``resize 256 bilinear, crop 224``."""
        if self.mode == "crop_resize":
            return f"crop {self.crop_pct:.4g} of short side, resize {self.resolution} tf-bilinear"
        return f"resize {self.scale_size} {self.interpolation}, crop {self.resolution}"


def build_eval_transform(preprocess: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """A callable mapping an RGB PIL image to a normalised float32 CHW tensor."""
    if preprocess.mode == "crop_resize":
        return lambda image: _reference_transform(image, preprocess)
    return lambda image: _resize_crop_transform(image, preprocess)


# -- torchvision / timm ---------------------------------------------------------------


def _resize_crop_transform(image: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    image = _as_rgb(image)
    # torchvision's shortest-edge resize: the long side is truncated, not rounded.
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = preprocess.scale_size, int(preprocess.scale_size * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    resample = INTERPOLATIONS[preprocess.interpolation]
    if new_short * new_long > MAX_RESIZED_PIXELS:
        image = _resize_center_only(image, size, preprocess.resolution, resample)
    elif size != image.size:
        image = image.resize(size, resample)
    pixels = _center_crop(np.asarray(image, dtype=np.uint8), preprocess.resolution)
    # Same ops, same order and dtype as torchvision's to_tensor/convert_image_dtype + normalize.
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).to(torch.float32).div(255)
    return _normalize(tensor, preprocess)


def _resize_center_only(image: Image.Image, size: tuple[int, int], crop: int, resample: int) -> Image.Image:
    """The centre ``crop`` of ``image.resize(size)`` along the long axis, without resizing the rest.

    PIL maps output pixel ``i`` of a ``box`` resize to ``box[0] + (i + 0.5) * scale``, the
    same source position and filter width as in the full resize, so this is the same
    arithmetic on fewer pixels.
    """
    width, height = image.size
    new_width, new_height = size
    if new_width > new_height:  # wide: keep the middle columns
        left = int(round((new_width - crop) / 2.0))
        scale = width / new_width
        return image.resize((crop, new_height), resample, box=(left * scale, 0, (left + crop) * scale, height))
    top = int(round((new_height - crop) / 2.0))
    scale = height / new_height
    return image.resize((new_width, crop), resample, box=(0, top * scale, width, (top + crop) * scale))


def _center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if size > height or size > width:
        # torchvision pads a too-small image with zeros before cropping
        pad_top, pad_left = max(size - height, 0) // 2, max(size - width, 0) // 2
        pad_bottom, pad_right = (max(size - height, 0) + 1) // 2, (max(size - width, 0) + 1) // 2
        pixels = np.pad(pixels, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
        height, width = pixels.shape[:2]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return pixels[top : top + size, left : left + size]


def _normalize(tensor: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    mean = torch.as_tensor(preprocess.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(preprocess.std, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


# -- Google's reference ---------------------------------------------------------------


def reference_crop_window(height: int, width: int, crop_pct: float) -> tuple[int, int, int]:
    """``(top, left, size)`` of the reference's centre crop, with its float32 and integer arithmetic."""
    # tf.cast(float32 product, int32) truncates; offsets round half up.
    size = int(np.float32(crop_pct) * np.float32(min(height, width)))
    size = max(size, 1)
    return (height - size + 1) // 2, (width - size + 1) // 2, size


def _reference_transform(image: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    pixels = np.asarray(_as_rgb(image), dtype=np.uint8)
    top, left, size = reference_crop_window(pixels.shape[0], pixels.shape[1], preprocess.crop_pct)
    crop = pixels[top : top + size, left : left + size]
    resized = tf_legacy_resize_bilinear(crop, (preprocess.resolution, preprocess.resolution))
    # The reference subtracts and divides 0-255 constants in float32.
    mean = (np.asarray(preprocess.mean, dtype=np.float64) * 255).astype(np.float32)
    std = (np.asarray(preprocess.std, dtype=np.float64) * 255).astype(np.float32)
    normalized = (resized - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))


def tf_legacy_resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``tf.compat.v1.image.resize_bilinear`` (align_corners=False, half_pixel_centers=False) in numpy.

    Args:
        pixels: ``[H, W, C]`` array of any numeric dtype.
        size: ``(height, width)`` of the output.

    Returns:
        float32 ``[height, width, C]``, computed in float32 as TF's CPU kernel does.
    """
    y_low, y_high, y_lerp = _legacy_interpolation(pixels.shape[0], size[0])
    x_low, x_high, x_lerp = _legacy_interpolation(pixels.shape[1], size[1])
    values = pixels.astype(np.float32)
    x_lerp = x_lerp[None, :, None]
    top_left, top_right = values[y_low][:, x_low], values[y_low][:, x_high]
    bottom_left, bottom_right = values[y_high][:, x_low], values[y_high][:, x_high]
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return top + (bottom - top) * y_lerp[:, None, None]


def _legacy_interpolation(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # TF's legacy scaler: source = out_index * (in / out), both in float32, no half-pixel shift.
    scale = np.float32(in_size) / np.float32(out_size)
    source = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(source)
    low = np.maximum(floor.astype(np.int64), 0)
    high = np.minimum(np.ceil(source).astype(np.int64), in_size - 1)
    return low, high, (source - floor).astype(np.float32)


def _as_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
