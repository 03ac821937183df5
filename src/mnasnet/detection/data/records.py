"""The one in-memory form of a detection dataset, and the accounting of bad annotations.

Both readers (COCO JSON, Pascal VOC XML) produce a :class:`DetectionData`: per image a
path, its size and its boxes (``xyxy`` float pixels, continuous coordinates: a box
covering pixel columns 0..9 is ``[0, 10]``) with their category ids, plus the category
list. Training labels are contiguous, ``1..K`` in category-id order; 0 is background.

Bad annotations are never trained on silently. A reader sends each offence to an
:class:`Audit`; by default the offending annotation or image is skipped and, at the end,
ONE warning line summarises the counts by reason::

    train.json: skipped 3 annotations (2 zero area, 1 unknown category) and 1 image (1 missing file)

With ``strict=True`` the first offence raises a :class:`~mnasnet.errors.DataError` naming it.

Boxes and the image border: a box reaching at most :data:`BORDER_TOLERANCE` pixels past the
border is clipped silently (annotation tools round; COCO has many such boxes). A box reaching
further out is clipped too and counted as "partly outside" (it was drawn for another image
size, or by a buggy tool: worth knowing, still usable). A box with no area left inside the
image is dropped ("outside image").
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections import Counter
from pathlib import Path, PurePath

import numpy as np

from mnasnet.errors import DataError

__all__ = [
    "BORDER_TOLERANCE",
    "MAX_ANNOTATIONS",
    "MAX_BOXES_PER_IMAGE",
    "MAX_CATEGORIES",
    "MAX_FILE_BYTES",
    "MAX_IMAGES",
    "AnnotationWarning",
    "Audit",
    "DetectionData",
    "DetectionRecord",
    "SkipReport",
    "check_box",
]

# Resource limits, checked before anything proportional to them is allocated. COCO
# train2017 (448 MB of JSON, 118k images, 860k boxes, 80 categories) fits far inside them.
MAX_FILE_BYTES = 2 * 2**30  # one annotation JSON
MAX_XML_BYTES = 4 * 2**20  # one VOC XML file (a real one is about 1 kB)
MAX_IMAGES = 5_000_000
MAX_ANNOTATIONS = 20_000_000
MAX_CATEGORIES = 100_000
MAX_BOXES_PER_IMAGE = 10_000  # COCO's most crowded image has fewer than 100

BORDER_TOLERANCE = 1.0  # pixels past the border clipped without a word

# Reasons, as they read in the warning line.
PARTLY_OUTSIDE = "partly outside image (clipped)"
OUTSIDE = "outside image"
ZERO_AREA = "zero or negative area"
NOT_FINITE = "NaN or infinite coordinate"
UNKNOWN_CATEGORY = "unknown category"
UNKNOWN_IMAGE = "unknown image id"
DUPLICATE_ANNOTATION = "duplicate annotation id"
BAD_ANNOTATION = "malformed annotation"
MISSING_FILE = "missing file"
NOT_A_FILE = "not a file"
OUTSIDE_FOLDER = "path outside the dataset folder"
DUPLICATE_IMAGE = "duplicate image id"
SIZE_MISMATCH = "size differs from file"
UNREADABLE_IMAGE = "unreadable image"
BAD_IMAGE = "malformed image entry"
MALFORMED_XML = "malformed XML"
TOO_MANY_BOXES = "too many boxes"


class AnnotationWarning(UserWarning):
    """Annotations or images were skipped as bad (one warning per dataset read)."""


@dataclasses.dataclass(frozen=True)
class DetectionRecord:
    """One image and its boxes.

    Attributes:
        image_id: the dataset's id for the image (COCO ``id``; VOC: the position in sorted order).
        path: the image file.
        width, height: the image size in pixels (after its EXIF orientation is applied).
        boxes: ``[N, 4]`` float32 ``x1, y1, x2, y2`` in pixels, inside the image, positive area.
        category_ids: ``[N]`` int64 dataset category ids (not training labels).
    """

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    category_ids: np.ndarray


@dataclasses.dataclass
class SkipReport:
    """What a reader skipped or clipped, by reason."""

    annotations: Counter = dataclasses.field(default_factory=Counter)
    images: Counter = dataclasses.field(default_factory=Counter)
    clipped: int = 0

    @property
    def total(self) -> int:
        return sum(self.annotations.values()) + sum(self.images.values()) + self.clipped

    def summary(self, source: str) -> str:
        """One line: ``train.json: skipped 3 annotations (2 zero area, 1 unknown category) and 1 image (...)``."""
        parts = []
        for counts, noun in ((self.annotations, "annotation"), (self.images, "image")):
            total = sum(counts.values())
            if total:
                reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))
                parts.append(f"{total} {noun}{'s' if total != 1 else ''} ({reasons})")
        text = f"skipped {' and '.join(parts)}" if parts else ""
        if self.clipped:
            clipped = f"clipped {self.clipped} box{'es' if self.clipped != 1 else ''} partly outside the image"
            text = f"{text}; {clipped}" if text else clipped
        return f"{source}: {text}"


class Audit:
    """Collects offences while a reader runs: counts them, or raises at the first under ``strict``."""

    def __init__(self, source: str, *, strict: bool) -> None:
        self.source, self.strict = source, strict
        self.report = SkipReport()

    def annotation(self, reason: str, where: str) -> None:
        self._offence(where, reason)
        self.report.annotations[reason] += 1

    def image(self, reason: str, where: str) -> None:
        self._offence(where, reason)
        self.report.images[reason] += 1

    def clipped(self, where: str) -> None:
        self._offence(where, PARTLY_OUTSIDE)
        self.report.clipped += 1

    def _offence(self, where: str, reason: str) -> None:
        if self.strict:
            raise DataError(f"{self.source}: {where}: {reason} (strict mode; strict=False skips and counts these)")

    def finish(self) -> SkipReport:
        """Emits the one summary warning, if anything was skipped, and returns the report."""
        if self.report.total:
            warnings.warn(self.report.summary(self.source), AnnotationWarning, stacklevel=3)
        return self.report


# ids are stored as int64 (numpy arrays, pycocotools); larger integers are malformed, not a crash
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def is_number(value: object) -> bool:
    """An int or float, not a bool; an int too large for a float (``1e400`` written out) is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) or abs(value) <= sys.float_info.max


