"""From head outputs to detections: box decoding, score filtering and non-maximum suppression.

Pure PyTorch versions of torchvision's ``nms`` / ``batched_nms`` (whose compiled kernels do not load on
a CPU-only torch) and of ``SSD.postprocess_detections`` / ``RetinaNet.postprocess_detections``.
Detections come back as torchvision returns them: per image a dict of ``"boxes"`` (``[K, 4]`` pixel
corners clipped to the image), ``"scores"`` and ``"labels"`` (``int64``), best score first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mnasnet.detection import DetectionError
from mnasnet.detection.box_coder import RETINANET_BOX_CODER, SSD_BOX_CODER, BoxCoder
from mnasnet.detection.matcher import box_iou

Detections = dict[str, torch.Tensor]


def clip_boxes(boxes: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Clamps ``(x1, y1, x2, y2)`` boxes into an image of ``(height, width)``."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``.

    Going down the scores, a box is kept unless a kept box overlaps it with IoU > ``iou_threshold``.
    Equal scores keep their input order.

    Returns:
        ``int64`` indices of the kept boxes, highest score first.
    """
    return batched_nms(boxes, scores, torch.zeros(scores.shape, dtype=torch.int64, device=scores.device), iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression within each label, never across labels (``torchvision.ops.batched_nms``).

    All labels run at once: the boxes are grouped by label, best first, into a ``[labels, K]`` table,
    and step ``k`` settles rank ``k`` of every label, removing the worse boxes it overlaps if it is kept.

    Returns:
        ``int64`` indices of the kept boxes, highest score first (ties in input order).
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1] or labels.shape != scores.shape:
        raise DetectionError(
            f"nms needs boxes [N, 4], scores [N] and labels [N], got "
            f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}"
        )
    count = boxes.shape[0]
    if count == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # best first within each label, the labels one after another
    order = torch.sort(scores, descending=True, stable=True)[1]
    order = order[torch.sort(labels[order], stable=True)[1]]
    group_sizes = torch.unique_consecutive(labels[order], return_counts=True)[1]
    group = torch.repeat_interleave(torch.arange(len(group_sizes), device=boxes.device), group_sizes)
    group_start = torch.cumsum(group_sizes, 0) - group_sizes
    rank = torch.arange(count, device=boxes.device) - group_start[group]
    width = int(group_sizes.max())

    grouped = boxes.new_zeros(len(group_sizes), width, 4)
    grouped[group, rank] = boxes[order]
    present = torch.zeros(len(group_sizes), width, dtype=torch.bool, device=boxes.device)
    present[group, rank] = True
    removed = ~present
    for step in range(width - 1):
        groups = torch.where(~removed[:, step])[0]  # labels whose box at this rank survives
        if len(groups) == 0:
            continue
        overlap = box_iou(grouped[groups, step : step + 1], grouped[groups, step + 1 :])[:, 0]
        removed[groups, step + 1 :] |= overlap > iou_threshold
    kept = order[~removed[group, rank]]
    kept = kept.sort()[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True)[1]]


def _check_head_outputs(cls_logits: torch.Tensor, bbox_regression: torch.Tensor, anchors: torch.Tensor, sizes) -> None:
    if cls_logits.dim() != 3 or bbox_regression.shape != (*cls_logits.shape[:2], 4):
        raise DetectionError(
            f"head outputs must be cls_logits [B, N, C] and bbox_regression [B, N, 4], "
            f"got {tuple(cls_logits.shape)} and {tuple(bbox_regression.shape)}"
        )
    if anchors.shape != (cls_logits.shape[1], 4):
        raise DetectionError(f"anchors {tuple(anchors.shape)} do not fit {cls_logits.shape[1]} predictions per image")
    if len(sizes) != cls_logits.shape[0]:
        raise DetectionError(f"{len(sizes)} image sizes for a batch of {cls_logits.shape[0]} images")


