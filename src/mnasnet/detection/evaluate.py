"""COCO metrics for detections, with pycocotools as the yardstick.

:func:`coco_metrics` scores detections (already in original-image pixels, training labels
1..K) against a COCO-format ground truth with ``pycocotools.cocoeval.COCOeval``;
:func:`evaluate_detector` runs any :class:`~mnasnet.detection.runtime.DetectionPredictor`
(a checkpoint, an exported ``.onnx`` or ``.tflite``) over a split first::

    metrics = evaluate_detector("runs/det/best.safetensors", "faces-coins")
    # {"AP": 0.41, "AP50": 0.72, "AP75": 0.43, "APs": ..., "APm": ..., "APl": ..., "n": 200}
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnasnet.detection.data.records import DetectionData, is_number
from mnasnet.errors import DataError
from mnasnet.extras import require

__all__ = ["METRIC_NAMES", "coco_ground_truth", "coco_metrics", "coco_results", "evaluate_detector"]

# COCOeval.stats[0:6], in this order
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _valid_box(bbox: Any) -> bool:
    return (
        isinstance(bbox, list | tuple)
        and len(bbox) == 4
        and all(is_number(v) and math.isfinite(v) for v in bbox)
        and bbox[2] > 0
        and bbox[3] > 0
    )


def coco_ground_truth(data: DetectionData, document: dict | None = None) -> dict:
    """The COCO ground-truth dict of the images in ``data``.

    With ``document`` (the annotation file as read) its annotations are kept as written,
    crowd regions included (COCOeval ignores detections on them); without it, the boxes
    of ``data``'s records are used. Annotations with unusable boxes are left out, as
    :func:`~mnasnet.detection.data.load_coco` leaves them out of training.
    """
    image_ids = {record.image_id for record in data.records}
    images = [
        {"id": record.image_id, "width": record.width, "height": record.height, "file_name": str(record.path)}
        for record in data.records
    ]
    annotations = []
    if document is not None:
        for entry in document.get("annotations", []):
            if not isinstance(entry, dict) or entry.get("image_id") not in image_ids:
                continue
            if entry.get("category_id") not in data.categories or not _valid_box(entry.get("bbox")):
                continue
            x, y, w, h = (float(v) for v in entry["bbox"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": entry["image_id"],
                    "category_id": entry["category_id"],
                    "bbox": [x, y, w, h],
                    "area": float(entry["area"]) if _positive(entry.get("area")) else w * h,
                    "iscrowd": 1 if entry.get("iscrowd") else 0,
                }
            )
    else:
        for record in data.records:
            for (x1, y1, x2, y2), category in zip(record.boxes.tolist(), record.category_ids.tolist(), strict=True):
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": int(category),
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
    categories = [{"id": category, "name": name} for category, name in data.categories.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _positive(value: Any) -> bool:
    return is_number(value) and math.isfinite(value) and value > 0


def coco_results(
    image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, data: DetectionData
) -> list[dict]:
    """One image's detections (``xyxy`` original pixels, training labels 1..K) as COCO result entries."""
    results = []
    for (x1, y1, x2, y2), score, label in zip(np.asarray(boxes).tolist(), scores, labels, strict=True):
        label = int(label)
        if not 1 <= label <= len(data.categories):
            continue
        results.append(
            {
                "image_id": int(image_id),
                "category_id": data.category_of(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
            }
        )
    return results


def coco_metrics(ground_truth: dict, results: Sequence[dict]) -> dict[str, Any]:
    """``{"AP", "AP50", "AP75", "APs", "APm", "APl", "n"}`` of ``results`` by ``pycocotools.COCOeval``.

    AP values are in ``[0, 1]``; ``None`` where the ground truth has no object of that size
    (COCOeval's -1). ``n`` is the number of images evaluated.
    """
    coco_module = require("pycocotools.coco", extra="detection")
    cocoeval_module = require("pycocotools.cocoeval", extra="detection")
    n = len(ground_truth["images"])
    if not results:
        has = [_has_objects(ground_truth, name) for name in METRIC_NAMES]
        return {**{name: (0.0 if present else None) for name, present in zip(METRIC_NAMES, has, strict=True)}, "n": n}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        truth = coco_module.COCO()
        truth.dataset = {key: list(value) for key, value in ground_truth.items()}
        truth.createIndex()
        detections = truth.loadRes([dict(entry) for entry in results])
        evaluator = cocoeval_module.COCOeval(truth, detections, "bbox")
        evaluator.params.imgIds = sorted(image["id"] for image in ground_truth["images"])
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(value) for value in evaluator.stats[: len(METRIC_NAMES)]]
    return {**{name: (value if value >= 0 else None) for name, value in zip(METRIC_NAMES, stats, strict=True)}, "n": n}


