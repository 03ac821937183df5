"""Detectors rewritten for exporters: BN folded, a chosen input layout, NPU-friendly ops, two outputs.

The same arithmetic as :class:`~mnasnet.detection.model.Detector` in eval mode, within float rounding,
in the form :class:`~mnasnet.deploy.graph.ExportableMnasNet` gives classifiers:

* The backbone is the classifier export's (BN folded once in float64, residual adds as explicit
  ``torch.add`` so PT2E quantises them, SE means kept 4-D), with the detector's taps read off it.
* Head predictions are flattened as ``permute(0, 2, 3, 1)`` then a 3-D reshape. On the NHWC tensors a
  TFLite file holds, that permute is the identity and the reshape a RESHAPE; the training model's 5-D
  ``view``/``permute`` would convert to a 5-D TRANSPOSE, which Vela leaves on the CPU.
* ``cls_logits`` and ``bbox_regression`` stay two outputs: quantised together into one int8 tensor
  the box offsets would set the scale and the class scores would be lost.
* :class:`DetectorWithNMS` adds decoding, SSD's per-class top-k and ONNX ``NonMaxSuppression`` (a
  custom op that the ONNX exporter maps onto the ONNX operator) for files that output detections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnasnet.deploy.graph import LAYOUTS, POOLINGS, _Block, _FoldedConv
from mnasnet.detection import DetectionError
from mnasnet.detection.box_coder import SSD_BOX_CODER
from mnasnet.detection.model import Detector
from mnasnet.fuse import fuse_model

__all__ = ["DetectorWithNMS", "ExportableDetector", "onnx_nms"]


def _flatten(predictions: torch.Tensor, columns: int) -> torch.Tensor:
    """``[B, A * K, H, W]`` to ``[B, H * W * A, K]``, the order of ``ssdlite.flatten_predictions``."""
    return predictions.permute(0, 2, 3, 1).reshape(predictions.shape[0], -1, columns)


class _ExportBlock(_Block):
    """A backbone block that can also return its expansion output (SSDLite's ``expand16`` tap)."""

    def forward_with_expanded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expanded = self.expand(x)
        out = self.depthwise(expanded)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return (torch.add(out, x) if self.has_skip else out), expanded


class _Backbone(nn.Module):
    """The folded MnasNet up to the maps a detector head reads, returned in ``tap_names`` order."""

    def __init__(self, backbone, tap_names: list[str], pooling: str) -> None:
        super().__init__()
        self.stem = _FoldedConv(backbone.stem)
        blocks, self.after, self.expanded = [], {}, {}
        by_position = {}
        for stage_index, stage in enumerate(backbone.stages):
            for block_index, block in enumerate(stage):
                by_position[stage_index, block_index] = len(blocks)
                blocks.append(_ExportBlock(block, pooling))
        for tap in backbone.feature_info:
            if tap["name"] in tap_names and tap["block"] is not None:
                target = self.expanded if tap["expanded"] else self.after
                target[by_position[tuple(tap["block"])]] = tap["name"]
        self.blocks = nn.ModuleList(blocks)
        self.head = _FoldedConv(backbone.head) if "head" in tap_names else None
        self.tap_names = list(tap_names)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = {}
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            if index in self.expanded:
                x, maps[self.expanded[index]] = block.forward_with_expanded(x)
            else:
                x = block(x)
            if index in self.after:
                maps[self.after[index]] = x
        if self.head is not None:
            maps["head"] = self.head(x)
        return [maps[name] for name in self.tap_names]


class _SSDLiteHead(nn.Module):
    """The folded SSDLite extra blocks and predictors (their Sequentials run as they are: conv, ReLU6)."""

    def __init__(self, ssdlite, num_classes: int) -> None:
        super().__init__()
        self.extra = ssdlite.extra
        self.classification = ssdlite.head.classification
        self.regression = ssdlite.head.regression
        self.num_classes = num_classes

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        maps, x = list(features), features[-1]
        for block in self.extra:
            x = block(x)
            maps.append(x)
        logits = [_flatten(block(m), self.num_classes) for block, m in zip(self.classification, maps, strict=True)]
        boxes = [_flatten(block(m), 4) for block, m in zip(self.regression, maps, strict=True)]
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1)


