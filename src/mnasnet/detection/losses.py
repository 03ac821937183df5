"""Training losses of SSD and RetinaNet, as torchvision's ``SSD.compute_loss`` and ``RetinaNet.compute_loss``.

Both take the heads' outputs over all levels at once: ``cls_logits`` ``[B, N, C]`` and
``bbox_regression`` ``[B, N, 4]`` for ``N`` anchors, and one target per image: a mapping with
``"boxes"`` (``[M, 4]`` pixel corners, ``M`` may be 0) and ``"labels"`` (``[M]`` class indices).
Both return ``{"bbox_regression": ..., "classification": ...}``, the keys torchvision uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from mnasnet.detection import DetectionError
from mnasnet.detection.box_coder import RETINANET_BOX_CODER, SSD_BOX_CODER, BoxCoder
from mnasnet.detection.matcher import BETWEEN_THRESHOLDS, match_retinanet, match_ssd

Target = Mapping[str, torch.Tensor]
Anchors = torch.Tensor | Sequence[torch.Tensor]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise focal loss (Lin et al. 2017), no reduction; ``alpha < 0`` switches the weighting off."""
    if not (0 <= alpha <= 1 or alpha < 0):
        raise DetectionError(f"focal-loss alpha must lie in [0, 1] (or be negative for none), got {alpha}")
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    probability_of_truth = probability * targets + (1 - probability) * (1 - targets)
    loss = cross_entropy * ((1 - probability_of_truth) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def _per_image(anchors: Anchors, batch: int, count: int) -> list[torch.Tensor]:
    if isinstance(anchors, torch.Tensor) and anchors.dim() == 2:
        anchors = [anchors] * batch
    anchors = list(anchors)
    if len(anchors) != batch or any(a.shape != (count, 4) for a in anchors):
        shapes = [tuple(a.shape) for a in anchors]
        raise DetectionError(f"expected {batch} anchor sets of shape ({count}, 4), got {shapes}")
    return anchors


def _check_inputs(
    cls_logits: torch.Tensor, bbox_regression: torch.Tensor, targets: Sequence[Target], background_class: bool
) -> None:
    if cls_logits.dim() != 3 or bbox_regression.shape != (*cls_logits.shape[:2], 4):
        raise DetectionError(
            f"head outputs must be cls_logits [B, N, C] and bbox_regression [B, N, 4], "
            f"got {tuple(cls_logits.shape)} and {tuple(bbox_regression.shape)}"
        )
    if len(targets) != cls_logits.shape[0]:
        raise DetectionError(f"{len(targets)} targets for a batch of {cls_logits.shape[0]} images")
    num_classes = cls_logits.shape[-1]
    lowest = 1 if background_class else 0
    for index, target in enumerate(targets):
        boxes, labels = target["boxes"], target["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise DetectionError(
                f"target {index}: boxes must be [M, 4] and labels [M], got {tuple(boxes.shape)}, {tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < lowest or labels.max() >= num_classes):
            raise DetectionError(
                f"target {index}: labels must lie in [{lowest}, {num_classes - 1}], got {labels.tolist()}"
            )


def ssd_loss(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: Anchors,
    targets: Sequence[Target],
    *,
    matches: Sequence[torch.Tensor] | None = None,
    iou_threshold: float = 0.5,
    negative_ratio: float = 3.0,
    box_coder: BoxCoder = SSD_BOX_CODER,
) -> dict[str, torch.Tensor]:
    """SSD's MultiBox loss: smooth-L1 on matched anchors plus softmax cross-entropy with hard negatives.

    Class 0 is background. Per image the ``negative_ratio`` x (positives) background anchors with the
    highest cross-entropy count as negatives; both sums are divided by the positives of the batch.

    Args:
        anchors: ``[N, 4]`` shared by the batch, or one ``[N, 4]`` per image.
        matches: per image, :func:`~mnasnet.detection.matcher.match_ssd` of its targets (computed here
            when left out).
    """
    _check_inputs(cls_logits, bbox_regression, targets, background_class=True)
    batch, count, num_classes = cls_logits.shape
    anchors = _per_image(anchors, batch, count)
    if matches is None:
        matches = [match_ssd(t["boxes"], a, iou_threshold=iou_threshold) for t, a in zip(targets, anchors, strict=True)]
    num_foreground = 0
    box_losses, class_targets = [], []
    for target, regression, image_anchors, match in zip(targets, bbox_regression, anchors, matches, strict=True):
        foreground = torch.where(match >= 0)[0]
        gt_index = match[foreground]
        num_foreground += foreground.numel()
        encoded = box_coder.encode(target["boxes"][gt_index], image_anchors[foreground])
        box_losses.append(F.smooth_l1_loss(regression[foreground], encoded, reduction="sum"))
        classes = torch.zeros(count, dtype=torch.int64, device=cls_logits.device)
        classes[foreground] = target["labels"][gt_index].to(torch.int64)
        class_targets.append(classes)
    class_targets = torch.stack(class_targets)

    cross_entropy = F.cross_entropy(cls_logits.reshape(-1, num_classes), class_targets.reshape(-1), reduction="none")
    cross_entropy = cross_entropy.view(class_targets.shape)
    positive = class_targets > 0
    # hard negatives: rank the background anchors by loss (positives sink to the end with -inf)
    num_negative = negative_ratio * positive.sum(1, keepdim=True)
    negative_loss = cross_entropy.clone()
    negative_loss[positive] = -float("inf")
    order = negative_loss.sort(1, descending=True)[1]
    rank = order.sort(1)[1]
    negative = rank < num_negative
    normaliser = max(1, num_foreground)
    return {
        "bbox_regression": torch.stack(box_losses).sum() / normaliser,
        "classification": (cross_entropy[positive].sum() + cross_entropy[negative].sum()) / normaliser,
    }


def retinanet_loss(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: Anchors,
    targets: Sequence[Target],
    *,
    matches: Sequence[torch.Tensor] | None = None,
    foreground_threshold: float = 0.5,
    background_threshold: float = 0.4,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_coder: BoxCoder = RETINANET_BOX_CODER,
) -> dict[str, torch.Tensor]:
    """RetinaNet's loss: sigmoid focal loss over all classes plus L1 on the foreground box offsets.

    Anchors between the thresholds are left out of the focal loss. Each image's sums are divided by its
    foreground count, then averaged over the batch.

    Args:
        anchors: ``[N, 4]`` shared by the batch, or one ``[N, 4]`` per image.
        matches: per image, :func:`~mnasnet.detection.matcher.match_retinanet` of its targets (computed
            here when left out).
    """
    _check_inputs(cls_logits, bbox_regression, targets, background_class=False)
    batch, count, _ = cls_logits.shape
    anchors = _per_image(anchors, batch, count)
    if matches is None:
        matches = [
            match_retinanet(
                t["boxes"], a, foreground_threshold=foreground_threshold, background_threshold=background_threshold
            )
            for t, a in zip(targets, anchors, strict=True)
        ]
    class_losses, box_losses = [], []
    for target, logits, regression, image_anchors, match in zip(
        targets, cls_logits, bbox_regression, anchors, matches, strict=True
    ):
        foreground = torch.where(match >= 0)[0]
        normaliser = max(1, foreground.numel())
        gt_index = match[foreground]
        class_target = torch.zeros_like(logits)
        class_target[foreground, target["labels"][gt_index]] = 1.0
        kept = match != BETWEEN_THRESHOLDS
        focal = sigmoid_focal_loss(logits[kept], class_target[kept], alpha=alpha, gamma=gamma)
        class_losses.append(focal.sum() / normaliser)
        encoded = box_coder.encode(target["boxes"][gt_index], image_anchors[foreground])
        box_losses.append(F.l1_loss(regression[foreground], encoded, reduction="sum") / normaliser)
    return {
        "classification": torch.stack(class_losses).sum() / batch,
        "bbox_regression": torch.stack(box_losses).sum() / batch,
    }