_AREA_RANGES = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, float("inf"))}


def _has_objects(ground_truth: dict, name: str) -> bool:
    low, high = _AREA_RANGES.get(name, (0, float("inf")))
    return any(not a.get("iscrowd") and low <= a["area"] < high for a in ground_truth["annotations"])


def _read_document(path: Path) -> dict | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def evaluate_detector(
    weights: Any,
    data: str | os.PathLike,
    *,
    split: str = "val",
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """COCO metrics of a detector on a split of a COCO-format dataset (a built-in name or a folder).

    Args:
        weights: a detector checkpoint, an exported ``.onnx`` / ``.tflite``, or a
            :class:`~mnasnet.detection.runtime.DetectionPredictor`.
        data: ``faces-coins`` or a folder holding ``train.json`` and ``val.json``.
        split: ``"val"`` or ``"train"``.
        limit: evaluate only the first ``limit`` images.

    Returns:
        :func:`coco_metrics`' dict, plus ``"runtime"`` (the predictor's name).

    Raises:
        DataError: the dataset is missing, or its categories differ from the detector's classes.
        CheckpointError: the weights cannot be read.
    """
    from mnasnet.detection.data import load_coco
    from mnasnet.detection.runtime import DetectionPredictor, load_detection_predictor
    from mnasnet.detection.synthetic import resolve_detection_dataset

    predictor = weights if isinstance(weights, DetectionPredictor) else load_detection_predictor(weights)
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    path = resolve_detection_dataset(data) / f"{split}.json"
    dataset = load_coco(path, check_image_sizes=False)
    check_classes(predictor.config, dataset)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DataError(f"limit must be a positive integer, got {limit!r}")
        dataset = DetectionData(dataset.records[:limit], dataset.categories, dataset.source, dataset.report)
    results = list(_predict_records(predictor, dataset, batch_size, progress))
    metrics = coco_metrics(coco_ground_truth(dataset, _read_document(path)), results)
    return {**metrics, "runtime": predictor.name}


def check_classes(config: Any, data: DetectionData) -> None:
    """Raises DataError unless the detector's classes are the dataset's categories."""
    if config.num_classes != data.num_classes:
        raise DataError(
            f"the detector has {config.num_classes - 1} classes, {data.source} has {data.num_classes - 1} categories"
        )
    if config.labels is not None and list(config.labels[1:]) != data.class_names:
        raise DataError(
            f"the detector's classes {list(config.labels[1:])} differ from {data.source}'s {data.class_names}"
        )


def _load_checked(record):
    """The record's image; a DataError if its size is not the one the annotations give (their boxes
    would be scored against another image's pixels), as :class:`DetectionDataset` refuses in training."""
    from mnasnet.data.images import load_image

    image = load_image(record.path)
    if image.size != (record.width, record.height):
        raise DataError(
            f"{record.path} is {image.size[0]}x{image.size[1]}, its annotations say {record.width}x{record.height}"
        )
    return image


def _predict_records(predictor, data: DetectionData, batch_size: int, progress: bool | None) -> Iterable[dict]:
    from tqdm import tqdm

    from mnasnet.detection.predict import prepare_image

    records = data.records
    hide = not sys.stderr.isatty() if progress is None else not progress
    with tqdm(total=len(records), unit="image", disable=hide, file=sys.stderr) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            prepared = [prepare_image(_load_checked(record), predictor.config) for record in batch]
            images = np.stack([p.image for p in prepared])
            detections = predictor.detect(images, [p.original_size for p in prepared], [p.image_size for p in prepared])
            for record, found in zip(batch, detections, strict=True):
                yield from coco_results(record.image_id, found["boxes"], found["scores"], found["labels"], data)
            bar.update(len(batch))
