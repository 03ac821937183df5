"""The engine's settings: length, batch, optimiser, schedule, precision, bookkeeping.

A task's own configuration (model, data, augmentation) lives with the task; it hands the
engine an :class:`EngineConfig` (classification: ``TrainConfig.engine_config()``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mnasnet.errors import ConfigError

__all__ = ["EngineConfig", "at_least", "check_settings", "fraction", "non_negative", "one_of", "positive"]


@dataclasses.dataclass
class EngineConfig:
    """What every training run needs, whatever it trains. Defaults are the paper's recipe."""

    output: str = "runs/mnasnet"
    # length and batch
    epochs: int = 350
    batch_size: int = 128  # per process; the global batch is batch_size * world_size * accum_steps
    accum_steps: int = 1
    max_steps: int | None = None  # stop (with a checkpoint) after this many optimizer steps in total
    # optimiser and schedule
    optimizer: str = "rmsprop_tf"  # rmsprop_tf | sgd | adamw (decoupled weight decay; momentum is its beta1)
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
    weight_decay: float = 1e-5  # L2 loss on all non-BN weights
    ema_decay: float = 0.9999  # 0 turns the EMA off
    freeze_bn: bool = False  # keep BN statistics fixed (small-batch fine-tuning)
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

    def validate(self) -> EngineConfig:
        """Raises ConfigError (a ValueError) naming the first setting that makes no sense."""
        check_settings(self, _ENGINE_RULES, optional=("lr", "max_steps"))
        return self


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# name -> (test, what the value must be); None passes where the setting is optional
Rule = tuple[Any, str]


def at_least(low: int) -> Rule:
    return (lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def positive() -> Rule:
    return (lambda v: _finite(v) and v > 0, "a finite number > 0")


def non_negative() -> Rule:
    return (lambda v: _finite(v) and v >= 0, "a finite number >= 0")


def fraction(closed_top: bool = False, open_bottom: bool = False) -> Rule:
    def test(v: Any) -> bool:
        if not _finite(v):
            return False
        low_ok = v > 0 if open_bottom else v >= 0
        return low_ok and (v <= 1 if closed_top else v < 1)

    text = f"{'(' if open_bottom else '['}0, 1{']' if closed_top else ')'}"
    return (test, f"in {text}")


def one_of(*choices: str) -> Rule:
    return (lambda v: v in choices, "one of " + ", ".join(choices))


def check_settings(config: Any, rules: dict[str, Rule], optional: tuple[str, ...] = ()) -> None:
    """Checks ``config``'s attributes against ``rules``; raises ConfigError naming the first bad one."""
    for name, (test, wanted) in rules.items():
        value = getattr(config, name)
        if value is None and name in optional:
            continue
        if not test(value):
            raise ConfigError(f"{name} must be {wanted}, got {value!r}")


_ENGINE_RULES: dict[str, Rule] = {
    "epochs": at_least(1),
    "batch_size": at_least(1),
    "accum_steps": at_least(1),
    "max_steps": at_least(1),
    "optimizer": one_of("rmsprop_tf", "sgd", "adamw"),
    "base_lr": positive(),
    "lr": positive(),
    "base_batch": at_least(1),
    "schedule": one_of("exponential", "cosine", "constant"),
    "warmup_epochs": non_negative(),
    "decay_rate": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    "decay_epochs": positive(),
    "min_lr": non_negative(),
    "rmsprop_decay": fraction(),
    "momentum": fraction(),
    "epsilon": positive(),
    "weight_decay": non_negative(),
    "ema_decay": fraction(),
    "amp": one_of("none", "bf16", "fp16"),
    "device": one_of("auto", "cpu", "cuda"),
    "workers": at_least(0),
    "seed": at_least(0),
    "save_every": at_least(0),
    "eval_every": at_least(1),
    "log_every": at_least(1),
}
