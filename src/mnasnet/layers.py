"""Building blocks: convolution + BN + ReLU, squeeze-excite, TF "same" padding, drop path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PADDINGS = ("symmetric", "same")


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TF "same" padding for one spatial axis, as (before, after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    # TF puts the odd pixel after: k3 s2 on 224 pads 0 top, 1 bottom.
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A convolution with TF "same" padding, needed to reproduce Google's checkpoints.

    Stride-1 layers pad symmetrically, like PyTorch; only strided layers on
    inputs of some sizes pad one pixel more at the bottom/right, so only
    those pay for an explicit pad.
    """

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad_input(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: str = "symmetric",
) -> nn.Conv2d:
    """A bias-free convolution with the chosen padding rule."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if padding == "same" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
    # For stride 1 and odd kernels TF "same" equals symmetric padding.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)


def fold_batch_norm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with an eval-mode BN folded in, in the weight's dtype."""
    with torch.no_grad():
        # In float64, so folding adds one rounding, not three.
        scale = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
        folded = weight.double() * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias.double() - bn.running_mean.double() * scale
    return folded.to(weight.dtype), bias.to(weight.dtype)


class ConvBNAct(nn.Sequential):
    """Convolution, batch norm and (optionally) ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        padding: str = "symmetric",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.conv = make_conv(in_channels, out_channels, kernel_size, stride=stride, groups=groups, padding=padding)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        if act:
            self.act = nn.ReLU(inplace=True)
        self.has_act = act
        self.fold_bn = True  # see forward(); MnasNet.set_fast_inference switches it
        self._folded: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def _folded_weights(self, memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weights with the BN folded in, recomputed whenever a weight or statistic changes."""
        bn, weight = self.bn, self.conv.weight
        tensors = (weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        key = tuple((t._version, t.data_ptr()) for t in tensors) + (memory_format, bn.eps)
        if self._folded is None or self._folded[0] != key:
            with torch.inference_mode(False):
                folded, bias = fold_batch_norm(weight, bn)
            self._folded = (key, folded.contiguous(memory_format=memory_format), bias)
        return self._folded[1], self._folded[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In inference (eval mode, no autograd) the BN is folded into the conv: one op
        # instead of three, about 1.5-2x faster on CPU. Training, and eval with
        # gradients (saliency, attacks), run the plain modules.
        if self.training or not self.fold_bn or torch.is_grad_enabled() or not self.bn.track_running_stats:
            return super().forward(x)
        channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
        weight, bias = self._folded_weights(torch.channels_last if channels_last else torch.contiguous_format)
        conv = self.conv
        if isinstance(conv, Conv2dSame):
            x = conv.pad_input(x)
            padding = 0
        else:
            padding = conv.padding
        x = F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)
        return F.relu(x, inplace=True) if self.has_act else x


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with ReLU and a sigmoid gate, as in the reference."""

    def __init__(self, channels: int, reduced_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, 1, bias=True)
        self.expand = nn.Conv2d(reduced_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(F.relu(self.reduce(scale), inplace=True))
        return x * scale.sigmoid()


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch per sample while training."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
