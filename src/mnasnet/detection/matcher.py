"""Anchor-to-ground-truth matching by IoU (torchvision's ``SSDMatcher`` and ``Matcher``).

A match is an ``int64`` tensor with one entry per anchor: the index of its ground-truth box, or
:data:`BELOW_LOW_THRESHOLD` (background) or :data:`BETWEEN_THRESHOLDS` (ignored by RetinaNet).
"""

from __future__ import annotations

import torch

from mnasnet.detection import DetectionError

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``(x1, y1, x2, y2)`` boxes: ``[..., N, 4]`` x ``[..., M, 4]`` -> ``[..., N, M]``.

    Two empty boxes give NaN (0 / 0), as torchvision's does; NaN never passes a threshold.
    """
    # half precision (and integers) would round areas away; torchvision upcasts too
    boxes1 = boxes1 if boxes1.dtype in (torch.float32, torch.float64) else boxes1.float()
    boxes2 = boxes2 if boxes2.dtype in (torch.float32, torch.float64) else boxes2.float()
    # one coordinate at a time: contiguous [N, M] operands are several times faster than [N, M, 2]
    x1, y1, x2, y2 = (boxes1[..., k, None] for k in range(4))
    u1, v1, u2, v2 = (boxes2[..., None, :, k] for k in range(4))
    inter_w = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp_(min=0)
    inter_h = (torch.minimum(y2, v2) - torch.maximum(y1, v1)).clamp_(min=0)
    inter = inter_w.mul_(inter_h)
    union = (box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :]).sub_(inter)
    return inter.div_(union)


def _check(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> None:
    if gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4 or anchors.dim() != 2 or anchors.shape[-1] != 4:
        raise DetectionError(f"boxes must be [N, 4], got {tuple(gt_boxes.shape)} and {tuple(anchors.shape)}")
    if anchors.shape[0] == 0:
        raise DetectionError("cannot match against zero anchors")


def _match_thresholds(iou: torch.Tensor, high: float, low: float, allow_low_quality_matches: bool) -> torch.Tensor:
    best_iou, matches = iou.max(dim=0)
    best_gt = matches.clone()
    matches[best_iou < low] = BELOW_LOW_THRESHOLD
    matches[(best_iou >= low) & (best_iou < high)] = BETWEEN_THRESHOLDS
    if allow_low_quality_matches:
        # every anchor that ties for a ground truth's best IoU keeps its best ground truth,
        # however low the IoU: no box goes unmatched
        best_iou_per_gt = iou.max(dim=1).values
        anchors_of_best = torch.where(iou == best_iou_per_gt[:, None])[1]
        matches[anchors_of_best] = best_gt[anchors_of_best]
    return matches


def _no_match(anchors: torch.Tensor) -> torch.Tensor:
    return torch.full((anchors.shape[0],), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=anchors.device)


def match_ssd(gt_boxes: torch.Tensor, anchors: torch.Tensor, *, iou_threshold: float = 0.5) -> torch.Tensor:
    """SSD matching: IoU >= ``iou_threshold``, and each ground truth forced onto its best anchor.

    Args:
        gt_boxes: ``[M, 4]`` ground-truth boxes (``M`` may be 0: every anchor is background).
        anchors: ``[N, 4]`` anchors in the same coordinates.

    Returns:
        ``[N]`` ground-truth index per anchor, or :data:`BELOW_LOW_THRESHOLD`.
    """
    _check(gt_boxes, anchors)
    if gt_boxes.shape[0] == 0:
        return _no_match(anchors)
    iou = box_iou(gt_boxes, anchors)
    matches = _match_thresholds(iou, iou_threshold, iou_threshold, allow_low_quality_matches=False)
    best_anchor_per_gt = iou.max(dim=1).indices
    matches[best_anchor_per_gt] = torch.arange(best_anchor_per_gt.shape[0], device=matches.device)
    return matches


def match_retinanet(
    gt_boxes: torch.Tensor,
    anchors: torch.Tensor,
    *,
    foreground_threshold: float = 0.5,
    background_threshold: float = 0.4,
    allow_low_quality_matches: bool = True,
) -> torch.Tensor:
    """RetinaNet matching: foreground at IoU >= 0.5, background below 0.4, ignored between.

    With ``allow_low_quality_matches`` the anchors that tie for a ground truth's best IoU are matched
    to their best ground truth whatever the IoU.

    Returns:
        ``[N]`` ground-truth index per anchor, :data:`BELOW_LOW_THRESHOLD` or :data:`BETWEEN_THRESHOLDS`.
    """
    _check(gt_boxes, anchors)
    if background_threshold > foreground_threshold:
        raise DetectionError(
            f"background_threshold {background_threshold} is above foreground_threshold {foreground_threshold}"
        )
    if gt_boxes.shape[0] == 0:
        return _no_match(anchors)
    iou = box_iou(gt_boxes, anchors)
    return _match_thresholds(iou, foreground_threshold, background_threshold, allow_low_quality_matches)
