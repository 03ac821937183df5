"""``mnasnet.create_model`` and ``mnasnet.load_model``: a fresh model, or one with weights.

This sits above both :mod:`mnasnet.model` (which knows nothing of weight files)
and :mod:`mnasnet.weights` (the one loader), so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

from mnasnet import model as _model
from mnasnet.arch import format_block
from mnasnet.errors import CheckpointError

__all__ = ["create_model", "load_model"]

# Settings that only change training behaviour: they may differ from the weights'.
_TRAINING_SETTINGS = ("dropout", "bn_momentum")


def create_model(
    arch: str | Sequence[str] | None = None,
    *,
    width_multiplier: float | None = None,
    num_classes: int | None = None,
    resolution: int | None = None,
    weights: str | os.PathLike | None = None,
    **settings: Any,
) -> _model.MnasNet:
    """Builds a MnasNet, freshly initialised or with weights.

    Args:
        arch: ``a1`` (the default), ``b1``, ``small``, ``d1``, ``d1_320``, or a list of
            block strings (reference grammar, or timm's dialect).
        width_multiplier: scales filters with the reference's ``round_filters``.
            ``None`` keeps them as written, as the reference does.
        num_classes: classifier outputs (default 1000).
        resolution: the input size the model is meant for (default 224).
        weights: a registry name or a checkpoint path (see :func:`mnasnet.weights.load_weights`).
            The weights define the architecture: any other argument given must agree
            with them, or :class:`~mnasnet.errors.CheckpointError` is raised. Only
            ``dropout`` and ``bn_momentum``, which change training alone, are applied
            on top.
        **settings: ``padding`` ("symmetric" or "same"), ``bn_eps``, ``bn_momentum``,
            ``dropout``, ``drop_path_rate``, ``stem_filters``, ``min_depth``, ``head_filters``.
    """
    if weights is None:
        return _model.create_model(
            "a1" if arch is None else arch,
            width_multiplier=width_multiplier,
            num_classes=1000 if num_classes is None else num_classes,
            resolution=224 if resolution is None else resolution,
            **settings,
        )
    from mnasnet.weights import load_weights

    loaded = load_weights(weights)
    requested = {"width_multiplier": width_multiplier, "num_classes": num_classes, "resolution": resolution}
    requested.update(settings)
    _check_agrees(loaded, weights, arch, requested)
    training = {name: settings[name] for name in _TRAINING_SETTINGS if name in settings}
    if training:
        _apply_training_settings(loaded, training)
    return loaded


def _check_agrees(model: _model.MnasNet, weights: Any, arch: Any, requested: dict[str, Any]) -> None:
    config = model.config
    conflicts = []
    if arch is not None:
        if isinstance(arch, str):
            if arch != config.arch:
                conflicts.append(f"arch={arch!r} (the weights are {config.arch or 'a custom architecture'})")
        else:
            built = _model.build_config(list(arch), width_multiplier=requested.get("width_multiplier"))
            if built.blocks != config.blocks:
                conflicts.append(
                    "the block strings given (the weights have "
                    + ", ".join(format_block(spec) for spec in config.blocks)
                    + ")"
                )
    for name, value in requested.items():
        if value is None or name in _TRAINING_SETTINGS:
            continue
        if name == "min_depth":
            continue  # only shapes the filters, which the weights fix; checked through them
        if not hasattr(config, name):
            raise TypeError(f"create_model() got an unexpected keyword argument {name!r}")
        have = getattr(config, name)
        same = math.isclose(value, have) if isinstance(value, float) and isinstance(have, float) else value == have
        if not same:
            conflicts.append(f"{name}={value!r} (the weights have {have!r})")
    if conflicts:
        raise CheckpointError(
            f"arguments conflict with the weights {str(weights)!r}: {'; '.join(conflicts)}. "
            "The weights define the model; to change the class count, call model.reset_classifier(n)"
        )


def _apply_training_settings(model: _model.MnasNet, training: dict[str, Any]) -> None:
    from torch import nn

    model.config = dataclasses.replace(model.config, **training)
    if "dropout" in training:
        model.dropout.p = training["dropout"]
    if "bn_momentum" in training:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = training["bn_momentum"]


def load_model(source: str | os.PathLike) -> _model.MnasNet:
    """A model with weights from a checkpoint path or a registry name, in eval mode.

    The same as ``create_model(weights=source)``; see :func:`mnasnet.weights.load_weights`.
    """
    from mnasnet.weights import load_weights

    return load_weights(source)
