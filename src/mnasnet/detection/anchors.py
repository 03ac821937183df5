"""Anchors as data: SSD default boxes and RetinaNet grid anchors.

Both follow torchvision's ``anchor_utils.py`` (``DefaultBoxGenerator`` and ``AnchorGenerator``)
to the last rounding step. An anchor setting is a frozen dataclass that turns an image size and
the feature-map sizes into one ``[N, 4]`` tensor of ``(x1, y1, x2, y2)`` pixel boxes, in the order
the heads emit their predictions (level by level, row by row, anchor by anchor). ``to_dict`` and
:func:`anchors_from_dict` carry the setting through JSON, so an exported file can name its anchors
(or ship the tensor itself) and a runtime can decode boxes without PyTorch modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from mnasnet.detection import DetectionError

Size = tuple[int, int]  # (height, width)

SSDLITE_ASPECT_RATIOS = ((2.0, 3.0),) * 6
RETINANET_BASE_SIZES = (32, 64, 128, 256, 512)
# torchvision truncates the octave scales to integers: 32 -> (32, 40, 50)
RETINANET_SIZES = tuple((size, int(size * 2 ** (1.0 / 3)), int(size * 2 ** (2.0 / 3))) for size in RETINANET_BASE_SIZES)
RETINANET_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(RETINANET_SIZES)


def _check_sizes(image_size: Sequence[int], feature_map_sizes: Sequence[Sequence[int]], levels: int) -> None:
    if len(image_size) != 2 or min(image_size) <= 0:
        raise DetectionError(f"image_size must be (height, width) with positive sides, got {tuple(image_size)}")
    if len(feature_map_sizes) != levels:
        raise DetectionError(f"expected {levels} feature-map sizes, got {len(feature_map_sizes)}")
    for size in feature_map_sizes:
        if len(size) != 2 or min(size) <= 0:
            raise DetectionError(f"feature-map sizes must be (height, width) with positive sides, got {tuple(size)}")


@dataclass(frozen=True)
class DefaultBoxes:
    """SSD default boxes, torchvision's ``DefaultBoxGenerator``; the defaults are SSDLite's.

    Per location: ``(s, s)``, ``(s', s')`` with ``s' = sqrt(s_k s_k+1)``, then ``(s sqrt(a), s / sqrt(a))``
    and its swap for every aspect ratio ``a``; scales run linearly from ``min_ratio`` to ``max_ratio``
    (plus 1.0) unless ``scales`` is given. ``clip`` clamps the relative widths and heights to [0, 1]
    (not the boxes: torchvision's boxes may leave the image).
    """

    aspect_ratios: tuple[tuple[float, ...], ...] = SSDLITE_ASPECT_RATIOS
    min_ratio: float = 0.2
    max_ratio: float = 0.95
    scales: tuple[float, ...] | None = None
    steps: tuple[int, ...] | None = None
    clip: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "aspect_ratios", tuple(tuple(float(a) for a in r) for r in self.aspect_ratios))
        if not self.aspect_ratios:
            raise DetectionError("DefaultBoxes needs aspect ratios for at least one feature map")
        if self.scales is not None:
            object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
            if len(self.scales) != self.levels + 1:
                raise DetectionError(f"scales needs {self.levels + 1} values (one per map plus one), got {self.scales}")
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
            if len(self.steps) != self.levels:
                raise DetectionError(f"steps needs {self.levels} values, got {self.steps}")
        ratios_ok = all(isinstance(v, int | float) and math.isfinite(v) for v in (self.min_ratio, self.max_ratio))
        if not (ratios_ok and 0 < self.min_ratio <= self.max_ratio):
            raise DetectionError(f"need 0 < min_ratio <= max_ratio, got {self.min_ratio!r}, {self.max_ratio!r}")
        if any(a <= 0 for ratios in self.aspect_ratios for a in ratios):
            raise DetectionError(f"aspect ratios must be positive, got {self.aspect_ratios}")

    @property
    def levels(self) -> int:
        return len(self.aspect_ratios)

    def scale_values(self) -> tuple[float, ...]:
        """The ``levels + 1`` box scales, relative to the image side."""
        if self.scales is not None:
            return self.scales
        if self.levels == 1:
            return (self.min_ratio, self.max_ratio)
        span = self.max_ratio - self.min_ratio  # written as torchvision writes it: the floats agree bit for bit
        return tuple(self.min_ratio + span * k / (self.levels - 1.0) for k in range(self.levels)) + (1.0,)

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(ratios) for ratios in self.aspect_ratios]

    def _wh_pairs(self, level: int) -> torch.Tensor:
        scales = self.scale_values()
        s_k = scales[level]
        s_prime_k = math.sqrt(scales[level] * scales[level + 1])
        pairs = [[s_k, s_k], [s_prime_k, s_prime_k]]
        for ratio in self.aspect_ratios[level]:
            root = math.sqrt(ratio)
            pairs.extend([[s_k * root, s_k / root], [s_k / root, s_k * root]])
        pairs = torch.as_tensor(pairs, dtype=torch.float32)
        return pairs.clamp(min=0, max=1) if self.clip else pairs

    def generate(
        self,
        image_size: Sequence[int],
        feature_map_sizes: Sequence[Sequence[int]],
        *,
        fmt: str = "xyxy",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Default boxes for one image size.

        Args:
            image_size: ``(height, width)`` of the network input.
            feature_map_sizes: ``(height, width)`` of each head's feature map, first level first.
            fmt: ``"xyxy"``: pixel corners, as torchvision's generator returns them;
                ``"cxcywh"``: centre and size relative to the image, before scaling to pixels.

        Returns:
            ``[N, 4]`` boxes, ``N = sum(h * w * anchors_per_location)``.
        """
        _check_sizes(image_size, feature_map_sizes, self.levels)
        if fmt not in ("xyxy", "cxcywh"):
            raise DetectionError(f"fmt must be 'xyxy' or 'cxcywh', got {fmt!r}")
        height, width = int(image_size[0]), int(image_size[1])
        boxes = []
        for level, (rows, cols) in enumerate(feature_map_sizes):
            if self.steps is not None:
                y_cells, x_cells = height / self.steps[level], width / self.steps[level]
            else:
                y_cells, x_cells = rows, cols
            centre_x = ((torch.arange(0, cols) + 0.5) / x_cells).to(torch.float32)
            centre_y = ((torch.arange(0, rows) + 0.5) / y_cells).to(torch.float32)
            grid_y, grid_x = torch.meshgrid(centre_y, centre_x, indexing="ij")
            pairs = self._wh_pairs(level)
            centres = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)
            centres = centres.repeat_interleave(len(pairs), dim=0)
            boxes.append(torch.cat((centres, pairs.repeat(rows * cols, 1)), dim=1))
        cxcywh = torch.cat(boxes, dim=0)
        if fmt == "xyxy":
            image_wh = torch.tensor([width, height])
            cxcywh = torch.cat(
                [(cxcywh[:, :2] - 0.5 * cxcywh[:, 2:]) * image_wh, (cxcywh[:, :2] + 0.5 * cxcywh[:, 2:]) * image_wh],
                dim=-1,
            )
        return cxcywh.to(dtype=dtype, device=device)

    def to_dict(self) -> dict:
        return {"kind": "ssd_default_boxes", **_lists(asdict(self))}


