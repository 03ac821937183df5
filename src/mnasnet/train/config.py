"""Training configuration: one dataclass, the ``paper`` and ``finetune`` presets, YAML files, overrides.

Precedence, lowest first: the preset named by ``recipe``, a YAML file, explicit
overrides (command-line flags). The resolved configuration is saved with the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mnasnet.engine.config import EngineConfig, at_least, check_settings, fraction, positive
from mnasnet.errors import ConfigError, MnasNetError
from mnasnet.fileio import atomic_write_text

__all__ = ["DIGITS_SETTINGS", "PRESETS", "TrainConfig", "load_config", "save_config"]


# Settings that train MnasNet-small on the built-in 32-pixel `digits` in a few CPU minutes
# (98.3% top-1 in 30 epochs, benchmarks/train_digits.py): the paper's optimiser with a
# short warmup, faster BN and EMA averages for ~1,400 images, no dropout, and crops and
# no flips, since a mirrored digit is another symbol.
DIGITS_SETTINGS: dict[str, Any] = {
    "arch": "small",
    "resolution": 32,
    "epochs": 30,
    "batch_size": 32,
    "warmup_epochs": 1.0,
    "zero_init_head": True,
    "bn_momentum": 0.1,
    "ema_decay": 0.99,
    "dropout": 0.0,
    "crop_min_area": 0.5,
    "hflip": False,
    "channels_last": True,  # oneDNN's layout: a training step takes 0.7x the time on this CPU
}


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "the recipe or the architecture decides"."""

    # what to train, on what
    data: str = "digits"
    arch: str = "a1"
    width: float | None = None
    resolution: int = 224
    weights: str | None = None  # a registry name or checkpoint to start from (required by finetune)
    blocks_file: str | None = None  # a searched architecture (mnasnet.search.blocks_file) instead of arch
    recipe: str = "paper"
    output: str = "runs/mnasnet"
    # length and batch
    epochs: int = 350
    batch_size: int = 128  # per process; the global batch is batch_size * world_size * accum_steps
    accum_steps: int = 1
    max_steps: int | None = None  # stop (with a checkpoint) after this many optimizer steps in total
    # optimiser and schedule
    optimizer: str = "rmsprop_tf"  # rmsprop_tf | sgd
    base_lr: float = 0.016  # per base_batch images, scaled linearly with the global batch
    base_batch: int = 256
    lr: float | None = None  # an absolute peak learning rate, overriding base_lr scaling
    schedule: str = "exponential"  # exponential | cosine | constant
    warmup_epochs: float = 5.0
    decay_rate: float = 0.97
    decay_epochs: float = 2.4
    min_lr: float = 0.0
    rmsprop_decay: float = 0.9
    momentum: float = 0.9
    epsilon: float = 1e-3
    # regularisation
    weight_decay: float = 1e-5  # L2 loss on all non-BN weights
    label_smoothing: float = 0.1
    ema_decay: float = 0.9999  # 0 turns the EMA off
    dropout: float | None = 0.2
    drop_path_rate: float = 0.0
    zero_init_head: bool = False  # start the classifier at zero (the reference's init suits 1000 classes)
    bn_momentum: float | None = None  # PyTorch convention; None keeps the reference's 0.01 (TF 0.99)
    freeze_bn: bool = False  # keep BN statistics fixed (small-batch fine-tuning)
    # preprocessing (training crop: the reference's sample_distorted_bounding_box)
    crop_min_area: float = 0.08
    crop_min_object_covered: float = 0.1
    crop_aspect_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    crop_attempts: int = 10
    hflip: bool = True
    # speed
    amp: str = "none"  # none | bf16 | fp16 (fp16 with a grad scaler, CUDA only)
    channels_last: bool = False
    compile: bool = False
    workers: int = 4
    device: str = "auto"  # auto | cpu | cuda
    # bookkeeping
    seed: int = 0
    save_every: int = 1000  # optimizer steps between checkpoints (0: only at each epoch)
    eval_every: int = 1  # epochs
    log_every: int = 10  # steps between progress/TensorBoard updates and NaN checks
    tensorboard: bool = True
    plot: bool = True
    # quantisation-aware training (mnasnet.tasks.qat): fine-tune --weights with the exporter's int8 fake quantisation
    qat: bool = False
    per_tensor: bool = False  # QAT for per-tensor weight scales (export with --per-tensor); default per channel

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["crop_aspect_ratio"] = list(self.crop_aspect_ratio)
        return data

    def architecture(self) -> tuple[str | list[str], dict[str, Any]]:
        """What ``create_model`` builds: ``arch``, or the blocks file's block strings and stem."""
        if self.blocks_file is None:
            return self.arch, {}
        from mnasnet.search.blocks_file import read_blocks_file

        candidate = read_blocks_file(self.blocks_file)
        return list(candidate.blocks), {"stem_filters": candidate.stem}

    def engine_config(self) -> EngineConfig:
        """The settings the training engine reads (the rest describe the model, data and loss)."""
        return EngineConfig(**{field.name: getattr(self, field.name) for field in dataclasses.fields(EngineConfig)})

    def validate(self) -> TrainConfig:
        """Raises ConfigError (a ValueError) naming the first setting that makes no sense (NaN, out of range)."""
        check_settings(self, _TASK_RULES, optional=("width", "dropout", "bn_momentum"))
        low, high = self.crop_aspect_ratio
        if not 0 < low <= high or not math.isfinite(high):
            raise ConfigError(f"crop_aspect_ratio must be MIN,MAX with 0 < MIN <= MAX, got {self.crop_aspect_ratio}")
        self.engine_config().validate()
        self._validate_qat()
        if self.blocks_file is not None:
            if self.width is not None or self.weights:
                raise ConfigError("a blocks file fixes the architecture and its widths: drop --width and --weights")
            self.architecture()  # a missing or malformed file fails here, before any work
        return self

    def _validate_qat(self) -> None:
        if not self.qat:
            if self.per_tensor:
                raise ConfigError("per_tensor only applies to quantisation-aware training: add --qat")
            return
        if not self.weights:
            raise ConfigError("--qat fine-tunes a trained float model: pass --weights FP32_CHECKPOINT")
        if self.amp != "none" or self.compile or self.zero_init_head:
            raise ConfigError("--qat trains in float32 with fake quantisation: drop --amp, --compile, --zero-init-head")


