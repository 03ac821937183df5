"""Training: the reference recipe (TF RMSProp, schedules, EMA), the loop, distributed helpers."""

from mnasnet.train.config import PRESETS, TrainConfig, load_config, save_config
from mnasnet.train.loop import TrainingDivergedError, TrainResult, TrainStep, train
from mnasnet.train.plot import plot_run
from mnasnet.train.recipe import ModelEma, RMSpropTF, learning_rate

__all__ = [
    "PRESETS",
    "ModelEma",
    "RMSpropTF",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "TrainingDivergedError",
    "learning_rate",
    "load_config",
    "plot_run",
    "save_config",
    "train",
]
