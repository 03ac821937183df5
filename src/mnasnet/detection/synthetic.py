"""``faces-coins``: a built-in detection dataset made from real photographs, written as COCO JSON.

No real detection dataset ships inside a package we can install, so this one is generated:
real objects pasted onto real photographs, deterministically (the same seed and library
versions give the same bytes).

- objects, 2 classes: ``face``, the 100 face crops of scikit-image's ``lfw_subset()``
  (Labeled Faces in the Wild, 25x25 grey), tinted; ``coin``, the 24 coins of
  ``skimage.data.coins()``, cut out along their outline (Otsu-marked watershed on the Sobel
  edges, holes filled) and tinted. Train and val use different faces and coins.
- backgrounds: random crops of scikit-image's photographs and textures (coffee, chelsea,
  rocket, brick, grass, gravel, Hubble deep field, immunohistochemistry) and scikit-learn's
  sample images (china, flower); photographs with faces or coins in them are not used.
- distractors, never annotated: the 100 non-face crops of ``lfw_subset()``, tinted like the
  objects, and rectangular or round patches of other photographs and textures.
- object sides from ``min_object_size`` to ``max_object_size`` pixels (log-uniform, 16-160 by
  default), overlapping each other by at most ``max_overlap`` of the smaller box; boxes are
  tight to the pasted pixels (a coin's box is its outline's), in continuous pixel coordinates.

The folder holds ``train.json``, ``val.json`` (COCO: ``images``, ``annotations``, ``categories``,
plus ``distractors``, the boxes of the unannotated pastes, for tests) and ``images/{train,val}/``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mnasnet.errors import DataError
from mnasnet.extras import require
from mnasnet.fileio import atomic_directory, writable_cache_dir

__all__ = [
    "BUILTIN_DETECTION_DATASETS",
    "CLASSES",
    "SyntheticSettings",
    "generate_faces_coins",
    "render_image",
    "resolve_detection_dataset",
]

CLASSES = ("face", "coin")  # category ids 1 and 2
BUILTIN_DETECTION_DATASETS = ("faces-coins",)
_VERSION = "v1"  # bump when the generator's output changes: it names the cache folder
_EXTRA = "detection"

_SKIN_TINTS = ((1.0, 0.86, 0.74), (0.93, 0.75, 0.62), (0.8, 0.62, 0.5), (0.62, 0.47, 0.38), (1.0, 1.0, 1.0))
_METAL_TINTS = ((1.0, 0.72, 0.48), (0.94, 0.95, 1.0), (1.0, 0.86, 0.45), (0.82, 0.64, 0.45), (1.0, 1.0, 1.0))


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    """What ``faces-coins`` is made of; the defaults are the built-in dataset."""

    train_images: int = 1000
    val_images: int = 200
    image_size: int = 320
    min_object_size: int = 16
    max_object_size: int = 160
    max_objects: int = 6
    max_distractors: int = 3
    max_overlap: float = 0.2
    empty_fraction: float = 0.05  # images with no object at all
    seed: int = 0
    image_format: str = "jpg"  # "jpg" (quality 92) or "png" (lossless, larger)
    objects: bool = True  # False: backgrounds and distractors only (tests compare the two)
    distractors: bool = True

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be from 32 to 2048, got {self.image_size}")
        if not 4 <= self.min_object_size <= self.max_object_size <= self.image_size:
            raise ValueError(
                f"need 4 <= min_object_size <= max_object_size <= image_size, got "
                f"{self.min_object_size}, {self.max_object_size}, {self.image_size}"
            )
        if self.train_images < 0 or self.val_images < 0 or self.max_objects < 1 or self.max_distractors < 0:
            raise ValueError("image, object and distractor counts must not be negative")
        if not 0.0 <= self.max_overlap < 1.0 or self.image_format not in ("jpg", "png"):
            raise ValueError(f"bad max_overlap {self.max_overlap} or image_format {self.image_format!r}")


_BUILTIN_SETTINGS = SyntheticSettings()

# -- sources -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Sources:
    faces: np.ndarray  # [100, 25, 25] uint8
    non_faces: np.ndarray  # [100, 25, 25] uint8
    coins: list[tuple[np.ndarray, np.ndarray]]  # (grey crop, bool outline mask), 24 of them
    backgrounds: list[np.ndarray]  # HxWx3 or HxW uint8
    textures: list[np.ndarray]  # for distractor patches


@functools.lru_cache(maxsize=1)
def _sources() -> _Sources:
    data = require("skimage.data", extra=_EXTRA)
    datasets = require("sklearn.datasets", extra=_EXTRA)
    lfw = np.round(data.lfw_subset() * 255).astype(np.uint8)  # 100 faces, then 100 non-faces
    photos = [data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field(), data.immunohistochemistry()]
    textures = [data.brick(), data.grass(), data.gravel()]
    samples = list(datasets.load_sample_images().images)  # china, flower
    backgrounds = photos + textures + samples
    return _Sources(
        faces=lfw[:100],
        non_faces=lfw[100:],
        coins=coin_cutouts(),
        backgrounds=backgrounds,
        textures=backgrounds + [data.text(), data.page(), data.moon(), data.clock()],
    )


def coin_cutouts() -> list[tuple[np.ndarray, np.ndarray]]:
    """The 24 coins of ``skimage.data.coins()``: ``(grey crop, outline mask)`` in reading order.

    The scikit-image gallery's segmentation: watershed of the Sobel edge map from markers on
    the dark background (< 30) and the bright coins (> 150), holes filled, specks removed.
    """
    data = require("skimage.data", extra=_EXTRA)
    filters = require("skimage.filters", extra=_EXTRA)
    measure = require("skimage.measure", extra=_EXTRA)
    segmentation = require("skimage.segmentation", extra=_EXTRA)
    from scipy import ndimage

    image = data.coins()
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[image < 30], markers[image > 150] = 1, 2
    coins = ndimage.binary_fill_holes(segmentation.watershed(filters.sobel(image), markers) == 2)
    regions = [region for region in measure.regionprops(measure.label(coins)) if region.area > 200]
    if len(regions) != 24:  # the photograph has 24 coins: anything else means scikit-image changed it
        raise DataError(f"expected 24 coins in skimage.data.coins(), segmented {len(regions)}")
    cutouts = []
    for region in regions:
        top, left, bottom, right = region.bbox
        cutouts.append((image[top:bottom, left:right].copy(), region.image.copy()))
    return cutouts


# -- drawing -----------------------------------------------------------------------------


def _resize(pixels: np.ndarray, width: int, height: int, resample=Image.BICUBIC) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height), resample))


def _tinted(grey: np.ndarray, tints, rng: np.random.Generator) -> np.ndarray:
    """A grey patch with random contrast, brightness and a colour tint, as HxWx3 uint8."""
    contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(-0.12, 0.12)
    tint = np.asarray(tints[rng.integers(len(tints))], dtype=np.float64)
    values = np.clip((grey / 255.0 - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)
    return np.round(values[..., None] * tint * 255.0).astype(np.uint8)


def _as_rgb(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if pixels.ndim == 3:
        return pixels[..., :3]
    return _tinted(pixels, _SKIN_TINTS + _METAL_TINTS, rng)


def _random_crop(source: np.ndarray, width: int, height: int, rng: np.random.Generator, min_fraction: float):
    """A crop of random position and scale with the aspect ratio of ``width x height``, resized to it."""
    source_height, source_width = source.shape[:2]
    fraction = rng.uniform(min_fraction, 1.0)
    aspect = width / height
    crop_height = max(1, min(source_height, round(min(source_height, source_width / aspect) * fraction)))
    crop_width = max(1, min(source_width, round(crop_height * aspect)))
    top = rng.integers(0, source_height - crop_height + 1)
    left = rng.integers(0, source_width - crop_width + 1)
    return _resize(source[top : top + crop_height, left : left + crop_width], width, height, Image.BILINEAR)


def _side(settings: SyntheticSettings, rng: np.random.Generator) -> int:
    low, high = np.log(settings.min_object_size), np.log(settings.max_object_size)
    return int(round(np.exp(rng.uniform(low, high))))


def _place(width: int, height: int, size: int, placed: list, max_overlap: float, rng, tries: int = 30):
    """A top-left corner for a ``width x height`` paste overlapping each placed box by at most
    ``max_overlap`` of the smaller one; None if none was found."""
    for _ in range(tries):
        x, y = int(rng.integers(0, size - width + 1)), int(rng.integers(0, size - height + 1))
        if all(_overlap((x, y, x + width, y + height), box) <= max_overlap for box in placed):
            return x, y
    return None


def _overlap(box, other) -> float:
    width = min(box[2], other[2]) - max(box[0], other[0])
    height = min(box[3], other[3]) - max(box[1], other[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
    return width * height / smaller


def _paste(canvas: np.ndarray, patch: np.ndarray, mask: np.ndarray | None, x: int, y: int) -> None:
    height, width = patch.shape[:2]
    region = canvas[y : y + height, x : x + width]
    if mask is None:
        region[...] = patch
    else:
        region[mask] = patch[mask]


def _distractor(sources: _Sources, settings, rng) -> tuple[np.ndarray, np.ndarray | None, str]:
    side = _side(settings, rng)
    height = max(4, min(settings.image_size, round(side * rng.uniform(0.75, 1.33))))
    kind = ("non-face", "patch", "disc")[rng.integers(3)]
    if kind == "non-face":
        grey = _resize(sources.non_faces[rng.integers(len(sources.non_faces))], side, height)
        return _tinted(grey, _SKIN_TINTS + _METAL_TINTS, rng), None, kind
    texture = sources.textures[rng.integers(len(sources.textures))]
    patch = _as_rgb(_random_crop(texture, side, height, rng, 0.05), rng)
    if kind == "patch":
        return patch, None, kind
    rows, cols = np.ogrid[:height, :side]
    disc = ((rows + 0.5 - height / 2) / (height / 2)) ** 2 + ((cols + 0.5 - side / 2) / (side / 2)) ** 2 <= 1.0
    return patch, disc, kind


def _object(sources: _Sources, members: dict, settings, rng):
    """``(patch, mask or None, category id, tight box relative to the patch)``."""
    category = int(rng.integers(len(CLASSES))) + 1
    side = _side(settings, rng)
    if category == 1:
        face = sources.faces[members["faces"][rng.integers(len(members["faces"]))]]
        height = min(settings.max_object_size, max(settings.min_object_size, round(side * rng.uniform(0.95, 1.2))))
        return _tinted(_resize(face, side, height), _SKIN_TINTS, rng), None, category, (0, 0, side, height)
    grey, outline = sources.coins[members["coins"][rng.integers(len(members["coins"]))]]
    scale = side / max(grey.shape)
    width, height = max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))
    mask = _resize(outline.astype(np.uint8) * 255, width, height, Image.BILINEAR) >= 128
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return _tinted(_resize(grey, width, height), _METAL_TINTS, rng), mask, category, box


def _members(split: str) -> dict:
    """Which faces and coins a split draws from: val's are never seen in training."""
    val = split == "val"
    return {
        "faces": list(range(80, 100)) if val else list(range(80)),
        "coins": [i for i in range(24) if (i % 5 == 4) == val],
    }


