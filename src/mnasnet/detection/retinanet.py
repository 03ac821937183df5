"""RetinaNet-FPN on a MnasNet backbone, built as torchvision builds it (``models/detection/retinanet.py``).

An FPN turns the backbone's stride-8, 16 and 32 maps into P3-P5 at 256 channels (1x1 lateral convs,
nearest-neighbour top-down sums, 3x3 output convs); P6 and P7 are stride-2 3x3 convs on P5 and on
ReLU(P6), torchvision's ``LastLevelP6P7(256, 256)`` of ``retinanet_resnet50_fpn`` (the v2 model
reads C5 instead). Shared towers of four 3x3 conv + ReLU then predict classes and boxes on every
level. The layers keep torchvision's order and shapes, so its weights copy over one to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mnasnet.detection.ssdlite import flatten_predictions

__all__ = ["FPN_CHANNELS", "FeaturePyramid", "RetinaNet", "RetinaNetHead"]

FPN_CHANNELS = 256
PRIOR_PROBABILITY = 0.01  # the classification bias starts every anchor at this foreground probability
TOWER_DEPTH = 4


class FeaturePyramid(nn.Module):
    """P3-P7 from C3-C5 (torchvision's ``FeaturePyramidNetwork`` with ``LastLevelP6P7`` on P5)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        last_inner = self.inner_blocks[-1](features[-1])
        outputs = [self.layer_blocks[-1](last_inner)]
        for index in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[index](features[index])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            outputs.insert(0, self.layer_blocks[index](last_inner))
        p6 = self.p6(outputs[-1])
        p7 = self.p7(F.relu(p6))
        return [*outputs, p6, p7]


def _tower(channels: int) -> nn.Sequential:
    return nn.Sequential(
        *(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)) for _ in range(TOWER_DEPTH))
    )


class RetinaNetHead(nn.Module):
    """Class and box subnets shared by all levels (torchvision's ``RetinaNetHead``)."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.classification_tower = _tower(channels)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.regression_tower = _tower(channels)
        self.bbox_reg = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``cls_logits`` ``[B, N, num_classes]`` and ``bbox_regression`` ``[B, N, 4]`` over all levels."""
        logits = [flatten_predictions(self.cls_logits(self.classification_tower(x)), self.num_classes) for x in maps]
        boxes = [flatten_predictions(self.bbox_reg(self.regression_tower(x)), 4) for x in maps]
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1)


class RetinaNet(nn.Module):
    """FPN and shared head on three backbone maps.

    Args:
        in_channels: channels of the backbone's stride-8, 16 and 32 maps.
        num_classes: class outputs (sigmoid each; index 0 is never a target).
        num_anchors: anchors per location, the same on every level.
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, num_anchors: int = 9, channels: int = FPN_CHANNELS
    ) -> None:
        super().__init__()
        self.fpn = FeaturePyramid(in_channels, channels)
        self.head = RetinaNetHead(channels, num_anchors, num_classes)

    def feature_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """P3-P7."""
        return self.fpn(features)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.feature_maps(features))
