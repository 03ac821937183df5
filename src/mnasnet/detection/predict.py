"""Detect objects in image files with any :class:`~mnasnet.detection.runtime.DetectionPredictor`.

Each image is resized the way the detector was evaluated (plain resize for SSDLite, letterbox
for RetinaNet) and its boxes come back in the original image's pixels. A file that cannot be
read becomes a result with an ``error`` and does not stop the others. :func:`draw_detections`
writes the images with their boxes and labels drawn.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mnasnet.data.images import load_image
from mnasnet.detection.data.transforms import Sample, eval_transform
from mnasnet.detection.model import DetectorConfig
from mnasnet.detection.runtime import DetectionPredictor
from mnasnet.errors import ConfigError, DataError
from mnasnet.fileio import atomic_path
from mnasnet.limits import check_batch_size
from mnasnet.predict import expand_image_paths

__all__ = [
    "Detection",
    "check_draw_folder",
    "ImageDetections",
    "PreparedImage",
    "detect_images",
    "draw_detections",
    "prepare_image",
    "write_drawings",
]


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    image: np.ndarray  # float32 [3, size, size], normalised
    original_size: tuple[int, int]  # (height, width) of the file
    image_size: tuple[int, int]  # (height, width) of its content in the input


def prepare_image(image: Image.Image, config: DetectorConfig) -> PreparedImage:
    """An RGB image resized as the detector expects (SSDLite: to the square; RetinaNet: letterboxed)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    sample = Sample(
        image=pixels.to(torch.float32).div_(255.0),
        boxes=torch.zeros(0, 4),
        labels=torch.zeros(0, dtype=torch.int64),
    )
    transform = eval_transform(config.size, letterbox=config.head == "retinanet", fill=config.mean)
    sample = transform(sample, None)
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    height, width = image.height, image.width
    content = (
        min(config.size, round(height * sample.scale[1] + sample.offset[1])),
        min(config.size, round(width * sample.scale[0] + sample.offset[0])),
    )
    return PreparedImage(((sample.image - mean) / std).numpy(), (height, width), content)


@dataclasses.dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original image's pixels
    score: float
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "score": self.score, "label": self.label}


@dataclasses.dataclass(frozen=True)
class ImageDetections:
    """What was found in one image, or why it could not be read."""

    image: str
    detections: tuple[Detection, ...] = ()
    error: str | None = None
    size: tuple[int, int] | None = None  # (height, width)

    def to_dict(self) -> dict[str, Any]:
        """``{"image": PATH, "detections": [{"box", "score", "label"}, ...]}``, plus ``"error"`` when unreadable."""
        entry: dict[str, Any] = {"image": self.image, "detections": [d.to_dict() for d in self.detections]}
        if self.error is not None:
            entry["error"] = self.error
        return entry


def _label_name(config: DetectorConfig, label: int) -> str:
    if config.labels is not None and 0 <= label < len(config.labels):
        return config.labels[label]
    return f"class {label}"


def detect_images(
    predictor: DetectionPredictor,
    paths: Sequence[str | os.PathLike],
    *,
    score_threshold: float = 0.3,
    batch_size: int = 8,
    progress: bool | None = None,
) -> list[ImageDetections]:
    """Detections above ``score_threshold`` in every image of ``paths`` (files or folders), in input order."""
    from tqdm import tqdm

    if isinstance(score_threshold, bool) or not isinstance(score_threshold, int | float):
        raise ConfigError(f"score_threshold must be a number in [0, 1), got {score_threshold!r}")
    if not 0 <= score_threshold < 1:
        raise ConfigError(f"score_threshold must be in [0, 1), got {score_threshold!r}")
    check_batch_size(batch_size)
    config = predictor.config
    items = expand_image_paths(paths)
    results: dict[int, ImageDetections] = {}
    hide = not sys.stderr.isatty() if progress is None else not progress
    with tqdm(total=len(items), unit="image", disable=hide, file=sys.stderr) as bar:
        for start in range(0, len(items), batch_size):
            prepared, indices = [], []
            for index in range(start, min(start + batch_size, len(items))):
                path, error = items[index]
                if error is None:
                    try:
                        prepared.append(prepare_image(load_image(path), config))
                        indices.append(index)
                        continue
                    except DataError as data_error:
                        error = str(data_error)
                results[index] = ImageDetections(image=path, error=error)
            if prepared:
                found = predictor.detect(
                    np.stack([p.image for p in prepared]),
                    [p.original_size for p in prepared],
                    [p.image_size for p in prepared],
                )
                for index, image, detections in zip(indices, prepared, found, strict=True):
                    keep = detections["scores"] >= score_threshold
                    results[index] = ImageDetections(
                        image=items[index][0],
                        detections=tuple(
                            Detection(
                                tuple(round(float(v), 2) for v in box),
                                round(float(score), 4),
                                _label_name(config, int(label)),
                            )
                            for box, score, label in zip(
                                detections["boxes"][keep],
                                detections["scores"][keep],
                                detections["labels"][keep],
                                strict=True,
                            )
                        ),
                        size=image.original_size,
                    )
            bar.update(min(batch_size, len(items) - start))
    return [results[index] for index in range(len(items))]


_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def draw_detections(image: Image.Image, detections: Sequence[Detection]) -> Image.Image:
    """A copy of ``image`` with each box outlined and labelled ``name score``."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = max(1, round(min(canvas.size) / 200))
    names: dict[str, int] = {}
    for detection in detections:
        colour = _COLOURS[names.setdefault(detection.label, len(names)) % len(_COLOURS)]
        x1, y1, x2, y2 = detection.box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        text = f"{detection.label} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        lift = bottom - top + 2
        y = y1 - lift if y1 - lift >= 0 else y1
        draw.rectangle((x1, y, x1 + right - left + 2, y + lift), fill=colour)
        draw.text((x1 + 1, y), text, fill=(0, 0, 0), font=font)
    return canvas


def check_draw_folder(output_dir: str | os.PathLike) -> Path:
    """``output_dir`` as a Path if drawings can be written there (it, or its nearest existing parent, is a
    writable folder), else a ConfigError: called before detecting, so a bad path costs no inference."""
    folder = Path(output_dir)
    existing = next(path for path in (folder, *folder.parents) if path.exists() or path == Path(path.anchor))
    if not existing.is_dir():
        where = "" if existing == folder else f": {existing}"
        raise ConfigError(f"--draw {folder}{where} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--draw {folder}: {existing} is not writable")
    return folder


def write_drawings(results: Sequence[ImageDetections], output_dir: str | os.PathLike) -> list[Path]:
    """Writes each readable image with its detections drawn into ``output_dir`` (atomically), as PNG.

    Files are named after the images (``photo.jpg`` -> ``photo.png``); repeated names get ``_2``, ``_3`` ...
    """
    folder = check_draw_folder(output_dir)
    written: list[Path] = []
    used: set[str] = set()
    for result in results:
        if result.error is not None:
            continue
        stem = Path(result.image).stem
        name, count = f"{stem}.png", 1
        while name in used:
            count += 1
            name = f"{stem}_{count}.png"
        used.add(name)
        drawn = draw_detections(load_image(result.image), result.detections)
        target = folder / name
        with atomic_path(target) as temp:
            drawn.save(temp, format="PNG")
        written.append(target)
    return written