def render_image(settings: SyntheticSettings, split: str, index: int):
    """One image: ``(HxWx3 uint8, [(category, xywh box)], [(kind, xywh box)] of distractors)``.

    Background, distractors and objects draw from three separate random streams, so turning
    distractors or objects off leaves the rest of the image as it was.
    """
    sources, size = _sources(), settings.image_size
    stream = np.random.SeedSequence([settings.seed, ("train", "val").index(split), index])
    background_rng, distractor_rng, object_rng = (np.random.default_rng(s) for s in stream.spawn(3))

    backdrop = sources.backgrounds[background_rng.integers(len(sources.backgrounds))]
    canvas = _as_rgb(_random_crop(backdrop, size, size, background_rng, 0.35), background_rng).copy()
    if background_rng.random() < 0.5:
        canvas = canvas[:, ::-1].copy()

    distractors = []
    for _ in range(distractor_rng.integers(0, settings.max_distractors + 1) if settings.distractors else 0):
        patch, mask, kind = _distractor(sources, settings, distractor_rng)
        height, width = patch.shape[:2]
        x, y = int(distractor_rng.integers(0, size - width + 1)), int(distractor_rng.integers(0, size - height + 1))
        _paste(canvas, patch, mask, x, y)
        distractors.append((kind, [float(x), float(y), float(width), float(height)]))

    objects, placed = [], []
    count = int(object_rng.integers(1, settings.max_objects + 1))
    if object_rng.random() < settings.empty_fraction:
        count = 0
    members = _members(split)
    for _ in range(count if settings.objects else 0):
        made = _object(sources, members, settings, object_rng)
        if made is None:
            continue
        patch, mask, category, (bx1, by1, bx2, by2) = made
        height, width = patch.shape[:2]
        corner = _place(width, height, size, placed, settings.max_overlap, object_rng)
        if corner is None:
            continue
        x, y = corner
        _paste(canvas, patch, mask, x, y)
        placed.append((x, y, x + width, y + height))
        objects.append((category, [float(x + bx1), float(y + by1), float(bx2 - bx1), float(by2 - by1)]))
    return canvas, objects, distractors


