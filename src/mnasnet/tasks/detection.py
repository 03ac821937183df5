"""Object detection on COCO-format data: SSDLite or RetinaNet-FPN on a MnasNet, as a :class:`mnasnet.engine.Task`.

Data: a folder holding ``train.json`` and ``val.json`` (COCO, image paths relative to the
folder) or the built-in ``faces-coins``. Training: SSD's augmentation (IoU crop, flip,
optionally photometric distortion and zoom-out) or RetinaNet's (flip, letterbox), seeded per
``(index, seed)`` so that a resumed run sees the same samples. Loss: the head's own (SSD's hard
negative mining, RetinaNet's focal loss); its two terms are the epoch's statistics.
Validation: COCO AP by pycocotools (``val_AP`` picks ``best.safetensors``), written with
:func:`~mnasnet.detection.model.save_detector` so that ``load_detector`` gives a ready detector::

    result = train_detector(detection_config("faces-coins", output="runs/det"))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnasnet.engine import DistributedContext, EngineConfig, RunResult, Task, TrainStep, fit
from mnasnet.engine.config import at_least, check_settings, non_negative, one_of, positive
from mnasnet.errors import ConfigError

__all__ = [
    "BUILTIN_SETTINGS",
    "DetectionTask",
    "DetectionTrainConfig",
    "DetectionTrainResult",
    "detection_config",
    "train_detector",
]


@dataclasses.dataclass
class DetectionTrainConfig:
    """Every setting of a detection training run. ``None`` means "the head or the backbone decides"."""

    data: str = "faces-coins"
    output: str = "runs/det"
    head: str = "ssdlite"
    arch: str | None = None  # default a1 (or the --weights backbone's)
    width: float | None = None
    size: int | None = None  # the square input side; default 320 (SSDLite) or 640 (RetinaNet)
    weights: str | None = None  # a classification checkpoint or registry name for the backbone
    anchor_scales: tuple[float, float] | None = None  # SSDLite's smallest and largest box side / image side
    stride8_map: bool = False  # SSDLite also predicts on the stride-8 map (small objects)
    # augmentation (SSD): IoU crop and flip; the "ssd" recipe adds photometric and zoom-out
    photometric: bool = False
    zoom_out: bool = False
    iou_crop: bool = True  # SSD's random IoU crop (off: the whole image, resized)
    letterbox: bool = True  # RetinaNet: keep the aspect ratio (pad) when resizing
    # length, batch and optimiser
    epochs: int = 60
    batch_size: int = 32
    max_steps: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    ema_decay: float = 0.999
    bn_momentum: float | None = None
    # speed and bookkeeping
    amp: str = "none"
    channels_last: bool = False  # oneDNN's faster layout for the CPU's convolutions and their gradients
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    eval_every: int = 1
    save_every: int = 0
    log_every: int = 10
    tensorboard: bool = False

    def validate(self) -> DetectionTrainConfig:
        """Raises ConfigError (a ValueError) naming the first setting that makes no sense."""
        check_settings(self, _RULES, optional=("width", "size", "max_steps", "bn_momentum", "anchor_scales"))
        if self.size is not None and self.size % 32:
            raise ConfigError(f"size must be a multiple of 32 (the backbone's stride), got {self.size}")
        if self.anchor_scales is not None and self.head != "ssdlite":
            raise ConfigError("anchor_scales sets SSDLite's default boxes; RetinaNet's anchors are fixed pixel sizes")
        if not self.iou_crop and self.head != "ssdlite":
            raise ConfigError("iou_crop is SSD's augmentation; RetinaNet trains on flipped, resized whole images")
        if self.stride8_map and self.head != "ssdlite":
            raise ConfigError("stride8_map adds a map to SSDLite; RetinaNet-FPN reads stride 8 already")
        return self

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            output=self.output,
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            optimizer=self.optimizer,
            lr=self.lr,
            schedule=self.schedule,
            warmup_epochs=self.warmup_epochs,
            min_lr=self.min_lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            ema_decay=self.ema_decay,
            amp=self.amp,
            channels_last=self.channels_last,
            workers=self.workers,
            device=self.device,
            seed=self.seed,
            eval_every=self.eval_every,
            save_every=self.save_every,
            log_every=self.log_every,
            tensorboard=self.tensorboard,
        ).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectionTrainConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown detection training settings: {', '.join(unknown)}")
        return cls(**data)


_RULES = {
    "head": one_of("ssdlite", "retinanet"),
    "stride8_map": (lambda v: isinstance(v, bool), "true or false"),
    "iou_crop": (lambda v: isinstance(v, bool), "true or false"),
    "width": positive(),
    "size": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 64 <= v <= 2048,
        "an integer from 64 to 2048",
    ),
    "epochs": at_least(1),
    "batch_size": at_least(2),  # BN needs two samples
    "max_steps": at_least(1),
    "lr": positive(),
    "warmup_epochs": non_negative(),
    "weight_decay": non_negative(),
    "bn_momentum": (lambda v: isinstance(v, float | int) and 0 < v < 1, "in (0, 1)"),
    "anchor_scales": (
        lambda v: (
            isinstance(v, list | tuple)
            and len(v) == 2
            and all(isinstance(x, float | int) and not isinstance(x, bool) for x in v)
            and 0 < v[0] < v[1] <= 1
        ),
        "two numbers 0 < smallest < largest <= 1 (box side / image side)",
    ),
}

# The built-in faces-coins (1,000 images of 320 pixels, faces and coins of 16 to 160 pixels) from
# scratch on a CPU: MnasNet-small at 256 pixels, SGD with a cosine schedule, fast BN and EMA averages,
# channels-last, and no IoU crop. Steps, not epochs, are what is short, and SSD's random crop (built for
# hundreds of epochs) slows learning here. Without it (benchmarks/detection.py --part learning): 2 threads,
# AP50 0.31 / 0.49 / 0.55 / 0.56 after 4 / 8 / 12 / 16 epochs (0.52 after 10, 7.4 training minutes); one
# thread beside another job, 0.30 / 0.46 / 0.51 / 0.51 (seed 1: 0.28 / 0.44 / 0.49 / 0.50); with the crop
# 0.20 / 0.32 / 0.39 / 0.41. Batch 8 (125 steps an epoch) at lr 0.02 learns far faster per CPU-minute than
# batch 32 at 0.08 (AP50 0.27 after 12 epochs) or batch 16 at 0.12 (0.14); batch 4 at 0.01 learned no
# faster per epoch. Same seed, other float rounding (threads, layout) moved the final AP50 by up to ±0.05.
# Tried and slower: AdamW (lr 0.002),
# smaller default boxes (anchor_scales 0.1-0.8; 0.05-0.6), 192 pixels; the stride-8 map (stride8_map)
# and a backbone pretrained on object crops changed little (AP50 0.39 and 0.37 after 13 and 11 epochs
# with the crop). Small objects (APs ~0.01) are not found: at 13-26 pixels a face is hard to tell from
# the LFW non-face distractors, and the detector proposes few boxes there at all.
BUILTIN_SETTINGS: dict[str, dict[str, Any]] = {
    "faces-coins": {
        "arch": "small",
        "size": 256,
        "epochs": 16,
        "batch_size": 8,
        "workers": 1,
        "lr": 0.02,
        "warmup_epochs": 1.0,
        "bn_momentum": 0.1,
        "ema_decay": 0.99,
        "channels_last": True,
        "iou_crop": False,
    },
}


def detection_config(data: str = "faces-coins", **overrides: Any) -> DetectionTrainConfig:
    """A :class:`DetectionTrainConfig` for ``data``: the built-in dataset's tuned settings, then ``overrides``."""
    settings = dict(BUILTIN_SETTINGS.get(str(data), {}))
    if overrides.get("weights") or overrides.get("head") == "retinanet":
        settings.pop("arch", None)  # the backbone comes from the weights; a tuned size stays
    if overrides.get("head") == "retinanet":
        settings.pop("anchor_scales", None)  # RetinaNet's anchors are fixed pixel sizes
        settings.pop("stride8_map", None)
        settings.pop("iou_crop", None)  # SSD's augmentation
    settings.update(overrides)
    return DetectionTrainConfig.from_dict({"data": str(data), **settings}).validate()


