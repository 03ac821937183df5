"""Quantisation-aware fine-tuning of a trained detector, as a :class:`mnasnet.engine.Task`.

The data, augmentation and metrics are the detection task's; the model is the float detector's int8
export graph prepared for PT2E QAT (:mod:`mnasnet.detection.qat`: BN folded as the exporter folds it,
the exporter's int8 scheme per channel or per tensor, its observers on the head concatenations and
the class softmax). The loss is the head's own (SSD's or RetinaNet's) on the fake-quantised class
logits and box offsets, against the detector's anchors. The engine brings the schedule, EMA (scales
are recomputed from the averaged ranges before each evaluation and save), exact resume and DDP.

``best.safetensors`` and ``last.safetensors`` are ordinary detector checkpoints
(:func:`~mnasnet.detection.model.load_detector`) with the activation ranges in ``extra["qat"]``;
``mnasnet detect export --int8`` turns them into the standard int8 TFLite with those ranges::

    result = train_detector_qat(detection_qat_config("faces-coins", weights="runs/det/best.safetensors"))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnasnet.engine import DistributedContext, TrainStep, fit
from mnasnet.errors import CheckpointError, ConfigError, DataError
from mnasnet.tasks.detection import (
    BUILTIN_SETTINGS,
    DetectionTask,
    DetectionTrainConfig,
    DetectionTrainResult,
)

__all__ = [
    "INITIAL_RANGE_IMAGES",
    "QAT_SETTINGS",
    "DetectionQatConfig",
    "DetectionQatTask",
    "detection_qat_config",
    "train_detector_qat",
]

INITIAL_RANGE_IMAGES = 32  # training images (evaluation transform) that set the activation ranges before step 1

# A short, gentle fine-tune of a trained detector: no warm-up (the weights are trained), a tenth of
# faces-coins' from-scratch learning rate, a cosine decay to zero.
QAT_SETTINGS: dict[str, Any] = {"epochs": 3, "lr": 0.005, "warmup_epochs": 0.0, "schedule": "cosine"}

# Settings the detector checkpoint fixes: QAT trains its graph as it is.
_ARCHITECTURE = ("arch", "width", "size", "anchor_scales", "stride8_map")


@dataclasses.dataclass
class DetectionQatConfig(DetectionTrainConfig):
    """:class:`DetectionTrainConfig` whose ``weights`` is a float detector checkpoint to fine-tune (QAT)."""

    qat: bool = True
    per_tensor: bool = False  # per-tensor weight scales (export with --per-tensor); default per channel

    def validate(self) -> DetectionQatConfig:
        super().validate()
        if not self.qat:
            raise ConfigError("DetectionQatConfig is for quantisation-aware training (qat: true)")
        if not self.weights:
            raise ConfigError("--qat fine-tunes a trained detector: pass --weights DETECTOR_CHECKPOINT")
        fixed = [name for name in _ARCHITECTURE if getattr(self, name) not in (None, False)]
        if fixed:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in fixed)
            raise ConfigError(f"with --qat the detector checkpoint fixes the architecture: drop {flags}")
        if self.amp != "none":
            raise ConfigError("--qat trains in float32 with fake quantisation: drop --amp")
        return self


def detection_qat_config(data: str = "faces-coins", **overrides: Any) -> DetectionQatConfig:
    """A :class:`DetectionQatConfig`: the built-in dataset's batch and EMA, :data:`QAT_SETTINGS`, ``overrides``."""
    settings = {
        key: value
        for key, value in BUILTIN_SETTINGS.get(str(data), {}).items()
        # the from-scratch schedule is not QAT's; the exported fake-quant graph keeps the default memory format
        if key not in (*_ARCHITECTURE, "bn_momentum", "lr", "epochs", "warmup_epochs", "channels_last")
    }
    settings.update(QAT_SETTINGS)
    settings.update(overrides)
    return DetectionQatConfig.from_dict({"data": str(data), **settings}).validate()


def train_detector_qat(
    config: DetectionQatConfig, *, resume: bool = False, progress: bool = True
) -> DetectionTrainResult:
    """Fine-tunes ``config.weights`` (a float detector of ``config.data``'s classes) with fake quantisation.

    Raises:
        ConfigError: a setting is out of range, no ``weights``, or an architecture setting given.
        CheckpointError: the weights are missing, a classification checkpoint, or not a detector.
        DataError: as :func:`~mnasnet.tasks.detection.train_detector`, and when the classes differ.
    """
    config.validate()
    return DetectionTrainResult.from_run(
        fit(DetectionQatTask(config), config.engine_config(), resume=resume, progress=progress)
    )


