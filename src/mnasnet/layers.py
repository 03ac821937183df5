"""Building blocks: convolution + BN + ReLU, squeeze-excite, TF "same" padding, drop path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnasnet.errors import ModelConfigError

PADDINGS = ("symmetric", "same")


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TF "same" padding for one spatial axis, as (before, after)."""
    out = (size + stride - 1) // stride  # ceil, in integers (scriptable and exact)
    total = max((out - 1) * stride + kernel_size - size, 0)
    # TF puts the odd pixel after: k3 s2 on 224 pads 0 top, 1 bottom.
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel_size: list[int], stride: list[int]) -> torch.Tensor:
    """Pads ``x`` as TF "same" does for this kernel and stride (a no-op for most layers)."""
    top, bottom = same_padding(x.shape[-2], kernel_size[0], stride[0])
    left, right = same_padding(x.shape[-1], kernel_size[1], stride[1])
    if top == 0 and bottom == 0 and left == 0 and right == 0:
        return x
    return F.pad(x, [left, right, top, bottom])


# The padding depends on the input size: a leaf for torch.fx, so models with TF padding still trace.
torch.fx.wrap("pad_same")


class Conv2dSame(nn.Conv2d):
    """A convolution with TF "same" padding, needed to reproduce Google's checkpoints.

    Stride-1 layers pad symmetrically, like PyTorch; only strided layers on
    inputs of some sizes pad one pixel more at the bottom/right, so only
    those pay for an explicit pad.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, list(self.kernel_size), list(self.stride))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


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
        raise ModelConfigError(f"padding must be one of {PADDINGS}, got {padding!r}")
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
    """Convolution, batch norm and (optionally) ReLU, as plain modules.

    :func:`mnasnet.fuse.fuse_model` folds the BN into the convolution's bias and
    leaves ``bn`` as an ``nn.Identity``; nothing here changes with the mode.
    """

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
        mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
