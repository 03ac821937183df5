"""The reference recipe's parts in one place: TF-style RMSProp, schedules, EMA, L2 decay, label smoothing.

They live where they are used: the optimisation parts in :mod:`mnasnet.engine`, the
loss in :mod:`mnasnet.tasks.classification`.
"""

from mnasnet.engine.ema import ModelEma
from mnasnet.engine.optim import RMSpropTF, add_l2_gradient, l2_penalty, learning_rate, split_decay_parameters
from mnasnet.tasks.classification import smoothed_cross_entropy

__all__ = [
    "ModelEma",
    "RMSpropTF",
    "add_l2_gradient",
    "l2_penalty",
    "learning_rate",
    "smoothed_cross_entropy",
    "split_decay_parameters",
]