def is_id(value: object) -> bool:
    """An integer id (not a bool) that fits in int64."""
    return isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX


def image_path(root: Path, name: str) -> Path | None:
    """``root / name`` for a relative ``name`` that stays inside ``root``; None for an absolute path or one
    whose ``..`` parts climb out (a dataset file must not make the reader open files elsewhere)."""
    relative = PurePath(name)
    if relative.is_absolute() or relative.anchor or "\x00" in name:
        return None
    depth = 0
    for part in relative.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return None
    return root / relative


def check_box(
    box: tuple[float, float, float, float], width: int, height: int, audit: Audit, where: str
) -> tuple[float, float, float, float] | None:
    """``box`` (``xyxy`` pixels) clipped to the image, or None after counting why it is unusable."""
    if not all(math.isfinite(v) for v in box):
        audit.annotation(NOT_FINITE, where)
        return None
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        audit.annotation(ZERO_AREA, where)
        return None
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if cx2 <= cx1 or cy2 <= cy1:
        audit.annotation(OUTSIDE, where)
        return None
    overshoot = max(-x1, -y1, x2 - width, y2 - height)
    if overshoot > BORDER_TOLERANCE:
        audit.clipped(where)
    return cx1, cy1, cx2, cy2


@dataclasses.dataclass
class DetectionData:
    """A detection dataset in memory: images with boxes, and the categories.

    Attributes:
        records: the usable images, in the file's order.
        categories: category id -> name, in id order.
        source: the file or folder read, for messages.
        report: what was skipped or clipped.
    """

    records: list[DetectionRecord]
    categories: dict[int, str]
    source: str = ""
    report: SkipReport = dataclasses.field(default_factory=SkipReport)

    def __post_init__(self) -> None:
        self.categories = dict(sorted(self.categories.items()))
        self._label_of = {category: label for label, category in enumerate(self.categories, start=1)}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        """K + 1: the categories plus background (label 0)."""
        return len(self.categories) + 1

    @property
    def class_names(self) -> list[str]:
        """Names by training label: ``class_names[label - 1]`` for labels 1..K."""
        return list(self.categories.values())

    def label_of(self, category_id: int) -> int:
        """The training label (1..K) of a dataset category id."""
        return self._label_of[category_id]

    def category_of(self, label: int) -> int:
        """The dataset category id of a training label (1..K), for writing COCO results."""
        return list(self.categories)[label - 1]

    def labels(self, record: DetectionRecord) -> np.ndarray:
        """``[N]`` int64 training labels 1..K of a record's boxes."""
        return np.array([self._label_of[int(c)] for c in record.category_ids], dtype=np.int64)


def make_record(image_id: int, path: Path, width: int, height: int, boxes: list, category_ids: list) -> DetectionRecord:
    return DetectionRecord(
        image_id=image_id,
        path=path,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        category_ids=np.asarray(category_ids, dtype=np.int64).reshape(-1),
    )


def image_size_on_disk(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` as :func:`mnasnet.data.images.load_image` will see it (EXIF rotation applied),
    read from the header only; None if the file is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_image_file(path: Path, width: int, height: int, audit: Audit, where: str, *, check_size: bool) -> bool:
    """True if the image file exists and (``check_size``) is ``width x height``; counts why not."""
    if not path.is_file():
        audit.image(NOT_A_FILE if path.exists() else MISSING_FILE, f"{where} ({path})")
        return False
    if not check_size:
        return True
    size = image_size_on_disk(path)
    if size is None:
        audit.image(UNREADABLE_IMAGE, f"{where} ({path})")
        return False
    if size != (width, height):
        audit.image(SIZE_MISMATCH, f"{where}: declared {width}x{height}, file {size[0]}x{size[1]}")
        return False
    return True


def check_file_size(path: Path, limit: int, what: str) -> None:
    """A DataError if ``path`` is missing or larger than ``limit`` bytes (checked before reading it)."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DataError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file")
    if size > limit:
        raise DataError(f"{what} {path} is {size:,} bytes; the limit is {limit:,} bytes")
