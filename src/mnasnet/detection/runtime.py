"""One interface over every runtime that can run a detector: PyTorch, ONNX Runtime, LiteRT.

A :class:`DetectionPredictor` gives the raw head outputs of a batch (:meth:`~DetectionPredictor.raw`);
decoding and non-maximum suppression run on the CPU here, with :mod:`mnasnet.detection.postprocess`,
whatever ran the network (an NPU runs no NMS). ``detect``, ``evaluate`` and ``predict`` only talk to
this interface, so an exported ``.onnx`` or ``.tflite`` works wherever a checkpoint does::

    predictor = load_detection_predictor("runs/det/best.safetensors")   # or model.onnx / model_int8.tflite
    detections = predictor.detect(images, original_sizes)              # per image: boxes, scores, labels
"""

from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mnasnet.detection import DetectionError
from mnasnet.detection.model import Detector, DetectorConfig, anchors_for, feature_map_sizes
from mnasnet.detection.postprocess import retinanet_postprocess, ssd_postprocess
from mnasnet.errors import CheckpointError

__all__ = [
    "DETECTION_RUNTIMES",
    "DetectionPredictor",
    "TorchDetectionPredictor",
    "load_detection_predictor",
]


class DetectionPredictor(abc.ABC):
    """Runs a detector on batches of preprocessed images.

    Attributes:
        config: the detector's settings: head, input size, classes (background first), labels,
            normalisation and post-processing.
        anchors: ``[N, 4]`` ``xyxy`` pixel anchors at ``config.size``, the order of the ``N`` predictions.
        name: a short description of the runtime (``"pytorch"``, ``"onnxruntime"``, ``"litert"`` ...).
    """

    config: DetectorConfig
    anchors: torch.Tensor
    name: str

    @abc.abstractmethod
    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 NCHW images normalised with config.mean/std at config.size ->
        (cls_logits [B, N, C], bbox_regression [B, N, 4]) float32."""

    def detect(
        self,
        images: np.ndarray,
        original_sizes: Sequence[Sequence[int]] | None = None,
        image_sizes: Sequence[Sequence[int]] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Detections per image, decoded and post-processed on the CPU.

        Args:
            images: float32 ``[B, 3, size, size]``, normalised.
            original_sizes: ``(height, width)`` per image before resizing; boxes are scaled back to it.
            image_sizes: ``(height, width)`` per image of its content in the input (a letterboxed image
                fills only part of it); boxes are clipped to it. Default: the whole input.

        Returns:
            Per image ``{"boxes": float32 [K, 4] xyxy, "scores": float32 [K], "labels": int64 [K]}``,
            best score first; labels count from 1 (``config.labels[label]`` names them).
        """
        images = np.ascontiguousarray(images, dtype=np.float32)
        batch = images.shape[0]
        size = (self.config.size, self.config.size)
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, *size):
            raise DetectionError(f"images must be [B, 3, {size[0]}, {size[1]}], got {tuple(images.shape)}")
        image_sizes = [tuple(s) for s in image_sizes] if image_sizes is not None else [size] * batch
        cls_logits, bbox_regression = self.raw(images)
        detections = postprocess(self.config, self.anchors, cls_logits, bbox_regression, image_sizes)
        if original_sizes is not None:
            detections = rescale(detections, image_sizes, original_sizes)
        return detections

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.config.head} at {self.config.size})"


def postprocess(
    config: DetectorConfig,
    anchors: torch.Tensor,
    cls_logits: np.ndarray,
    bbox_regression: np.ndarray,
    image_sizes: Sequence[Sequence[int]],
) -> list[dict[str, np.ndarray]]:
    """Raw head outputs -> per-image numpy detections in input pixels, with ``config``'s settings."""
    logits = torch.as_tensor(np.asarray(cls_logits, dtype=np.float32))
    offsets = torch.as_tensor(np.asarray(bbox_regression, dtype=np.float32))
    settings = {
        "score_threshold": config.score_threshold,
        "nms_threshold": config.nms_threshold,
        "detections_per_image": config.detections_per_image,
    }
    if config.head == "ssdlite":
        found = ssd_postprocess(
            logits, offsets, anchors, image_sizes, topk_per_class=config.topk_candidates, **settings
        )
    else:
        per_level = config.anchor_generator.num_anchors_per_level(feature_map_sizes(config))
        found = retinanet_postprocess(
            logits, offsets, anchors, image_sizes, per_level, topk_per_level=config.topk_candidates, **settings
        )
    return [
        {
            "boxes": d["boxes"].numpy().astype(np.float32),
            "scores": d["scores"].numpy().astype(np.float32),
            "labels": d["labels"].numpy().astype(np.int64),
        }
        for d in found
    ]


def rescale(
    detections: list[dict[str, np.ndarray]],
    image_sizes: Sequence[Sequence[int]],
    original_sizes: Sequence[Sequence[int]],
) -> list[dict[str, np.ndarray]]:
    """Boxes scaled from each image's content in the input (``image_sizes``) to its ``original_sizes``."""
    if len(original_sizes) != len(detections):
        raise DetectionError(f"{len(original_sizes)} original sizes for {len(detections)} images")
    scaled = []
    for found, (height, width), (original_height, original_width) in zip(
        detections, image_sizes, original_sizes, strict=True
    ):
        factor = np.array(
            [original_width / width, original_height / height, original_width / width, original_height / height],
            dtype=np.float32,
        )
        scaled.append({**found, "boxes": (found["boxes"] * factor).astype(np.float32)})
    return scaled


class TorchDetectionPredictor(DetectionPredictor):
    """A PyTorch :class:`~mnasnet.detection.model.Detector`, fused for inference (the caller's model is unchanged)."""

    def __init__(self, model: Detector) -> None:
        if not isinstance(model, Detector):
            raise CheckpointError(f"TorchDetectionPredictor needs a Detector, got {type(model).__name__}")
        self.config = model.config
        self.model = model.fuse() if not getattr(model, "is_fused", False) else model
        self.anchors = anchors_for(self.config)
        self.name = "pytorch"

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            cls_logits, bbox_regression = self.model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        return cls_logits.float().numpy(), bbox_regression.float().numpy()


# Exported-file suffix -> "module:function" that opens it; resolved on use, so importing this
# module loads no runtime library.
DETECTION_RUNTIMES: dict[str, str] = {
    ".onnx": "mnasnet.detection.export:load_onnx_predictor",
    ".tflite": "mnasnet.detection.export:load_tflite_predictor",
}


def _runtime_loader(suffix: str) -> Callable[[Path], DetectionPredictor]:
    module_name, function_name = DETECTION_RUNTIMES[suffix].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def load_detection_predictor(weights: str | os.PathLike | Detector) -> DetectionPredictor:
    """Opens a detector checkpoint (``save_detector``'s safetensors) or an exported ``.onnx``/``.tflite``.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a detector.
    """
    if isinstance(weights, Detector):
        return TorchDetectionPredictor(weights)
    from mnasnet.detection.model import load_detector

    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"detector weights not found: {path}")
    suffix = path.suffix.lower()
    if suffix in DETECTION_RUNTIMES:
        return _runtime_loader(suffix)(path)
    return TorchDetectionPredictor(load_detector(path))
