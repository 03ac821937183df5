"""Training a MnasNet classifier: the configuration and presets, the reference recipe, curves.

:func:`train` runs :class:`mnasnet.tasks.classification.ClassificationTask` on the
task-agnostic :mod:`mnasnet.engine`.
"""

import importlib
from typing import TYPE_CHECKING, Any

from mnasnet.train.config import PRESETS, TrainConfig, load_config, save_config

# Loaded on first use (PEP 562): the command line reads TrainConfig to build its flags without PyTorch.
_LAZY = {
    "TrainingDivergedError": "mnasnet.engine",
    "TrainStep": "mnasnet.engine",
    "TrainResult": "mnasnet.tasks.classification",
    "train": "mnasnet.tasks.classification",
    "train_qat": "mnasnet.tasks.qat",
    "plot_run": "mnasnet.train.plot",
    "ModelEma": "mnasnet.train.recipe",
    "RMSpropTF": "mnasnet.train.recipe",
    "learning_rate": "mnasnet.train.recipe",
}

if TYPE_CHECKING:
    from mnasnet.engine import TrainingDivergedError, TrainStep
    from mnasnet.tasks.classification import TrainResult, train
    from mnasnet.tasks.qat import train_qat
    from mnasnet.train.plot import plot_run
    from mnasnet.train.recipe import ModelEma, RMSpropTF, learning_rate


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mnasnet.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


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
    "train_qat",
]
