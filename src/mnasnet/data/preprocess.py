"""How a model's inputs are prepared: the settings a checkpoint carries with it."""

from __future__ import annotations

import dataclasses
from typing import Any

# The reference normalises 0-255 pixels with these; divided by 255 they are the
# usual ImageNet constants, so one pair serves Google, torchvision and timm.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing.

    ``mode`` is ``"resize_crop"`` (torchvision/timm: resize the short side to
    ``resize``, then centre-crop ``resolution``) or ``"crop_resize"`` (Google's
    reference: centre-crop ``crop_pct`` of the short side, then resize).
    """

    resolution: int = 224
    resize: int | None = 256
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mode: str = "resize_crop"

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
        """The 0.875 centre-crop evaluation preprocessing at any resolution."""
        return cls(resolution=resolution, resize=round(resolution / 0.875), **overrides)


def build_eval_transform(preprocess: Preprocess):
    """A callable mapping an RGB PIL image to a normalised float32 CHW tensor.

    First version (resize-crop only, PIL bilinear/bicubic); the weights issue
    makes it match torchvision, timm and the TF reference exactly.
    """
    import numpy as np
    import torch
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
        preprocess.interpolation
    ]
    mean = np.asarray(preprocess.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocess.std, dtype=np.float32).reshape(3, 1, 1)

    def transform(image: Image.Image) -> torch.Tensor:
        width, height = image.size
        short = preprocess.resize or round(preprocess.resolution / preprocess.crop_pct)
        scale = short / min(width, height)
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample)
        width, height = image.size
        left = int(round((width - preprocess.resolution) / 2.0))
        top = int(round((height - preprocess.resolution) / 2.0))
        image = image.crop((left, top, left + preprocess.resolution, top + preprocess.resolution))
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - mean) / std)

    return transform