@dataclasses.dataclass
class DetectionTrainResult:
    run_dir: Path
    status: str  # "completed", "stopped" (max_steps) or "interrupted"
    epoch: int
    step: int
    best_ap: float | None  # the best val AP, in [0, 1]
    metrics: list[dict[str, Any]]
    checkpoint: Path | None
    model: nn.Module | None = None  # the evaluated weights (the EMA when on)

    @classmethod
    def from_run(cls, result: RunResult) -> DetectionTrainResult:
        """The engine's result, with the detector's best metric (val AP) named as such."""
        return cls(
            result.run_dir,
            result.status,
            result.epoch,
            result.step,
            result.best,
            result.metrics,
            result.checkpoint,
            model=result.model,
        )


def train_detector(
    config: DetectionTrainConfig, *, resume: bool = False, progress: bool = True
) -> DetectionTrainResult:
    """Trains a detector as ``config`` says, into the run folder ``config.output``.

    The folder holds what :mod:`mnasnet.engine.loop` describes; ``best.safetensors`` and
    ``last.safetensors`` are detector checkpoints (:func:`mnasnet.detection.model.load_detector`).

    Raises:
        ConfigError: a setting is out of range.
        DataError: the dataset is missing, malformed or too small for one batch.
        CheckpointError: ``resume`` without a readable checkpoint, or one of another detector.
        RunLockedError: another run is writing into the same folder.
        TrainingDivergedError: the loss became NaN/inf.
    """
    config.validate()
    return DetectionTrainResult.from_run(
        fit(DetectionTask(config), config.engine_config(), resume=resume, progress=progress)
    )


