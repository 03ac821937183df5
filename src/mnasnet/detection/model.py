"""Detectors on any MnasNet backbone: SSDLite or RetinaNet-FPN, their settings, and their checkpoint files.

A :class:`Detector` is a backbone plus a head. ``forward`` returns the raw head outputs, class logits
and box offsets as two tensors (what gets exported: quantising both into one tensor ruins the
scores); ``loss`` and ``predict`` add the anchors, losses and post-processing of
:mod:`mnasnet.detection`. Everything that rebuilds a detector is one :class:`DetectorConfig`, which
:func:`save_detector` writes into the safetensors header beside the weights::

    model = create_detector("ssdlite", arch="a1", num_classes=91, backbone_weights="a1_100.timm_rmsp_in1k")
    cls_logits, bbox_regression = model(images)          # [B, N, 91], [B, N, 4]
    detections = model.eval().predict(images)            # per image: boxes, scores, labels
    save_detector(model, "ssdlite_a1.safetensors")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mnasnet.checkpoint import MAX_HEADER_BYTES
from mnasnet.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from mnasnet.detection import DetectionError
from mnasnet.detection.anchors import SSDLITE_ASPECT_RATIOS, DefaultBoxes, GridAnchors, anchors_from_dict
from mnasnet.detection.losses import retinanet_loss, ssd_loss
from mnasnet.detection.postprocess import Detections, retinanet_postprocess, ssd_postprocess
from mnasnet.detection.retinanet import RetinaNet
from mnasnet.detection.ssdlite import SSDLite
from mnasnet.errors import CheckpointError, MnasNetError
from mnasnet.fileio import atomic_path
from mnasnet.model import MnasNet, MnasNetConfig

__all__ = [
    "HEADS",
    "Detector",
    "DetectorConfig",
    "anchors_for",
    "create_detector",
    "load_detector",
    "read_detector_config",
    "read_detector_extra",
    "save_detector",
]

FORMAT_NAME = "mnasnet_detector"  # the safetensors metadata key, distinct from classifiers' "mnasnet"
FORMAT_VERSION = 1

# Per head: input size and post-processing, torchvision's ssdlite320 and retinanet_resnet50_fpn settings.
HEADS: dict[str, dict[str, Any]] = {
    "ssdlite": {
        "size": 320,
        "score_threshold": 0.001,
        "nms_threshold": 0.55,
        "topk_candidates": 300,  # per class
        "detections_per_image": 300,
    },
    "retinanet": {
        "size": 640,
        "score_threshold": 0.05,
        "nms_threshold": 0.5,
        "topk_candidates": 1000,  # per level
        "detections_per_image": 300,
    },
}
# With the stride-8 map SSDLite's smallest default box is 0.08 of the image side (20 px at 256, about the
# smallest faces-coins object), not 0.2: the denser grid is there for the objects the other maps miss.
STRIDE8_ANCHOR_SCALES = (0.08, 0.95)
MAX_CLASSES = 10_000
MAX_SIZE = 4096
MAX_CANDIDATES = 100_000


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Everything that rebuilds a detector.

    Attributes:
        head: ``"ssdlite"`` or ``"retinanet"``.
        backbone: the MnasNet's resolved settings (its classifier is not part of the detector).
        num_classes: class outputs, background (index 0) included: 91 for COCO's label ids.
        size: the square input side the detector is meant for (320 for SSDLite, 640 for RetinaNet).
            The network runs at any size; anchors follow the feature maps.
        labels: ``num_classes`` class names, background first, when known.
        score_threshold, nms_threshold, topk_candidates, detections_per_image: post-processing;
            ``topk_candidates`` is per class for SSDLite, per level for RetinaNet. ``None`` takes the
            head's default.
        mean, std: per-channel normalisation of 0-1 pixels the network expects.
        anchor_scales: SSDLite only: the smallest and largest default-box sides relative to the
            image side, ``(min_ratio, max_ratio)``; ``None`` is torchvision's ``(0.2, 0.95)``, which
            finds nothing smaller than about a tenth of the image. Lower the first for small objects.
        stride8_map: SSDLite only: also predict on the backbone's stride-8 map (first, seven maps in
            all), whose denser grid can place default boxes on objects a few percent of the image
            side; its default boxes then start at ``STRIDE8_ANCHOR_SCALES`` unless ``anchor_scales``
            is given. Off, the design is torchvision's.
    """

    head: str
    backbone: MnasNetConfig
    num_classes: int = 91
    size: int | None = None
    labels: tuple[str, ...] | None = None
    score_threshold: float | None = None
    nms_threshold: float | None = None
    topk_candidates: int | None = None
    detections_per_image: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    anchor_scales: tuple[float, float] | None = None
    stride8_map: bool = False

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise DetectionError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for name, default in HEADS[self.head].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if not isinstance(self.backbone, MnasNetConfig):
            raise DetectionError(f"backbone must be a MnasNetConfig, got {type(self.backbone).__name__}")
        if not _is_int_in(self.num_classes, 2, MAX_CLASSES):
            raise DetectionError(
                f"num_classes counts the background too: an integer from 2 to {MAX_CLASSES}, got {self.num_classes!r}"
            )
        if not _is_int_in(self.size, 32, MAX_SIZE):
            raise DetectionError(f"size must be an integer from 32 to {MAX_SIZE}, got {self.size!r}")
        self._check_labels()
        if not (_is_number(self.score_threshold) and 0 <= self.score_threshold < 1):
            raise DetectionError(f"score_threshold must be in [0, 1), got {self.score_threshold!r}")
        if not (_is_number(self.nms_threshold) and 0 < self.nms_threshold <= 1):
            raise DetectionError(f"nms_threshold must be in (0, 1], got {self.nms_threshold!r}")
        for name in ("topk_candidates", "detections_per_image"):
            if not _is_int_in(getattr(self, name), 1, MAX_CANDIDATES):
                raise DetectionError(
                    f"{name} must be an integer from 1 to {MAX_CANDIDATES}, got {getattr(self, name)!r}"
                )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not (isinstance(values, Sequence) and len(values) == 3 and all(_is_number(v) for v in values)):
                raise DetectionError(f"{name} must be three numbers, got {values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if min(self.std) <= 0:
            raise DetectionError(f"std must be positive, got {self.std}")
        self._check_anchor_scales()
        if not isinstance(self.stride8_map, bool):
            raise DetectionError(f"stride8_map must be true or false, got {self.stride8_map!r}")
        if self.stride8_map and self.head != "ssdlite":
            raise DetectionError("stride8_map adds a map to SSDLite; RetinaNet-FPN reads stride 8 already")

    def _check_anchor_scales(self) -> None:
        scales = self.anchor_scales
        if scales is None:
            return
        if self.head != "ssdlite":
            raise DetectionError("anchor_scales sets SSDLite's default boxes; RetinaNet's anchors are fixed sizes")
        if not (isinstance(scales, Sequence) and len(scales) == 2 and all(_is_number(v) for v in scales)):
            raise DetectionError(f"anchor_scales must be two numbers (smallest, largest), got {scales!r}")
        low, high = float(scales[0]), float(scales[1])
        if not 0 < low < high <= 1:
            raise DetectionError(f"anchor_scales must satisfy 0 < smallest < largest <= 1, got {scales!r}")
        object.__setattr__(self, "anchor_scales", (low, high))

    def _check_labels(self) -> None:
        if self.labels is None:
            return
        labels = self.labels
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not all(isinstance(x, str) for x in labels):
            raise DetectionError("labels must be a list of strings, background first")
        if len(labels) != self.num_classes:
            raise DetectionError(f"{len(labels)} labels for {self.num_classes} classes (background included)")
        object.__setattr__(self, "labels", tuple(labels))

    @property
    def anchor_generator(self) -> DefaultBoxes | GridAnchors:
        """SSDLite's default boxes (torchvision's, or spanning ``anchor_scales``) or RetinaNet's grid anchors."""
        if self.head == "retinanet":
            return GridAnchors()
        default = STRIDE8_ANCHOR_SCALES if self.stride8_map else (DefaultBoxes.min_ratio, DefaultBoxes.max_ratio)
        low, high = self.anchor_scales or default
        levels = len(SSDLITE_ASPECT_RATIOS) + int(self.stride8_map)
        return DefaultBoxes(aspect_ratios=SSDLITE_ASPECT_RATIOS[:1] * levels, min_ratio=low, max_ratio=high)

    def to_dict(self) -> dict[str, Any]:
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["backbone"] = self.backbone.to_dict()
        data["labels"] = list(self.labels) if self.labels is not None else None
        data["mean"], data["std"] = list(self.mean), list(self.std)
        if self.anchor_scales is None:
            del data["anchor_scales"]  # files stay readable by versions without the setting
        else:
            data["anchor_scales"] = list(self.anchor_scales)
        if not self.stride8_map:
            del data["stride8_map"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorConfig:
        """The inverse of :meth:`to_dict`; anything unknown or invalid raises :class:`DetectionError`."""
        if not isinstance(data, Mapping):
            raise DetectionError(f"detector settings must be a mapping, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DetectionError(f"unknown detector settings: {sorted(unknown)}")
        for name in ("head", "backbone"):
            if name not in data:
                raise DetectionError(f"detector settings lack {name!r}")
        backbone = data["backbone"]
        if not isinstance(backbone, MnasNetConfig):
            if not isinstance(backbone, Mapping) or "blocks" not in backbone:
                raise DetectionError("backbone settings must be a mapping with block strings")
            try:
                backbone = MnasNetConfig.from_dict(dict(backbone))
            except (MnasNetError, ValueError, TypeError) as error:
                raise DetectionError(f"bad backbone settings: {error}") from None
        return cls(**{**data, "backbone": backbone})


def _tap_names(config: DetectorConfig, backbone: MnasNet) -> list[str]:
    """The backbone maps a head reads: SSDLite the first stride-32 expansion and the last map (after the
    stride-8 map with ``stride8_map``); RetinaNet C3-C5."""
    info = {tap["name"]: tap for tap in backbone.feature_info}
    if config.head == "ssdlite":
        expand = [tap["name"] for tap in backbone.feature_info if tap["expanded"]]
        if not expand:
            raise DetectionError("SSDLite needs a strided block with an expansion layer (expand_ratio > 1) to tap")
        if not config.stride8_map:
            return [expand[0], "head"]
        if "stride8" not in info:
            raise DetectionError("stride8_map needs a backbone map at stride 8")
        return ["stride8", expand[0], "head"]
    names = ["stride8", "stride16", "stride32"]
    missing = [name for name in names if name not in info]
    if missing:
        strides = ", ".join(name for name in info if name.startswith("stride"))
        raise DetectionError(f"RetinaNet-FPN needs backbone maps at strides 8, 16 and 32; this one has {strides}")
    return names


class Detector(nn.Module):
    """A MnasNet backbone (without its classifier) and an SSDLite or RetinaNet-FPN head.

    Args:
        config: the detector's settings.
        backbone: a MnasNet to use (for example with ImageNet weights); its config must be
            ``config.backbone``. Its classifier is replaced, so pass a model you no longer need.
    """

    def __init__(self, config: DetectorConfig, backbone: MnasNet | None = None) -> None:
        super().__init__()
        if backbone is None:
            backbone = MnasNet(config.backbone)
        elif backbone.config != config.backbone:
            raise DetectionError("the backbone given does not match config.backbone")
        self.config = config
        self.tap_names = _tap_names(config, backbone)
        channels = [backbone.feature_channels[name] for name in self.tap_names]
        # Detection reads feature maps only: drop the classifier, and RetinaNet's unused 1280-channel head conv.
        backbone.dropout = nn.Identity()
        backbone.classifier = nn.Identity()
        if config.head == "retinanet":
            backbone.head = nn.Identity()
        self.backbone = backbone
        per_location = config.anchor_generator.num_anchors_per_location()
        if config.head == "ssdlite":
            self.head = SSDLite(channels, config.num_classes, per_location)
        else:
            self.head = RetinaNet(channels, config.num_classes, per_location[0])
        self.channels_last_input = False  # set by fuse(): oneDNN runs depthwise convolutions fastest channels-last
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.config.labels

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head outputs: ``cls_logits`` ``[B, N, num_classes]`` and ``bbox_regression`` ``[B, N, 4]``.

        ``images`` are normalised with ``config.mean`` and ``config.std``. The ``N`` predictions run map by
        map, row by row, anchor by anchor: the order of :func:`anchors_for`.
        """
        cls_logits, bbox_regression, _ = self.forward_with_sizes(images)
        return cls_logits, bbox_regression

    def forward_with_sizes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """:meth:`forward`, plus the ``(height, width)`` of each map the head predicted on."""
        if self.channels_last_input:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone.features(images)
        maps = self.head.feature_maps([features[name] for name in self.tap_names])
        cls_logits, bbox_regression = self.head.head(maps)
        return cls_logits, bbox_regression, [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]

    def anchors(self, image_size: Sequence[int], map_sizes: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[N, 4]`` pixel anchors for an input of ``(height, width)`` whose head maps have ``map_sizes``."""
        key = (tuple(image_size), tuple(tuple(size) for size in map_sizes))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = self.config.anchor_generator.generate(key[0], key[1])
        return self._anchor_cache[key]

    def loss(self, images: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The training loss: ``{"classification": ..., "bbox_regression": ...}`` (sum them to train).

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            targets: per image ``"boxes"`` (``[M, 4]`` pixel corners in the input, ``M`` may be 0) and
                ``"labels"`` (``[M]`` integers from 1 to ``num_classes - 1``; 0 is the background).
        """
        _check_images(images)
        _check_targets(targets, len(images), self.config.num_classes)
        cls_logits, bbox_regression, sizes = self.forward_with_sizes(images)
        anchors = self.anchors(images.shape[-2:], sizes).to(cls_logits.device)
        targets = [{"boxes": t["boxes"].to(anchors), "labels": t["labels"].to(torch.int64)} for t in targets]
        if self.config.head == "ssdlite":
            return ssd_loss(cls_logits, bbox_regression, anchors, targets)
        return retinanet_loss(cls_logits, bbox_regression, anchors, targets)

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        image_sizes: Sequence[Sequence[int]] | None = None,
        original_sizes: Sequence[Sequence[int]] | None = None,
    ) -> list[Detections]:
        """Detections per image: ``"boxes"`` (``[K, 4]`` pixel corners), ``"scores"`` and ``"labels"``, best first.

        Call ``model.eval()`` first. As torchvision's ``GeneralizedRCNNTransform.postprocess``: boxes are
        clipped to ``image_sizes`` (the resized image inside a padded input; default the whole input) and,
        with ``original_sizes``, scaled from ``image_sizes`` back to the images as they were before resizing.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            image_sizes: ``(height, width)`` per image of its content in the input.
            original_sizes: ``(height, width)`` per image before it was resized.
        """
        _check_images(images)
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        image_sizes = (
            _sizes(image_sizes, batch, "image_sizes") if image_sizes is not None else [(height, width)] * batch
        )
        cls_logits, bbox_regression, sizes = self.forward_with_sizes(images)
        anchors = self.anchors((height, width), sizes).to(cls_logits.device)
        settings = {
            "score_threshold": self.config.score_threshold,
            "nms_threshold": self.config.nms_threshold,
            "detections_per_image": self.config.detections_per_image,
        }
        if self.config.head == "ssdlite":
            detections = ssd_postprocess(
                cls_logits,
                bbox_regression,
                anchors,
                image_sizes,
                topk_per_class=self.config.topk_candidates,
                **settings,
            )
        else:
            per_level = self.config.anchor_generator.num_anchors_per_level(sizes)
            detections = retinanet_postprocess(
                cls_logits,
                bbox_regression,
                anchors,
                image_sizes,
                per_level,
                topk_per_level=self.config.topk_candidates,
                **settings,
            )
        if original_sizes is not None:
            original_sizes = _sizes(original_sizes, batch, "original_sizes")
            for detection, (h, w), (oh, ow) in zip(detections, image_sizes, original_sizes, strict=True):
                scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=detection["boxes"].dtype)
                detection["boxes"] = detection["boxes"] * scale.to(detection["boxes"].device)
        return detections

    def fuse(self, *, channels_last: bool | None = None) -> Detector:
        """An inference copy with every conv+BN pair folded (backbone and SSDLite layers).

        See :func:`mnasnet.fuse.fuse_model`; ``channels_last=None`` turns it on for CPU models.
        """
        from mnasnet.fuse import fuse_model

        return fuse_model(self, channels_last=channels_last)


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DetectionError(f"images must be a [B, 3, H, W] tensor, got {shape}")
    if not images.is_floating_point():
        raise DetectionError(f"images must be normalised floats, got {images.dtype}")


def _check_targets(targets: Any, batch: int, num_classes: int) -> None:
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence) or len(targets) != batch:
        raise DetectionError(f"targets must be a list of {batch} dicts (one per image)")
    for index, target in enumerate(targets):
        if not isinstance(target, Mapping) or not {"boxes", "labels"} <= set(target):
            raise DetectionError(f"target {index} must be a dict with 'boxes' and 'labels'")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise DetectionError(f"target {index}: boxes must be an [M, 4] tensor")
        if not isinstance(labels, torch.Tensor) or labels.shape != boxes.shape[:1]:
            raise DetectionError(f"target {index}: labels must be an [M] tensor, one per box")
        if labels.is_floating_point() or (labels.numel() and (labels.min() < 1 or labels.max() >= num_classes)):
            raise DetectionError(
                f"target {index}: labels must be integers from 1 to {num_classes - 1} (0 is background)"
            )
        if boxes.numel() and not (
            torch.isfinite(boxes).all() and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        ):
            raise DetectionError(f"target {index}: boxes must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1")


def _sizes(sizes: Any, batch: int, name: str) -> list[tuple[int, int]]:
    try:
        pairs = [(int(h), int(w)) for h, w in sizes]
    except (TypeError, ValueError):
        raise DetectionError(f"{name} must be (height, width) pairs") from None
    if len(pairs) != batch or any(h <= 0 or w <= 0 for h, w in pairs):
        raise DetectionError(f"{name} must hold {batch} positive (height, width) pairs, got {pairs}")
    return pairs


def feature_map_sizes(config: DetectorConfig, image_size: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The ``(height, width)`` of each map the head predicts on, from a shape-only run on the meta device."""
    height, width = _image_size(config, image_size)
    with torch.device("meta"):
        shell = Detector(config).eval()
    return shell.forward_with_sizes(torch.empty(1, 3, height, width, device="meta"))[2]


def _image_size(config: DetectorConfig, image_size: Sequence[int] | None) -> tuple[int, int]:
    if image_size is None:
        return config.size, config.size
    if len(image_size) != 2 or not all(_is_int_in(side, 1, MAX_SIZE) for side in image_size):
        raise DetectionError(f"image_size must be (height, width) up to {MAX_SIZE}, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def anchors_for(config: DetectorConfig, image_size: Sequence[int] | None = None) -> torch.Tensor:
    """The ``[N, 4]`` pixel anchors (x1, y1, x2, y2) the detector's ``N`` predictions are offsets from.

    ``image_size`` defaults to ``(config.size, config.size)``. ``config.anchor_generator.to_dict()`` names
    the same anchors as settings, for file metadata.
    """
    size = _image_size(config, image_size)
    return config.anchor_generator.generate(size, feature_map_sizes(config, size))


def create_detector(
    head: str = "ssdlite",
    *,
    arch: str | None = None,
    width_multiplier: float | None = None,
    blocks: Sequence[str] | None = None,
    num_classes: int = 91,
    size: int | None = None,
    backbone_weights: str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
    **settings: Any,
) -> Detector:
    """A detector on any MnasNet backbone, the backbone fresh or from classification weights.

    Args:
        head: ``"ssdlite"`` or ``"retinanet"``.
        arch: ``a1`` (the default), ``b1``, ``small``, ``d1``, ``d1_320``.
        width_multiplier: scales the backbone's filters.
        blocks: block strings of a custom backbone, instead of ``arch``.
        num_classes: class outputs, background included (91 for COCO's label ids).
        size: the input side (default 320 for SSDLite, 640 for RetinaNet).
        backbone_weights: a registry name or classification checkpoint (see
            :func:`mnasnet.create_model`); its classifier is dropped, and its normalisation kept.
        labels: class names, background first.
        **settings: ``score_threshold``, ``nms_threshold``, ``topk_candidates``, ``detections_per_image``,
            ``anchor_scales``, ``stride8_map``.
    """
    from mnasnet.factory import create_model

    if arch is not None and blocks is not None:
        raise DetectionError("give either arch or blocks, not both")
    if isinstance(blocks, str):
        blocks = [blocks]
    source = list(blocks) if blocks is not None else arch
    if source is None and backbone_weights is None:
        source = "a1"
    backbone = create_model(source, width_multiplier=width_multiplier, weights=backbone_weights)
    known = set(HEADS["ssdlite"]) - {"size"} | {"anchor_scales", "stride8_map"}
    unknown = set(settings) - known
    if unknown:
        raise DetectionError(f"unknown detector settings: {sorted(unknown)}")
    config = DetectorConfig(
        head=head,
        backbone=backbone.config,
        num_classes=num_classes,
        size=size,
        labels=tuple(labels) if labels is not None and not isinstance(labels, str) else labels,
        mean=backbone.preprocess.mean,
        std=backbone.preprocess.std,
        **settings,
    )
    return Detector(config, backbone.train())


# -- checkpoint files ---------------------------------------------------------------


def save_detector(model: Detector, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Writes ``model`` (atomically) as safetensors with the settings that rebuild it.

    The header (metadata key ``mnasnet_detector``) holds the config, the anchor settings and ``extra``
    (any JSON-serialisable provenance).
    """
    if not isinstance(model, Detector):
        raise CheckpointError(f"save_detector needs a Detector, got {type(model).__name__}")
    if getattr(model, "is_fused", False):
        raise CheckpointError("a fused detector has no BN layers to save; save the model it was fused from")
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "anchors": model.config.anchor_generator.to_dict(),
        "extra": dict(extra or {}),
    }
    try:
        metadata = {FORMAT_NAME: json.dumps(header)}
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"extra must be JSON-serialisable ({error})") from None
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return Path(path)


def _read_header(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    if FORMAT_NAME not in metadata:
        if "mnasnet" in metadata:
            raise CheckpointError(
                f"{path} is a MnasNet classification checkpoint, not a detector; "
                "load it with mnasnet.load_model, or pass it to create_detector(backbone_weights=...)"
            )
        raise CheckpointError(f"{path} is a safetensors file without mnasnet detector metadata")
    if len(metadata[FORMAT_NAME]) > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path} has a detector header over {MAX_HEADER_BYTES // 2**20} MiB; refusing it")
    try:
        header = json.loads(metadata[FORMAT_NAME])
    except (json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} has corrupt detector metadata ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} has corrupt detector metadata (not a detector header)")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path} has corrupt detector metadata (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer mnasnet (detector format {version})")
    return header


def read_detector_extra(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extra`` a detector checkpoint's header holds (provenance, QAT ranges), without reading its tensors.

    Raises:
        CheckpointError: the file is missing, not a detector checkpoint, or its header is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"detector checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = _read_header(path, handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    extra = header.get("extra")
    return extra if isinstance(extra, dict) else {}


def read_detector_config(path: str | os.PathLike) -> DetectorConfig:
    """The settings stored in a detector checkpoint, without reading its tensors."""
    return _open(Path(path))[0]


def _open(path: Path, read_tensors: bool = False) -> tuple[DetectorConfig, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"detector checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = _read_header(path, handle.metadata() or {})
            config = DetectorConfig.from_dict(header.get("config"))
            stored_anchors = header.get("anchors")
            if stored_anchors is not None and anchors_from_dict(stored_anchors) != config.anchor_generator:
                raise CheckpointError(f"{path} was written with other anchors than its {config.head} head uses")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()} if read_tensors else {}  # noqa: SIM118
    except CheckpointError:
        raise
    except DetectionError as error:
        raise CheckpointError(f"{path} has bad detector settings ({error})") from None
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} has corrupt detector metadata ({error})") from None
    return config, tensors


def load_detector(path: str | os.PathLike) -> Detector:
    """Rebuilds the detector stored by :func:`save_detector`, in eval mode.

    Raises:
        CheckpointError: the file is missing, corrupt, of another format, or its tensors do not fit
            the detector its header describes.
    """
    path = Path(path)
    config, tensors = _open(path, read_tensors=True)
    model = Detector(config)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing {len(missing)} tensors (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
    for name in sorted(set(expected) & set(tensors)):
        if expected[name].shape != tensors[name].shape or expected[name].dtype != tensors[name].dtype:
            problems.append(
                f"{name} is {tuple(tensors[name].shape)} {tensors[name].dtype}, "
                f"the detector expects {tuple(expected[name].shape)} {expected[name].dtype}"
            )
            break
    if problems:
        raise CheckpointError(f"{path} does not match the detector it describes: " + "; ".join(problems))
    model.load_state_dict(tensors)
    return model.eval()
