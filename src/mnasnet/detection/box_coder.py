"""Box coding: ground-truth boxes as offsets from anchors, and back (torchvision's ``BoxCoder``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mnasnet.detection import DetectionError

SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
RETINANET_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# exp() of a larger width/height offset would give boxes over 62x the anchor (torchvision's bbox_xform_clip)
SCALE_CLAMP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class BoxCoder:
    """Encodes ``(x1, y1, x2, y2)`` boxes as ``(wx dx, wy dy, ww log(w/wa), wh log(h/ha))`` offsets.

    ``dx`` and ``dy`` are centre shifts in anchor widths and heights. The operations run in
    torchvision's order, so both give the same floats.
    """

    weights: tuple[float, float, float, float]
    scale_clamp: float = SCALE_CLAMP

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if len(self.weights) != 4 or any(w <= 0 for w in self.weights):
            raise DetectionError(f"box coder weights must be four positive numbers, got {self.weights}")

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Offsets of ``boxes`` from ``anchors``, both ``[N, 4]`` (pairs row by row)."""
        weight_x, weight_y, weight_w, weight_h = (
            torch.as_tensor(w, dtype=boxes.dtype, device=boxes.device) for w in self.weights
        )
        anchor_w = anchors[:, 2] - anchors[:, 0]
        anchor_h = anchors[:, 3] - anchors[:, 1]
        anchor_x = anchors[:, 0] + 0.5 * anchor_w
        anchor_y = anchors[:, 1] + 0.5 * anchor_h
        box_w = boxes[:, 2] - boxes[:, 0]
        box_h = boxes[:, 3] - boxes[:, 1]
        box_x = boxes[:, 0] + 0.5 * box_w
        box_y = boxes[:, 1] + 0.5 * box_h
        offsets = (
            weight_x * (box_x - anchor_x) / anchor_w,
            weight_y * (box_y - anchor_y) / anchor_h,
            weight_w * torch.log(box_w / anchor_w),
            weight_h * torch.log(box_h / anchor_h),
        )
        return torch.stack(offsets, dim=1)

    def decode(self, offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes from offsets: ``offsets`` ``[..., N, 4]`` against ``anchors`` ``[N, 4]``."""
        if offsets.shape[-1] != 4 or offsets.shape[-2] != anchors.shape[0]:
            raise DetectionError(f"offsets {tuple(offsets.shape)} do not fit anchors {tuple(anchors.shape)}")
        anchors = anchors.to(offsets.dtype)
        anchor_w = anchors[:, 2] - anchors[:, 0]
        anchor_h = anchors[:, 3] - anchors[:, 1]
        anchor_x = anchors[:, 0] + 0.5 * anchor_w
        anchor_y = anchors[:, 1] + 0.5 * anchor_h
        weight_x, weight_y, weight_w, weight_h = self.weights
        dx = offsets[..., 0] / weight_x
        dy = offsets[..., 1] / weight_y
        dw = torch.clamp(offsets[..., 2] / weight_w, max=self.scale_clamp)
        dh = torch.clamp(offsets[..., 3] / weight_h, max=self.scale_clamp)
        centre_x = dx * anchor_w + anchor_x
        centre_y = dy * anchor_h + anchor_y
        half_w = 0.5 * (torch.exp(dw) * anchor_w)
        half_h = 0.5 * (torch.exp(dh) * anchor_h)
        return torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=-1)


SSD_BOX_CODER = BoxCoder(SSD_BOX_WEIGHTS)
RETINANET_BOX_CODER = BoxCoder(RETINANET_BOX_WEIGHTS)
