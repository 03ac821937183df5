"""Image classification on class folders: the MnasNet paper's task, as a :class:`mnasnet.engine.Task`.

Data: ``DATA/train/<class>/*`` and ``DATA/val/<class>/*`` (or the built-in ``digits``),
the reference's random crop for training and the model's evaluation preprocessing for
validation. Loss: cross entropy with label smoothing. Validation: loss, top-1 and
top-5 (percent); the best top-1 picks ``best.safetensors``, written with the
preprocessing and class names so that ``mnasnet.load_model`` gives a ready classifier.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnasnet.data.datasets import ImageFolderDataset, resolve_dataset, split_folder
from mnasnet.data.preprocess import Preprocess, build_eval_transform
from mnasnet.data.transforms_train import CropParams, TrainTransform
from mnasnet.engine import DistributedContext, RunResult, Task, TrainStep, fit
from mnasnet.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mnasnet.train.config import TrainConfig

__all__ = ["ClassificationTask", "TrainResult", "build_model", "smoothed_cross_entropy", "train"]


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    status: str  # "completed", "stopped" (max_steps) or "interrupted" (Ctrl-C / SIGTERM)
    epoch: int  # completed epochs
    step: int  # optimizer steps taken
    best_top1: float | None
    metrics: list[dict[str, Any]]
    checkpoint: Path | None
    model: nn.Module | None = None  # the evaluated/exported weights (the EMA when on)
    train_model: nn.Module | None = None  # the raw trained weights

    @classmethod
    def from_run(cls, result: RunResult) -> TrainResult:
        """The engine's result, with the classifier's best metric named as such."""
        return cls(
            result.run_dir,
            result.status,
            result.epoch,
            result.step,
            result.best,
            result.metrics,
            result.checkpoint,
            model=result.model,
            train_model=result.train_model,
        )


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Trains (or fine-tunes) a MnasNet classifier as ``config`` says, into the run folder ``config.output``.

    Under ``torchrun`` every rank calls this; only rank 0 writes files. See
    :mod:`mnasnet.engine.loop` for the run folder's layout.

    Raises:
        ConfigError: a setting is out of range, or finetune without weights (a ValueError).
        DataError: the dataset is missing, empty, has an empty or a single class, val/ and
            train/ classes differ, or it is too small for one batch.
        CheckpointError: ``resume`` without a readable checkpoint, or one of another model.
        RunLockedError: another run is writing into the same folder.
        TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    if config.qat:  # the same entry point as the command line: --qat means quantisation-aware training
        from mnasnet.tasks.qat import train_qat

        return train_qat(config, resume=resume, progress=progress)
    config.validate()
    if config.recipe == "finetune" and not config.weights:
        raise ConfigError("the finetune recipe needs pretrained weights: pass --weights NAME|PATH")
    return TrainResult.from_run(
        fit(ClassificationTask(config), config.engine_config(), resume=resume, progress=progress)
    )


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross entropy against ``(1 - smoothing) * one_hot + smoothing / classes``, as TF's label_smoothing."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """A fresh model, or a pretrained one with a new classifier when ``config.weights`` is set."""
    if config.weights:
        from mnasnet.weights import load_weights

        model = load_weights(config.weights)
        if model.config.num_classes != num_classes:
            model.reset_classifier(num_classes)
        model.config = dataclasses.replace(
            model.config,
            resolution=config.resolution,
            dropout=config.dropout if config.dropout is not None else model.config.dropout,
        )
        model.dropout.p = model.config.dropout
        if config.bn_momentum is not None:
            model.config = dataclasses.replace(model.config, bn_momentum=config.bn_momentum)
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = config.bn_momentum
        return model
    from mnasnet.model import create_model

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    arch, arch_settings = config.architecture()  # a name, or a blocks file's block strings and stem
    return create_model(
        arch,
        **arch_settings,
        width_multiplier=config.width,
        num_classes=num_classes,
        resolution=config.resolution,
        drop_path_rate=config.drop_path_rate,
        **({"dropout": config.dropout} if config.dropout is not None else {}),
        **({"bn_momentum": config.bn_momentum} if config.bn_momentum is not None else {}),
    )


def _eval_preprocess(config: TrainConfig, model: nn.Module) -> Preprocess:
    pretrained = getattr(model, "preprocess", None)
    if pretrained is not None:
        # keep the backbone's normalisation and interpolation, at the training resolution
        return Preprocess.for_resolution(
            config.resolution, mean=pretrained.mean, std=pretrained.std, interpolation=pretrained.interpolation
        )
    return Preprocess.for_resolution(config.resolution)


def _check_classes(dataset: ImageFolderDataset) -> None:
    counts = np.bincount(np.asarray(dataset.targets, dtype=np.int64), minlength=len(dataset.classes))
    empty = [name for name, count in zip(dataset.classes, counts, strict=True) if count == 0]
    if empty:
        raise DataError(f"class folder {dataset.root / empty[0]} holds no images ({len(empty)} empty class(es))")


class ClassificationTask(Task):
    """One label per image; see the module docstring."""

    best_metric = "val_top1"
    higher_is_better = True

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.classes: list[str] = []
        self.model: nn.Module | None = None

    # -- data and model -----------------------------------------------------------------

    def setup(self, context: DistributedContext) -> None:
        root = resolve_dataset(self.config.data)
        self.train_set = ImageFolderDataset(split_folder(root, "train"))
        self.classes = list(self.train_set.classes)
        if len(self.classes) < 2:
            raise DataError(f"{self.train_set.root} has one class folder ({self.classes[0]}); a classifier needs two")
        _check_classes(self.train_set)
        self.val_set = ImageFolderDataset(split_folder(root, "val"))
        if self.val_set.classes != self.classes:
            missing = sorted(set(self.classes) - set(self.val_set.classes))
            extra = sorted(set(self.val_set.classes) - set(self.classes))
            parts = [
                f"lacks {', '.join(missing[:5])}" if missing else "",
                f"adds {', '.join(extra[:5])}" if extra else "",
            ]
            raise DataError(
                f"{self.val_set.root} must hold the training classes: it {' and '.join(p for p in parts if p)}"
            )
        _check_classes(self.val_set)

    def build_model(self) -> nn.Module:
        config = self.config
        model = build_model(config, len(self.classes))
        # the transforms need the model's normalisation
        self.preprocess = _eval_preprocess(config, model)
        model.preprocess, model.labels = self.preprocess, list(self.classes)
        if config.zero_init_head:
            # uniform(+-1/sqrt(classes)) gives logits of several units with few classes;
            # a zero head starts every class at equal odds and learns much faster
            nn.init.zeros_(model.classifier.weight)
            nn.init.zeros_(model.classifier.bias)
        crop = CropParams(
            min_object_covered=config.crop_min_object_covered,
            aspect_ratio_range=tuple(config.crop_aspect_ratio),
            area_range=(config.crop_min_area, 1.0),
            max_attempts=config.crop_attempts,
        )
        self.train_set.train_transform = TrainTransform(
            config.resolution, crop=crop, hflip=config.hflip, mean=self.preprocess.mean, std=self.preprocess.std
        )
        self.val_set.transform = build_eval_transform(self.preprocess)
        self.model = model
        return model

    def train_dataset(self) -> ImageFolderDataset:
        return self.train_set

    def val_dataset(self) -> ImageFolderDataset:
        return self.val_set

    # -- loss and metrics ---------------------------------------------------------------

    def loss(self, output: torch.Tensor, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = batch[1]
        loss = smoothed_cross_entropy(output, targets, self.config.label_smoothing)
        return loss, {"correct": (output.detach().argmax(1) == targets).sum()}

    def train_metrics(self, stats: dict[str, float], samples: int) -> dict[str, float]:
        return {"train_top1": 100.0 * stats.get("correct", 0.0) / max(samples, 1)}

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Any, step: TrainStep) -> dict[str, float]:
        """Loss, top-1 and top-5 (percent) over the rank-sharded validation loader, reduced over ranks."""
        model.eval()
        totals = torch.zeros(4, device=step.device, dtype=torch.float64)  # loss, top1, top5, n
        for batch in loader:
            images, targets = step.prepare(batch)
            with step.autocast():
                logits = model(images)
            logits = logits.float()
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices == targets[:, None]
            totals[0] += F.cross_entropy(logits, targets, reduction="sum").double()
            totals[1] += hits[:, 0].sum()
            totals[2] += hits.any(dim=1).sum()
            totals[3] += targets.numel()
        step.context.all_reduce_sum(totals)
        loss, top1, top5, n = totals.tolist()
        n = max(n, 1.0)
        return {"val_loss": loss / n, "val_top1": 100.0 * top1 / n, "val_top5": 100.0 * top5 / n, "val_n": int(n)}

    # -- files ----------------------------------------------------------------------------

    def save_weights(self, model: nn.Module, path: Path, info: dict[str, Any]) -> None:
        from mnasnet.checkpoint import save_checkpoint

        keep = ("epoch", "step", "val_top1", "val_top5")
        extra = {key: info[key] for key in keep if key in info}
        save_checkpoint(model, path, preprocess=self.preprocess, labels=list(self.classes), extra=extra)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def signature(self) -> dict[str, Any]:
        model_config = self.model.config
        return {"arch": model_config.arch, "width": model_config.width_multiplier, "num_classes": len(self.classes)}

    def describe(self) -> dict[str, Any]:
        return {"num_classes": len(self.classes), "train_images": len(self.train_set), "val_images": len(self.val_set)}

    def finish(self, run_dir: Path) -> None:
        if self.config.plot:
            from mnasnet.train.plot import plot_run

            with contextlib.suppress(ImportError):  # matplotlib is an optional extra
                plot_run(run_dir)
