"""Classify image files with any :class:`~mnasnet.runtime.Predictor`.

Each image is prepared with the predictor's own preprocessing (the one its
weights were evaluated with). A file that cannot be read becomes a result with
an ``error`` and does not stop the others.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mnasnet.data.images import find_images, load_image
from mnasnet.data.preprocess import build_eval_transform
from mnasnet.errors import ConfigError, DataError
from mnasnet.limits import check_batch_size
from mnasnet.runtime import Predictor

__all__ = ["ClassScore", "Prediction", "expand_image_paths", "predict_images", "softmax"]


@dataclasses.dataclass(frozen=True)
class ClassScore:
    index: int
    label: str | None
    prob: float


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top classes for one image, or why it could not be classified."""

    image: str
    top: tuple[ClassScore, ...] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"image": PATH, "top": [{"index", "label", "prob"}, ...]}`` or ``{"image": PATH, "error": MESSAGE}``."""
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "top": [dataclasses.asdict(score) for score in self.top or ()]}


def expand_image_paths(paths: Sequence[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """``(path, error)`` pairs: folders become the images inside them, in sorted order."""
    expanded: list[tuple[str, str | None]] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            images = find_images(path)
            if not images:
                expanded.append((str(path), f"no images found in folder {path}"))
            expanded.extend((str(image), None) for image in images)
        elif not path.exists():
            expanded.append((str(path), f"image not found: {path}"))
        else:
            expanded.append((str(path), None))
    return expanded


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for any logit scale)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def predict_images(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike],
    *,
    topk: int = 5,
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[Prediction]:
    """Top-``topk`` classes for every image in ``paths`` (files or folders), in input order.

    Args:
        predictor: any runtime (PyTorch checkpoint, ONNX, TFLite).
        paths: image files and folders (a folder stands for every image in it).
        topk: classes per image (capped at the number of classes).
        batch_size: images per forward pass.
        progress: tqdm bar on stderr; ``None`` shows it only on a terminal.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"topk must be a positive integer, got {topk!r}")
    check_batch_size(batch_size)
    transform = build_eval_transform(predictor.preprocess)
    items = expand_image_paths(paths)
    results: dict[int, Prediction] = {}
    hide_bar = not sys.stderr.isatty() if progress is None else not progress
    with tqdm(total=len(items), unit="image", disable=hide_bar, file=sys.stderr) as bar:
        for batch in _batches(list(enumerate(items)), batch_size):
            tensors, indices = [], []
            for index, (path, error) in batch:
                if error is None:
                    try:
                        tensors.append(transform(load_image(path)).numpy())
                        indices.append(index)
                        continue
                    except DataError as data_error:
                        error = str(data_error)
                results[index] = Prediction(image=path, error=error)
            if tensors:
                probs = softmax(predictor(np.stack(tensors)))
                for index, row in zip(indices, probs, strict=True):
                    results[index] = Prediction(image=items[index][0], top=_top(row, topk, predictor.labels))
            bar.update(len(batch))
    return [results[index] for index in range(len(items))]


def _top(probs: np.ndarray, topk: int, labels: Sequence[str] | None) -> tuple[ClassScore, ...]:
    order = np.argsort(-probs, kind="stable")[: min(topk, probs.shape[-1])]
    return tuple(
        ClassScore(int(i), labels[i] if labels is not None and i < len(labels) else None, float(probs[i]))
        for i in order
    )


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