class DetectionTask(Task):
    """Boxes and labels per image; see the module docstring."""

    best_metric = "val_AP"
    higher_is_better = True

    def __init__(self, config: DetectionTrainConfig) -> None:
        from mnasnet.detection.data import collate

        self.config = config
        self.collate_fn = collate
        self.model = None

    # -- data and model -----------------------------------------------------------------

    def setup(self, context: DistributedContext) -> None:
        from mnasnet.detection.data import load_coco
        from mnasnet.detection.synthetic import resolve_detection_dataset

        self.context = context
        root = resolve_detection_dataset(self.config.data)
        self.train_data = load_coco(root / "train.json", check_image_sizes=False)
        self.val_path = root / "val.json"
        self.val_data = load_coco(self.val_path, check_image_sizes=False)
        if self.val_data.categories != self.train_data.categories:
            from mnasnet.errors import DataError

            raise DataError(
                f"{self.val_path} must have the categories of train.json: "
                f"{self.val_data.categories} vs {self.train_data.categories}"
            )

    def build_model(self) -> nn.Module:
        from mnasnet.detection.model import create_detector

        config = self.config
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = create_detector(
            config.head,
            arch=config.arch if config.arch or config.weights else "a1",
            width_multiplier=config.width,
            num_classes=self.train_data.num_classes,
            size=config.size,
            backbone_weights=config.weights,
            labels=["background", *self.train_data.class_names],
            anchor_scales=tuple(config.anchor_scales) if config.anchor_scales else None,
            stride8_map=config.stride8_map,
        )
        if config.bn_momentum is not None:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = config.bn_momentum
        self._build_datasets(model.config)
        self.model = model
        return model

    def _build_datasets(self, detector: Any) -> None:
        """The training and validation sets, with the augmentation and normalisation ``detector`` (a config) needs."""
        from mnasnet.detection.data import (
            DetectionDataset,
            eval_transform,
            retinanet_train_transform,
            ssd_train_transform,
        )

        config = self.config
        size, mean, std = detector.size, detector.mean, detector.std
        if detector.head == "ssdlite":
            train_transform = ssd_train_transform(
                size, photometric=config.photometric, zoom_out=config.zoom_out, iou_crop=config.iou_crop, fill=mean
            )
        else:
            train_transform = retinanet_train_transform(size, letterbox=config.letterbox, fill=mean)
        letterbox = detector.head == "retinanet" and config.letterbox
        self.train_set = DetectionDataset(self.train_data, train_transform, mean=mean, std=std, seed=config.seed)
        self.val_set = DetectionDataset(
            self.val_data, eval_transform(size, letterbox=letterbox, fill=mean), mean=mean, std=std
        )

    def train_dataset(self):
        return self.train_set

    def val_dataset(self):
        return self.val_set

    # -- loss and metrics ---------------------------------------------------------------

    def forward(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        images, targets = batch
        # Detector.loss is a method: call it through the (possibly DDP-wrapped) module's forward hooks
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        if module is model:
            return model.loss(images, targets)
        return _ddp_loss(model, images, targets)

    def loss(self, output: dict[str, torch.Tensor], batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {name: value.float() for name, value in output.items()}
        images = batch[0]
        # the engine sums statistics over batches and divides by samples: weight each term by the batch size
        return sum(terms.values()), {name: value.detach() * len(images) for name, value in terms.items()}

    def train_metrics(self, stats: dict[str, float], samples: int) -> dict[str, float]:
        return {f"train_{name}": value / max(samples, 1) for name, value in stats.items()}

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Any, step: TrainStep) -> dict[str, float]:
        """COCO AP of the rank-sharded validation set, gathered over ranks (every rank scores it)."""
        from mnasnet.detection.evaluate import coco_ground_truth, coco_metrics, coco_results

        model.eval()
        results: list[dict] = []
        for batch in loader:
            images, targets = step.prepare(batch)
            with step.autocast():
                detections = _predict(model, images, targets)
            for target, found in zip(targets, detections, strict=True):
                results += coco_results(
                    target["image_id"],
                    found["boxes"].float().cpu().numpy(),
                    found["scores"].float().cpu().numpy(),
                    found["labels"].cpu().numpy(),
                    self.val_data,
                )
        context = step.context
        if context.enabled:
            gathered: list[Any] = [None] * context.world_size
            torch.distributed.all_gather_object(gathered, results)
            results = [entry for part in gathered for entry in part]
        if not hasattr(self, "_ground_truth"):
            self._ground_truth = coco_ground_truth(self.val_data, _read_json(self.val_path))
        metrics = coco_metrics(self._ground_truth, results)
        # COCOeval's "no such objects" (None) is left out of the row; a split without objects scores 0
        row = {f"val_{name}": value for name, value in metrics.items() if value is not None}
        row.setdefault("val_AP", 0.0)
        return row

    # -- files ----------------------------------------------------------------------------

    def save_weights(self, model: nn.Module, path: Path, info: dict[str, Any]) -> None:
        from mnasnet.detection.model import save_detector

        keep = ("epoch", "step", "val_AP", "val_AP50", "val_AP75")
        extra = {key: info[key] for key in keep if key in info}
        extra["data"] = str(self.config.data)
        save_detector(model, path, extra=extra)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def signature(self) -> dict[str, Any]:
        detector = self.model.config
        return {
            "head": detector.head,
            "blocks": list(detector.backbone.to_dict().get("blocks", [])),
            "size": detector.size,
            "num_classes": detector.num_classes,
        }

    def describe(self) -> dict[str, Any]:
        detector = self.model.config
        return {
            "head": detector.head,
            "size": detector.size,
            "num_classes": detector.num_classes,
            "labels": list(detector.labels or ()),
            "train_images": len(self.train_set),
            "val_images": len(self.val_set),
        }


def _ddp_loss(model: nn.Module, images: torch.Tensor, targets: list) -> dict[str, torch.Tensor]:
    """The loss through DDP's forward, so its gradient hooks fire: the wrapped module's forward swapped for loss."""
    module = model.module
    original = module.forward
    module.forward = module.loss
    try:
        return model(images, targets)
    finally:
        module.forward = original


def _predict(model: nn.Module, images: torch.Tensor, targets: list[dict]) -> list[dict[str, torch.Tensor]]:
    """Detections in original-image pixels: the input's content region per image, mapped back by scale/offset."""
    sizes = []
    for target in targets:
        scale, offset = target["scale"].tolist(), target["offset"].tolist()
        height, width = target["orig_size"].tolist()
        content = (
            min(images.shape[-2], round(height * scale[1] + offset[1])),
            min(images.shape[-1], round(width * scale[0] + offset[0])),
        )
        sizes.append(content)
    detections = model.predict(images, image_sizes=sizes)
    for found, target in zip(detections, targets, strict=True):
        scale = target["scale"].to(found["boxes"]).repeat(2)
        offset = target["offset"].to(found["boxes"]).repeat(2)
        found["boxes"] = (found["boxes"] - offset) / scale
    return detections


def _read_json(path: Path) -> dict | None:
    from mnasnet.detection.evaluate import _read_document

    return _read_document(path)