_TASK_RULES = {
    "data": (lambda v: isinstance(v, str) and v.strip() != "", "a dataset folder or built-in name"),
    "arch": (lambda v: isinstance(v, str) and v.strip() != "", "an architecture name"),
    "width": positive(),
    "resolution": at_least(8),
    "label_smoothing": fraction(),
    "dropout": fraction(),
    "drop_path_rate": fraction(),
    "bn_momentum": fraction(closed_top=True, open_bottom=True),
    "crop_min_area": fraction(closed_top=True, open_bottom=True),
    "crop_min_object_covered": fraction(closed_top=True),
    "crop_attempts": at_least(1),
}


# Presets only list what differs from the dataclass defaults (which are the paper's recipe).
PRESETS: dict[str, dict[str, Any]] = {
    # Google's reference recipe (mnasnet_main.py): RMSProp(0.9, 0.9, 1e-3), 0.016 per 256 images, 5 warmup epochs,
    # x0.97 every 2.4 epochs, 350 epochs, L2 1e-5, smoothing 0.1, EMA 0.9999, dropout 0.2.
    "paper": {},
    # Transfer learning: pretrained backbone, new head, short cosine schedule, gentler
    # optimiser and a faster EMA (a few thousand steps, not a few hundred thousand).
    "finetune": {
        "epochs": 20,
        "batch_size": 64,
        "optimizer": "sgd",
        "base_lr": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 1.0,
        "weight_decay": 5e-5,
        "ema_decay": 0.999,
        "save_every": 0,
    },
}


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {field.name: hints[field.name] for field in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Checks and converts a YAML/CLI value to the field's type."""
    args = typing.get_args(annotation)
    optional = type(None) in args and (typing.get_origin(annotation) in (typing.Union, types.UnionType))
    if optional and isinstance(value, str) and value.lower() in ("", "none", "null"):
        value = None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    if optional:
        annotation = next(arg for arg in args if arg is not type(None))
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if typing.get_origin(annotation) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(float(item) for item in items)
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return annotation(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}") from None


def load_config(
    recipe: str | None = None,
    yaml_path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolves a configuration: the preset, then the YAML file, then ``overrides``.

    ``recipe`` may also come from the YAML file or the overrides.

    Raises:
        MnasNetError: the YAML file is missing or malformed, or names unknown settings.
        ValueError: a value has the wrong type or is out of range.
    """
    from_file: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise MnasNetError(f"config file not found: {path}")
        try:
            from_file = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise MnasNetError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(from_file, dict):
            raise MnasNetError(f"{path} must hold a mapping of settings")
        from_file.pop("resolved", None)  # derived values a saved run config carries
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    # QAT fine-tunes a trained model: the finetune recipe (schedule, EMA) unless another is named
    qat_default = "finetune" if overrides.get("qat", from_file.get("qat")) is True else "paper"
    recipe = overrides.get("recipe") or from_file.get("recipe") or recipe or qat_default
    if recipe not in PRESETS:
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {', '.join(PRESETS)}")
    types_by_name = _field_types()
    values: dict[str, Any] = {}
    data = overrides.get("data") or from_file.get("data") or PRESETS[recipe].get("data", TrainConfig.data)
    # The built-in dataset brings settings that suit it, below anything the user sets.
    dataset_defaults = DIGITS_SETTINGS if data == "digits" and recipe == "paper" else {}
    sources = (("preset", PRESETS[recipe]), ("built-in dataset", dataset_defaults), ("config file", from_file),
               ("overrides", overrides))  # fmt: skip
    for source_name, source in sources:
        unknown = sorted(set(source) - set(types_by_name))
        if unknown:
            raise MnasNetError(f"unknown training settings in {source_name}: {', '.join(unknown)}")
        for name, value in source.items():
            values[name] = _coerce(name, value, types_by_name[name])
    values["recipe"] = recipe
    blocks_file = values.get("blocks_file")
    if blocks_file is not None and "resolution" not in from_file and "resolution" not in overrides:
        from mnasnet.search.blocks_file import read_blocks_file

        values["resolution"] = read_blocks_file(blocks_file).resolution  # the searched resolution
    return TrainConfig(**values).validate()


def save_config(config: TrainConfig, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Writes the resolved configuration (plus derived values such as the real lr) as YAML, atomically."""
    data = config.to_dict()
    if extra:
        data["resolved"] = extra
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
