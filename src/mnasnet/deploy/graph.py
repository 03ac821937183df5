"""MnasNet rewritten for exporters: BN folded, a chosen input layout, NPU-friendly pooling.

Exporters and int8 quantisers see a plain graph of ``Conv2d`` (+ReLU), average
pools, sigmoid, multiply, add and one ``Linear``: the same arithmetic as
:class:`~mnasnet.model.MnasNet` in eval mode, within float rounding.

Why a rewrite instead of exporting the model as it is:

* BN is folded into the convolutions here (:func:`mnasnet.fuse.fuse_model`), once, in float64. The converters
  fold it too, but PT2E's conv+BN fusion and ONNX Runtime's optimiser each do it
  their own way; folding first gives every format the same weights and the
  quantisers a plain conv(+ReLU) pattern to annotate.
* The global means (SE squeeze and head pooling) keep their reduced dims and the
  head flattens afterwards. The original head mean drops H and W, so the
  converter transposes the map back to NCHW and reduces over axes (2, 3): a
  depth reduction Vela rejects, and an extra TRANSPOSE on CPU. Kept 4-D, every
  mean is a MEAN over H and W of an NHWC map: NPU-native. (A full-map
  ``avg_pool2d`` also works on the NPU, but the converter adds a requantising
  QUANTIZE after each pool and XNNPACK runs it about 6% slower on A1.)
* The skip connection is an explicit ``torch.add`` so that the PT2E quantiser
  annotates it (an ``x + y`` on module outputs was left in float, costing a
  DEQUANTIZE/ADD/QUANTIZE round trip per residual block on CPU and the NPU).
* ``layout="nhwc"`` takes channels-last input, which is what TFLite users feed
  and what keeps the converted graph free of layout transposes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mnasnet.errors import ConfigError
from mnasnet.fuse import fuse_model
from mnasnet.layers import Conv2dSame, ConvBNAct, pad_same
from mnasnet.model import MnasNet

__all__ = ["LAYOUTS", "POOLINGS", "ExportableMnasNet"]

LAYOUTS = ("nchw", "nhwc")


class _FoldedConv(nn.Module):
    """A fused ConvBNAct (see :mod:`mnasnet.fuse`); keeps TF "same" padding as an explicit pad."""

    def __init__(self, source: ConvBNAct) -> None:
        super().__init__()
        conv = source.conv
        self.same = isinstance(conv, Conv2dSame)
        self.conv = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            0 if self.same else conv.padding,
            groups=conv.groups,
            bias=True,
        )
        self.conv.load_state_dict(conv.state_dict())
        self.act = source.has_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = pad_same(x, list(self.conv.kernel_size), list(self.conv.stride))
        x = self.conv(x)
        return F.relu(x) if self.act else x


POOLINGS = ("mean", "avgpool")


def _global_pool(x: torch.Tensor, pooling: str) -> torch.Tensor:
    # Both keep [N,1,1,C]: on an NHWC map either is an op Vela runs on the NPU. MEAN is
    # ~6% faster under XNNPACK on CPU; AVERAGE_POOL_2D ~9% faster on an Ethos-U65 (Vela).
    if pooling == "avgpool":
        return F.avg_pool2d(x, kernel_size=(int(x.shape[-2]), int(x.shape[-1])))
    return x.mean((2, 3), keepdim=True)


class _SqueezeExcite(nn.Module):
    def __init__(self, source, pooling: str) -> None:
        super().__init__()
        self.reduce = copy.deepcopy(source.reduce)
        self.expand = copy.deepcopy(source.expand)
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(F.relu(self.reduce(_global_pool(x, self.pooling))))
        return torch.mul(x, torch.sigmoid(scale))


class _Block(nn.Module):
    def __init__(self, block, pooling: str) -> None:
        super().__init__()
        self.expand = _FoldedConv(block.expand) if block.expand is not None else None
        self.depthwise = _FoldedConv(block.depthwise)
        self.se = _SqueezeExcite(block.se, pooling) if block.se is not None else None
        self.project = _FoldedConv(block.project)
        self.has_skip = block.has_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return torch.add(out, x) if self.has_skip else out


class ExportableMnasNet(nn.Module):
    """An eval-mode copy of a :class:`MnasNet` in the form exporters and NPUs want.

    Args:
        model: the source model (its weights are copied; it is not changed).
        layout: ``"nchw"`` (PyTorch/ONNX convention) or ``"nhwc"`` (TFLite convention) input.
        pooling: the global means (SE squeeze, head) as ``"mean"`` (faster on CPU) or
            ``"avgpool"`` (faster on an Ethos-U NPU); the same arithmetic either way.
    """

    def __init__(self, model: MnasNet, *, layout: str = "nchw", pooling: str = "mean") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.layout, self.pooling = layout, pooling
        model = fuse_model(model, channels_last=False)  # BN folded once, in float64, as for CPU inference
        self.stem = _FoldedConv(model.stem)
        self.blocks = nn.Sequential(*(_Block(block, pooling) for stage in model.stages for block in stage))
        self.head = _FoldedConv(model.head)
        self.classifier = nn.Linear(model.classifier.in_features, model.classifier.out_features)
        self.classifier.load_state_dict(model.classifier.state_dict())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "nhwc":
            x = x.permute(0, 3, 1, 2)
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(_global_pool(x, self.pooling), 1))