# -- writing -----------------------------------------------------------------------------


def _write_split(folder: Path, settings: SyntheticSettings, split: str, count: int) -> None:
    image_folder = folder / "images" / split
    image_folder.mkdir(parents=True, exist_ok=True)
    images, annotations, distractors = [], [], []
    for index in range(count):
        pixels, objects, pasted = render_image(settings, split, index)
        name = f"{index:06d}.{settings.image_format}"
        image = Image.fromarray(pixels)
        if settings.image_format == "jpg":
            image.save(image_folder / name, quality=92)
        else:
            image.save(image_folder / name)
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": f"images/{split}/{name}", "width": pixels.shape[1], "height": pixels.shape[0]}
        )
        for category, bbox in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
        distractors.extend({"image_id": image_id, "kind": kind, "bbox": bbox} for kind, bbox in pasted)
    document = {
        "info": {
            "description": "faces-coins: LFW faces and skimage coins pasted on skimage/sklearn photographs",
            "version": _VERSION,
            "settings": dataclasses.asdict(settings),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(CLASSES, 1)],
        "distractors": distractors,
    }
    (folder / f"{split}.json").write_text(json.dumps(document, separators=(",", ":")))


def generate_faces_coins(folder: str | os.PathLike, settings: SyntheticSettings | None = None) -> Path:
    """Writes the dataset into ``folder`` (which must not exist yet), atomically.

    Everything is written to a temporary folder beside it and renamed into place, so an
    interrupted run leaves no half-written dataset.

    Raises:
        DataError: ``folder`` already exists.
        MissingDependencyError: scikit-image or scikit-learn is not installed.
    """
    settings = settings or SyntheticSettings()
    folder = Path(folder)
    if folder.exists():
        raise DataError(f"{folder} already exists; give a new folder for the generated dataset")
    _write_dataset(folder, settings)
    return folder