def _take(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> Detections:
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def ssd_postprocess(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: torch.Tensor,
    image_sizes: Sequence[Sequence[int]],
    *,
    score_threshold: float = 0.001,
    topk_per_class: int = 300,
    nms_threshold: float = 0.55,
    detections_per_image: int = 300,
    box_coder: BoxCoder = SSD_BOX_CODER,
) -> list[Detections]:
    """SSD detections: softmax scores, then per class (background 0 excluded) the ``topk_per_class`` best
    above ``score_threshold``, class-wise NMS, and the ``detections_per_image`` best. Defaults are SSDLite's.

    Args:
        cls_logits: ``[B, N, C]`` logits, class 0 background.
        bbox_regression: ``[B, N, 4]`` offsets from ``anchors`` (``[N, 4]`` pixel corners).
        image_sizes: ``(height, width)`` per image, to clip the boxes to.
    """
    _check_head_outputs(cls_logits, bbox_regression, anchors, image_sizes)
    num_classes = cls_logits.shape[-1]
    class_ids = torch.arange(1, num_classes, device=cls_logits.device)[:, None]
    detections = []
    for logits, offsets, image_size in zip(cls_logits, bbox_regression, image_sizes, strict=True):
        boxes = clip_boxes(box_coder.decode(offsets, anchors), image_size)
        scores = torch.softmax(logits, dim=-1)[:, 1:].T  # [C - 1, N]
        # the k best of each class, then the threshold: the same boxes as threshold-then-k
        top_scores, top_anchor = scores.topk(min(topk_per_class, scores.shape[1]), dim=1)
        passed = top_scores > score_threshold
        scores, anchor_index = top_scores[passed], top_anchor[passed]
        labels = class_ids.expand_as(top_anchor)[passed]
        boxes = boxes[anchor_index]
        keep = batched_nms(boxes, scores, labels, nms_threshold)[:detections_per_image]
        detections.append(_take(boxes, scores, labels, keep))
    return detections


def retinanet_postprocess(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: torch.Tensor,
    image_sizes: Sequence[Sequence[int]],
    anchors_per_level: Sequence[int],
    *,
    score_threshold: float = 0.05,
    topk_per_level: int = 1000,
    nms_threshold: float = 0.5,
    detections_per_image: int = 300,
    box_coder: BoxCoder = RETINANET_BOX_CODER,
) -> list[Detections]:
    """RetinaNet detections: sigmoid scores, per level the ``topk_per_level`` best (anchor, class) pairs
    above ``score_threshold``, class-wise NMS over all levels, and the ``detections_per_image`` best.

    Args:
        cls_logits: ``[B, N, C]`` logits (sigmoid per class).
        bbox_regression: ``[B, N, 4]`` offsets from ``anchors`` (``[N, 4]`` pixel corners).
        image_sizes: ``(height, width)`` per image, to clip the boxes to.
        anchors_per_level: how many of the ``N`` anchors each level holds
            (:meth:`~mnasnet.detection.anchors.GridAnchors.num_anchors_per_level`).
    """
    _check_head_outputs(cls_logits, bbox_regression, anchors, image_sizes)
    if sum(anchors_per_level) != anchors.shape[0]:
        raise DetectionError(f"anchors_per_level {list(anchors_per_level)} does not add up to {anchors.shape[0]}")
    num_classes = cls_logits.shape[-1]
    level_anchors = anchors.split(list(anchors_per_level))
    detections = []
    for logits, offsets, image_size in zip(cls_logits, bbox_regression, image_sizes, strict=True):
        image_boxes, image_scores, image_labels = [], [], []
        for level_logits, level_offsets, level_anchor in zip(
            logits.split(list(anchors_per_level)), offsets.split(list(anchors_per_level)), level_anchors, strict=True
        ):
            scores = torch.sigmoid(level_logits).flatten()
            candidates = torch.where(scores > score_threshold)[0]
            scores, best = scores[candidates].topk(min(topk_per_level, candidates.numel()))
            candidates = candidates[best]
            anchor_index = torch.div(candidates, num_classes, rounding_mode="floor")
            boxes = box_coder.decode(level_offsets[anchor_index], level_anchor[anchor_index])
            image_boxes.append(clip_boxes(boxes, image_size))
            image_scores.append(scores)
            image_labels.append(candidates % num_classes)
        boxes, scores, labels = torch.cat(image_boxes), torch.cat(image_scores), torch.cat(image_labels)
        keep = batched_nms(boxes, scores, labels, nms_threshold)[:detections_per_image]
        detections.append(_take(boxes, scores, labels, keep))
    return detections
