"""Explicit inference fusion: BN folded into real ``nn.Conv2d`` biases, channels-last on CPU.

A :class:`~mnasnet.model.MnasNet` is a plain module in every mode. Speed is a
separate, visible step, as Ultralytics' ``model.fuse()`` and torchvision's
quantizable models' ``fuse_model()`` make it::

    fast = mnasnet.fuse_model(model)   # or model.fuse()
    logits = fast(images)

The fused copy is still ordinary modules: every convolution is an ``nn.Conv2d``
(now with a bias) inside the same ``ConvBNAct`` containers, its ``bn`` is an
``nn.Identity``, so forward hooks, FLOP counters, ``torch.fx`` and
``torch.export`` see the same network, one BN fewer per layer. Folding is done
once, in float64, so it adds one rounding per weight; the source model is not
changed and nothing is cached, so nothing can go stale.

Fused models are for inference: they have no BN statistics to train, and our
checkpoint format refuses them (save the model you fused from).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mnasnet.layers import ConvBNAct, fold_batch_norm

__all__ = ["fuse_conv_bn", "fuse_model", "is_fused"]


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` (same class, padding rule and stride) with the eval-mode ``bn`` folded into a bias."""
    fused = copy.deepcopy(conv)
    weight, bias = fold_batch_norm(conv.weight, bn)
    with torch.no_grad():
        if conv.bias is not None:  # BN scales a conv bias like any other output
            scale = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
            bias = (bias.double() + conv.bias.double() * scale).to(weight.dtype)
        fused.weight.copy_(weight)
        fused.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
    return fused


def is_fused(model: nn.Module) -> bool:
    """Whether ``model`` came out of :func:`fuse_model` (its BN layers are folded away)."""
    return bool(getattr(model, "is_fused", False))


def fuse_model(model: nn.Module, *, channels_last: bool | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with every conv+BN pair folded into one ``nn.Conv2d``.

    Args:
        model: a :class:`~mnasnet.model.MnasNet` (or any module built from ``ConvBNAct``);
            it is copied, not changed.
        channels_last: store weights and run activations channels-last, oneDNN's fast
            layout for depthwise convolutions. ``None`` turns it on when the model's
            parameters are on the CPU.

    Returns:
        The fused copy, in eval mode, with ``is_fused = True``; preprocessing and labels
        carry over.
    """
    if is_fused(model):
        return model
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            if not module.bn.track_running_stats or module.bn.running_var is None:
                raise ValueError("cannot fuse a BatchNorm2d without running statistics")
            module.conv = fuse_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
    if channels_last is None:
        first = next(fused.parameters(), None)
        channels_last = first is not None and first.device.type == "cpu"
    if channels_last:
        fused.to(memory_format=torch.channels_last)
    if hasattr(fused, "channels_last_input"):
        fused.channels_last_input = channels_last
    fused.is_fused = True
    return fused