def _write_dataset(folder: Path, settings: SyntheticSettings) -> None:
    _sources()  # a missing package fails here, before any folder is made
    with atomic_directory(folder) as temp:
        _write_split(temp, settings, "train", settings.train_images)
        _write_split(temp, settings, "val", settings.val_images)


def resolve_detection_dataset(name_or_path: str | os.PathLike) -> Path:
    """The folder (holding ``train.json`` and ``val.json``) of a detection dataset given by folder or built-in name.

    The built-in ``faces-coins`` is generated once into ``cache_dir()/datasets/faces-coins-v1``;
    processes racing to make it are safe (one folder wins whole).

    Raises:
        DataError: not a built-in name, and not a folder with ``train.json`` and ``val.json``.
    """
    text = str(name_or_path)
    if text in BUILTIN_DETECTION_DATASETS and not Path(text).exists():
        target = writable_cache_dir("datasets") / f"{text}-{_VERSION}"
        if not (target / "val.json").is_file():
            _write_dataset(target, _BUILTIN_SETTINGS)
        return target
    folder = Path(text).expanduser()
    missing = [name for name in ("train.json", "val.json") if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"detection dataset not found: {folder} needs {' and '.join(missing)} (COCO format), "
            f"or give a built-in dataset: {', '.join(BUILTIN_DETECTION_DATASETS)}"
        )
    return folder
