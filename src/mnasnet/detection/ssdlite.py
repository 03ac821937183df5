"""SSDLite on a MnasNet backbone, built as torchvision builds it (``models/detection/ssdlite.py``).

Two backbone maps feed the head: the expansion output of the first stride-32 block (``expand16``,
the MobileNetV2 paper's "layer 15 expansion") and the backbone's last map (``head``, stride 32).
Four extra blocks (1x1 conv -> 3x3 depthwise stride 2 -> 1x1 conv) add four coarser maps, and every
map gets a 3x3 depthwise + 1x1 predictor for classes and another for boxes. The layers keep
torchvision's order and shapes, so its weights copy over one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mnasnet.layers import ConvBNAct

__all__ = [
    "EXTRA_CHANNELS",
    "ConvBNReLU6",
    "SSDLite",
    "SSDLiteHead",
    "extra_block",
    "flatten_predictions",
    "prediction_block",
]

EXTRA_CHANNELS = (512, 256, 256, 128)
# torchvision's ssdlite320: BatchNorm2d(eps=0.001, momentum=0.03), convolutions drawn from N(0, 0.03)
BN_EPS = 1e-3
BN_MOMENTUM = 0.03
INIT_STD = 0.03


class ConvBNReLU6(ConvBNAct):
    """Convolution + BN + ReLU6 (SSDLite's activation); ``mnasnet.fuse`` folds it like any ``ConvBNAct``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, groups: int = 1):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            groups=groups,
            act=False,
            bn_eps=BN_EPS,
            bn_momentum=BN_MOMENTUM,
        )
        self.act = nn.ReLU6(inplace=True)
        self.has_act = True


def extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv to half the output channels, 3x3 depthwise stride 2, 1x1 conv to the output channels."""
    middle = out_channels // 2
    return nn.Sequential(
        ConvBNReLU6(in_channels, middle, 1),
        ConvBNReLU6(middle, middle, 3, stride=2, groups=middle),
        ConvBNReLU6(middle, out_channels, 1),
    )


def prediction_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 depthwise conv + BN + ReLU6, then a 1x1 conv (with bias) to the predictions."""
    return nn.Sequential(
        ConvBNReLU6(in_channels, in_channels, 3, groups=in_channels), nn.Conv2d(in_channels, out_channels, 1)
    )


def _normal_init(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def flatten_predictions(predictions: torch.Tensor, columns: int) -> torch.Tensor:
    """``[B, A * K, H, W]`` to ``[B, H * W * A, K]``: location by location, anchor by anchor."""
    batch, _, height, width = predictions.shape
    predictions = predictions.view(batch, -1, columns, height, width).permute(0, 3, 4, 1, 2)
    return predictions.reshape(batch, -1, columns)


class SSDLiteHead(nn.Module):
    """Per map a class predictor and a box predictor (torchvision's ``SSDLiteHead``)."""

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.classification = nn.ModuleList(
            prediction_block(c, num_classes * a) for c, a in zip(in_channels, num_anchors, strict=True)
        )
        self.regression = nn.ModuleList(
            prediction_block(c, 4 * a) for c, a in zip(in_channels, num_anchors, strict=True)
        )
        _normal_init(self)

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``cls_logits`` ``[B, N, num_classes]`` and ``bbox_regression`` ``[B, N, 4]`` over all maps."""
        logits = [
            flatten_predictions(block(x), self.num_classes) for block, x in zip(self.classification, maps, strict=True)
        ]
        boxes = [flatten_predictions(block(x), 4) for block, x in zip(self.regression, maps, strict=True)]
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1)


class SSDLite(nn.Module):
    """Extra blocks and prediction head on two backbone maps.

    Args:
        in_channels: channels of the backbone maps, ``(expand, last)``, or ``(stride8, expand, last)``.
        num_classes: class outputs, background (index 0) included.
        num_anchors: anchors per location on each map (the backbone's, then the four extra blocks').
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        num_anchors: Sequence[int] = (6,) * 6,
        extra_channels: Sequence[int] = EXTRA_CHANNELS,
    ) -> None:
        super().__init__()
        *tap_channels, last_channels = in_channels
        widths = [last_channels, *extra_channels]
        self.extra = nn.ModuleList(extra_block(i, o) for i, o in zip(widths[:-1], widths[1:], strict=True))
        _normal_init(self.extra)
        self.head = SSDLiteHead([*tap_channels, *widths], num_anchors, num_classes)

    def feature_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The maps the head predicts on: the backbone's, then the extra blocks'."""
        maps = list(features)
        x = maps[-1]
        for block in self.extra:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.feature_maps(features))