@dataclass(frozen=True)
class GridAnchors:
    """Anchors tiled on a grid, torchvision's ``AnchorGenerator``; the defaults are RetinaNet's.

    Per level, every ``(ratio, size)`` pair gives a zero-centred box of width ``size / sqrt(ratio)`` and
    height ``size * sqrt(ratio)`` rounded to whole pixels, shifted to ``(j * stride_x, i * stride_y)``
    with ``stride = image_side // map_side`` (the top-left corner of each cell, as torchvision does).
    """

    sizes: tuple[tuple[float, ...], ...] = RETINANET_SIZES
    aspect_ratios: tuple[tuple[float, ...], ...] = RETINANET_ASPECT_RATIOS

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(tuple(s) for s in self.sizes))
        object.__setattr__(self, "aspect_ratios", tuple(tuple(float(a) for a in r) for r in self.aspect_ratios))
        if not self.sizes or len(self.sizes) != len(self.aspect_ratios):
            raise DetectionError(
                f"GridAnchors needs one size list and one ratio list per level, "
                f"got {len(self.sizes)} and {len(self.aspect_ratios)}"
            )
        if any(s <= 0 for sizes in self.sizes for s in sizes) or any(
            a <= 0 for ratios in self.aspect_ratios for a in ratios
        ):
            raise DetectionError(f"anchor sizes and ratios must be positive, got {self.sizes}, {self.aspect_ratios}")

    @property
    def levels(self) -> int:
        return len(self.sizes)

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios, strict=True)]

    def num_anchors_per_level(self, feature_map_sizes: Sequence[Sequence[int]]) -> list[int]:
        """How many anchors each level holds, to split head outputs level by level."""
        per_location = self.num_anchors_per_location()
        return [rows * cols * n for (rows, cols), n in zip(feature_map_sizes, per_location, strict=True)]

    def _cell_anchors(self, level: int) -> torch.Tensor:
        sizes = torch.as_tensor(self.sizes[level], dtype=torch.float32)
        ratios = torch.as_tensor(self.aspect_ratios[level], dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)  # ratio is height / width
        w_ratios = 1 / h_ratios
        widths = (w_ratios[:, None] * sizes[None, :]).view(-1)
        heights = (h_ratios[:, None] * sizes[None, :]).view(-1)
        return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()

    def generate(
        self,
        image_size: Sequence[int],
        feature_map_sizes: Sequence[Sequence[int]],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Anchors for one image size: ``[N, 4]`` pixel corners, level by level.

        Args:
            image_size: ``(height, width)`` of the network input (after padding).
            feature_map_sizes: ``(height, width)`` of each level's feature map, finest first.
        """
        _check_sizes(image_size, feature_map_sizes, self.levels)
        height, width = int(image_size[0]), int(image_size[1])
        anchors = []
        for level, (rows, cols) in enumerate(feature_map_sizes):
            stride_y, stride_x = height // rows, width // cols
            shifts_x = torch.arange(0, cols, dtype=torch.int64) * stride_x
            shifts_y = torch.arange(0, rows, dtype=torch.int64) * stride_y
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            cell = self._cell_anchors(level).to(dtype)
            anchors.append((shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4))
        return torch.cat(anchors, dim=0).to(dtype=dtype, device=device)

    def to_dict(self) -> dict:
        return {"kind": "grid_anchors", **_lists(asdict(self))}


def _lists(fields: dict) -> dict:
    """Tuples to lists, so the dict is plain JSON."""

    def convert(value):
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return {key: convert(value) for key, value in fields.items()}


_KINDS = {"ssd_default_boxes": DefaultBoxes, "grid_anchors": GridAnchors}


def anchors_from_dict(data: Mapping) -> DefaultBoxes | GridAnchors:
    """Rebuilds an anchor setting from :meth:`DefaultBoxes.to_dict` or :meth:`GridAnchors.to_dict`."""
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in _KINDS:
        raise DetectionError(f"unknown anchor kind {kind!r}; expected one of {sorted(_KINDS)}")
    try:
        return _KINDS[kind](**fields)
    except TypeError as error:
        raise DetectionError(f"bad {kind} anchor settings {fields}: {error}") from None