class _RetinaNetHead(nn.Module):
    """The FPN (explicit adds, so PT2E quantises the top-down sums) and the shared towers."""

    def __init__(self, retinanet, num_classes: int) -> None:
        super().__init__()
        self.fpn, self.head, self.num_classes = retinanet.fpn, retinanet.head, num_classes

    def _pyramid(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        fpn = self.fpn
        last_inner = fpn.inner_blocks[-1](features[-1])
        outputs = [fpn.layer_blocks[-1](last_inner)]
        for index in range(len(features) - 2, -1, -1):
            lateral = fpn.inner_blocks[index](features[index])
            last_inner = torch.add(lateral, F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest"))
            outputs.insert(0, fpn.layer_blocks[index](last_inner))
        p6 = fpn.p6(outputs[-1])
        return [*outputs, p6, fpn.p7(F.relu(p6))]

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        head, maps = self.head, self._pyramid(features)
        logits = [_flatten(head.cls_logits(head.classification_tower(m)), self.num_classes) for m in maps]
        boxes = [_flatten(head.bbox_reg(head.regression_tower(m)), 4) for m in maps]
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1)


class ExportableDetector(nn.Module):
    """An eval-mode copy of a :class:`Detector` in the form exporters and NPUs want.

    ``forward(images)`` returns ``(cls_logits [B, N, C], bbox_regression [B, N, 4])`` as the detector does.

    Args:
        detector: the source detector (copied, not changed).
        layout: ``"nchw"`` (PyTorch/ONNX convention) or ``"nhwc"`` (TFLite convention) input.
        pooling: the SE means as ``"mean"`` or ``"avgpool"`` (see :class:`~mnasnet.deploy.graph.ExportableMnasNet`).
        class_scores: output class probabilities (SSDLite's softmax, RetinaNet's sigmoid) instead of
            logits. For int8 files: the logits span the background's large values, so one int8 step is
            ~0.35 and the scores come out coarse; probabilities have a fixed range (steps of 1/256).
    """

    def __init__(
        self, detector: Detector, *, layout: str = "nchw", pooling: str = "mean", class_scores: bool = False
    ) -> None:
        super().__init__()
        self.class_scores = class_scores
        if layout not in LAYOUTS:
            raise DetectionError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if pooling not in POOLINGS:
            raise DetectionError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.layout, self.config = layout, detector.config
        fused = fuse_model(detector, channels_last=False)  # BN folded once, in float64
        for module in fused.modules():
            # torch.export keeps an in-place activation as hardtanh_/relu_, after which PT2E's observers
            # never see the calibration data (every later scale came out 2**-12): run them out of place.
            if isinstance(module, nn.ReLU | nn.ReLU6):
                module.inplace = False
        self.backbone = _Backbone(fused.backbone, fused.tap_names, pooling)
        num_classes = detector.config.num_classes
        if detector.config.head == "ssdlite":
            self.head = _SSDLiteHead(fused.head, num_classes)
        else:
            self.head = _RetinaNetHead(fused.head, num_classes)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layout == "nhwc":
            images = images.permute(0, 3, 1, 2)
        cls_logits, bbox_regression = self.head(self.backbone(images))
        if self.class_scores:  # int8 files: logits span ~70 (the background's), probabilities a fixed 0..1
            if self.config.head == "ssdlite":
                return torch.softmax(cls_logits, dim=-1), bbox_regression
            return torch.sigmoid(cls_logits), bbox_regression
        return cls_logits, bbox_regression


# -- in-graph NMS (ONNX) -------------------------------------------------------------------------

_nms_library = torch.library.Library("mnasnet_export", "DEF")
_nms_library.define(
    "nms(Tensor boxes, Tensor scores, int max_output_boxes_per_class, float iou_threshold, "
    "float score_threshold) -> Tensor"
)


@torch.library.impl(_nms_library, "nms", "CompositeExplicitAutograd")
def _nms_eager(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    max_output_boxes_per_class: int,
    iou_threshold: float,
    score_threshold: float,
) -> torch.Tensor:
    """ONNX ``NonMaxSuppression`` in PyTorch (``center_point_box=0``): ``[S, 3]`` (batch, class, box)."""
    from mnasnet.detection.postprocess import nms

    selected = []
    for batch_index in range(boxes.shape[0]):
        for class_index in range(scores.shape[1]):
            class_scores = scores[batch_index, class_index]
            candidates = torch.where(class_scores > score_threshold)[0]
            keep = nms(boxes[batch_index, candidates], class_scores[candidates], iou_threshold)
            keep = candidates[keep[:max_output_boxes_per_class]]
            rows = torch.stack([torch.full_like(keep, batch_index), torch.full_like(keep, class_index), keep], dim=1)
            selected.append(rows)
    return torch.cat(selected) if selected else torch.empty(0, 3, dtype=torch.int64)


@torch.library.register_fake("mnasnet_export::nms")
def _nms_fake(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


def onnx_nms(boxes, scores, max_output_boxes_per_class: int, iou_threshold: float, score_threshold: float):
    """The ONNX exporter's translation of ``mnasnet_export::nms``: one ``NonMaxSuppression`` node."""
    from onnxscript import opset20 as op

    return op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[max_output_boxes_per_class]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
        center_point_box=0,
    )


class DetectorWithNMS(nn.Module):
    """SSDLite raw outputs, then decoding and post-processing as :func:`~mnasnet.detection.postprocess.ssd_postprocess`.

    Per class the ``topk_candidates`` best anchors; each (image, class) pair is one batch entry of
    ``NonMaxSuppression`` (exactly class-wise, no coordinate offsets); the kept scores are scattered
    into a dense ``[B, (C - 1) * K]`` table whose top ``detections_per_image`` are the detections.

    ``forward(images)`` returns ``boxes`` ``[B, D, 4]`` (pixel corners in the input, clipped to it),
    ``scores`` ``[B, D]`` (0 in unused slots), ``labels`` ``[B, D]`` int64, ``num_detections`` ``[B]``
    int64, and the raw ``cls_logits`` and ``bbox_regression``.
    """

    def __init__(self, exportable: ExportableDetector, anchors: torch.Tensor, image_size: tuple[int, int]) -> None:
        super().__init__()
        config = exportable.config
        if config.head != "ssdlite":
            raise DetectionError(
                "in-graph NMS is built for SSDLite; export RetinaNet without NMS (the runtime decodes)"
            )
        self.network = exportable
        self.register_buffer("anchors", anchors.to(torch.float32))
        self.height, self.width = image_size
        self.topk = min(config.topk_candidates, anchors.shape[0])
        self.detections = min(config.detections_per_image, (config.num_classes - 1) * self.topk)
        self.score_threshold, self.nms_threshold = float(config.score_threshold), float(config.nms_threshold)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cls_logits, bbox_regression = self.network(images)
        batch, anchors, num_classes = cls_logits.shape
        boxes = SSD_BOX_CODER.decode(bbox_regression, self.anchors)
        limits = torch.tensor([self.width, self.height, self.width, self.height], dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        scores = torch.softmax(cls_logits, dim=-1)[..., 1:].transpose(1, 2)  # [B, C-1, N]
        top_scores, top_anchor = scores.topk(self.topk, dim=2)  # [B, C-1, K]
        classes = num_classes - 1
        candidate_boxes = torch.gather(
            boxes.unsqueeze(1).expand(batch, classes, anchors, 4), 2, top_anchor.unsqueeze(-1).expand(-1, -1, -1, 4)
        ).reshape(batch * classes, self.topk, 4)
        flat_scores = top_scores.reshape(batch * classes, 1, self.topk)
        selected = torch.ops.mnasnet_export.nms(
            candidate_boxes, flat_scores, self.topk, self.nms_threshold, self.score_threshold
        )
        pair, rank = selected[:, 0], selected[:, 2]
        dense = torch.zeros(batch * classes, self.topk, dtype=flat_scores.dtype)
        dense = dense.index_put((pair, rank), flat_scores[pair, 0, rank])
        final_scores, position = dense.reshape(batch, classes * self.topk).topk(self.detections, dim=1)
        final_boxes = torch.gather(
            candidate_boxes.reshape(batch, classes * self.topk, 4), 1, position.unsqueeze(-1).expand(-1, -1, 4)
        )
        labels = torch.div(position, self.topk, rounding_mode="floor") + 1
        num_detections = (final_scores > 0).sum(dim=1)
        return final_boxes, final_scores, labels, num_detections, cls_logits, bbox_regression