class DetectionQatTask(DetectionTask):
    """The detection task on a detector's QAT graph; see the module docstring."""

    def __init__(self, config: DetectionQatConfig) -> None:
        super().__init__(config)
        self.per_channel = not config.per_tensor

    def setup(self, context: DistributedContext) -> None:
        from mnasnet.detection.model import load_detector

        super().setup(context)
        try:
            detector = load_detector(self.config.weights)
        except CheckpointError as error:
            raise CheckpointError(f"--qat fine-tunes a trained detector: {error}") from None
        expected = ["background", *self.train_data.class_names]
        labels = list(detector.config.labels or ())
        if detector.config.num_classes != len(expected) or (labels and labels != expected):
            raise DataError(
                f"QAT fine-tunes a detector trained on this dataset: {self.config.weights} detects "
                f"{', '.join(labels[1:]) or f'{detector.config.num_classes - 1} classes'}, {self.config.data} has "
                f"{', '.join(expected[1:])}; train a float detector on it first (mnasnet detect train)"
            )
        self.float_detector = detector

    def build_model(self) -> nn.Module:
        from mnasnet.detection.model import anchors_for
        from mnasnet.detection.qat import prepare_detector_qat

        detector = self.float_detector.config
        self._build_datasets(detector)
        self.model = self.float_detector  # the settings signature() and describe() report
        self.anchors = anchors_for(detector)
        prepared, _ = prepare_detector_qat(self.float_detector, per_channel=self.per_channel)
        self._initialise_ranges(prepared)
        return prepared

    @torch.no_grad()
    def _initialise_ranges(self, prepared: nn.Module) -> None:
        """Starts every range from training images (evaluation transform, the same on every rank); QAT moves them."""
        from mnasnet.deploy.qat import sync_qparams
        from mnasnet.detection.export import detection_calibration_images

        images = detection_calibration_images(self.float_detector.config, self.config.data, limit=INITIAL_RANGE_IMAGES)
        sync_qparams(prepared)  # weight ranges (and per-channel shapes) first
        prepared(torch.from_numpy(images))
        sync_qparams(prepared)

    # -- loss and metrics ---------------------------------------------------------------

    def forward(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        from mnasnet.detection.losses import retinanet_loss, ssd_loss
        from mnasnet.detection.qat import LogitsTap

        images, targets = batch
        graph = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        with LogitsTap(graph) as tap:
            _, bbox_regression = model(images)  # through DDP's forward, so its gradient hooks fire
        cls_logits = tap.logits
        anchors = self.anchors.to(cls_logits.device)
        targets = [{"boxes": t["boxes"].to(anchors), "labels": t["labels"].to(torch.int64)} for t in targets]
        if self.float_detector.config.head == "ssdlite":
            return ssd_loss(cls_logits, bbox_regression, anchors, targets)
        return retinanet_loss(cls_logits, bbox_regression, anchors, targets)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Any, step: TrainStep) -> dict[str, float]:
        """COCO AP of the fake-quantised graph, decoded from its class probabilities as the int8 file's are."""
        from mnasnet.deploy.qat import observers_frozen, sync_qparams

        sync_qparams(model)
        with observers_frozen(model):
            return super().validate(_GraphDetector(model, self.float_detector.config, self.anchors), loader, step)

    # -- files ----------------------------------------------------------------------------

    def save_weights(self, model: nn.Module, path: Path, info: dict[str, Any]) -> None:
        from mnasnet.deploy.qat import sync_qparams
        from mnasnet.detection.model import save_detector
        from mnasnet.detection.qat import float_detector_from_qat

        sync_qparams(model)
        detector = float_detector_from_qat(model, self.float_detector, per_channel=self.per_channel)
        keep = ("epoch", "step", "val_AP", "val_AP50", "val_AP75")
        extra = {key: info[key] for key in keep if key in info}
        extra["data"] = str(self.config.data)
        extra["qat"] = detector.qat_state
        save_detector(detector, path, extra=extra)

    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "qat": "per-channel" if self.per_channel else "per-tensor"}


class _GraphDetector(nn.Module):
    """A prepared QAT graph with :meth:`Detector.predict`'s interface (what the detection task validates)."""

    def __init__(self, graph: nn.Module, config, anchors: torch.Tensor) -> None:
        super().__init__()
        self.graph, self.config, self.anchors = graph, config, anchors

    @torch.no_grad()
    def predict(self, images: torch.Tensor, image_sizes=None) -> list[dict[str, torch.Tensor]]:
        from mnasnet.detection.export import _scores_to_logits
        from mnasnet.detection.runtime import postprocess

        scores, bbox_regression = self.graph(images)
        logits = _scores_to_logits(scores.float().cpu().numpy(), self.config.head)
        sizes = image_sizes or [tuple(images.shape[-2:])] * len(images)
        found = postprocess(self.config, self.anchors, logits, bbox_regression.float().cpu().numpy(), sizes)
        return [{key: torch.from_numpy(value) for key, value in detection.items()} for detection in found]
