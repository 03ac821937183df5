"""Quantisation-aware fine-tuning of a float classifier, as a :class:`mnasnet.engine.Task`.

The data, augmentation, loss and metrics are the classification task's; the model is the float
checkpoint's export graph prepared for PT2E QAT (:mod:`mnasnet.deploy.qat`: BN folded as the exporter
folds it, the exporter's int8 scheme per channel or per tensor). The engine brings the rest unchanged:
the finetune recipe's schedule and EMA (the EMA averages weights and activation ranges; scales are
recomputed from them before each evaluation and save), exact resume, DDP, signals and the run lock.

``best.safetensors`` and ``last.safetensors`` are ordinary checkpoints of the trained float weights
with the activation ranges in their ``extra["qat"]``; ``mnasnet export --int8`` turns them into the
standard int8 TFLite and ONNX files with those ranges, calibrating nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mnasnet.engine import DistributedContext, TrainStep, fit
from mnasnet.errors import ConfigError, DataError
from mnasnet.tasks.classification import ClassificationTask, TrainResult

if TYPE_CHECKING:
    from mnasnet.train.config import TrainConfig

__all__ = ["INITIAL_RANGE_IMAGES", "QatTask", "train_qat"]

INITIAL_RANGE_IMAGES = 64  # one batch that sets the activation ranges before the first step


def train_qat(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Fine-tunes ``config.weights`` (a float classifier of ``config.data``'s classes) with fake quantisation.

    Raises:
        ConfigError: a setting is out of range, or no ``--weights``.
        CheckpointError: the weights are missing, an exported file, or not one of our models.
        DataError: as :func:`mnasnet.train.train`, and when the weights' classes are not the dataset's.
    """
    config.validate()
    if not config.qat:
        raise ConfigError("train_qat needs a configuration with qat: true")
    return TrainResult.from_run(fit(QatTask(config), config.engine_config(), resume=resume, progress=progress))


class QatTask(ClassificationTask):
    """The classification task on a QAT graph; see the module docstring."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.per_channel = not config.per_tensor

    def setup(self, context: DistributedContext) -> None:
        super().setup(context)
        from mnasnet.weights import load_weights

        source = load_weights(self.config.weights)
        labels = getattr(source, "labels", None)
        if source.config.num_classes != len(self.classes) or (labels and list(labels) != self.classes):
            raise DataError(
                f"QAT fine-tunes a float model trained on this dataset: {self.config.weights} has "
                f"{source.config.num_classes} classes, {self.config.data} has {len(self.classes)} "
                f"({', '.join(self.classes[:5])}{'...' if len(self.classes) > 5 else ''}); "
                "fine-tune it in float first (mnasnet train --recipe finetune)"
            )

    def build_model(self) -> nn.Module:
        from mnasnet.deploy.graph import ExportableMnasNet
        from mnasnet.deploy.qat import prepare_qat

        self.float_model = super().build_model().eval()
        resolution = self.config.resolution
        sample = torch.zeros(2, 3, resolution, resolution)  # two images, so that the batch stays symbolic
        prepared, _ = prepare_qat(ExportableMnasNet(self.float_model), sample, per_channel=self.per_channel)
        self._initialise_ranges(prepared)
        return prepared

    @torch.no_grad()
    def _initialise_ranges(self, prepared: nn.Module) -> None:
        """Starts every range from one batch of training images (evaluation preprocessing, the same on every rank).

        QAT then moves them as moving averages; starting from real ranges (not from nothing) also keeps
        the EMA copy, taken right after this, finite.
        """
        from mnasnet.deploy.qat import sync_qparams
        from mnasnet.deploy.quantize import load_calibration_images

        images = load_calibration_images(self.config.data, self.preprocess, limit=INITIAL_RANGE_IMAGES)
        sync_qparams(prepared)  # weight ranges (and per-channel shapes) first
        prepared(torch.from_numpy(images))
        sync_qparams(prepared)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Any, step: TrainStep) -> dict[str, float]:
        from mnasnet.deploy.qat import observers_frozen, sync_qparams

        sync_qparams(model)
        with observers_frozen(model):
            return super().validate(model, loader, step)

    def save_weights(self, model: nn.Module, path: Path, info: dict[str, Any]) -> None:
        from mnasnet.checkpoint import save_checkpoint
        from mnasnet.deploy.qat import float_model_from_qat, sync_qparams

        sync_qparams(model)
        float_model = float_model_from_qat(model, self.float_model, per_channel=self.per_channel)
        keep = ("epoch", "step", "val_top1", "val_top5")
        extra = {key: info[key] for key in keep if key in info}
        extra["qat"] = float_model.qat_state
        save_checkpoint(float_model, path, preprocess=self.preprocess, labels=list(self.classes), extra=extra)

    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "qat": "per-channel" if self.per_channel else "per-tensor"}
