"""The built-in ``photos-search`` dataset: the search proxy's task, which of sixteen photographs a patch shows.

Like :mod:`mnasnet.data.photos` (whose ten colour photographs it reuses) plus six grey-scale
scikit-image pictures whose classes differ only in texture (camera, coins, moon, brick, grass,
gravel), so a network's capacity shows in its accuracy. Two choices make it a low-noise yardstick
for comparing architectures after a few epochs:

- a large validation split (100 patches per photo, 1,600 in all, against 400 in ``photos``);
- validation patches spread over the whole photo: each photo (shorter side scaled to 320) is cut
  into a grid of cells, a quarter of them chosen at random are held out, validation patches lie
  inside one held-out cell and no training patch overlaps any. In ``photos`` all validation patches
  of a class come from one stripe, so they are strongly correlated and a class tends to be won or
  lost as a whole, which makes its accuracy jump from seed to seed.

Each photo gives 160 training and 100 validation patches of 40 to 96 pixels, stored at 40x40.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnasnet.extras import require
from mnasnet.fileio import atomic_directory, cache_dir, writable_cache_dir

__all__ = ["SEARCH_PHOTO_CLASSES", "materialise_photos_search"]

VERSION = "photos-search-v1"
GREY_CLASSES = ("brick", "camera", "coins", "grass", "gravel", "moon")
SEARCH_PHOTO_CLASSES = tuple(
    sorted(
        (
            "astronaut", "cat", "china", "coffee", "flower", "hubble", "ihc", "motorcycle", "retina", "rocket",
            *GREY_CLASSES,
        )
    )
)  # fmt: skip
IMAGE_SIZE = 40
TRAIN_PER_PHOTO = 160
VAL_PER_PHOTO = 100
VAL_CELL_FRACTION = 0.25
_SHORT_SIDE = 320
_CELL = 96  # nominal grid cell size in pixels (cells stretch to tile the photo)
_PATCH_RANGE = (40, 96)


def _images() -> dict[str, np.ndarray]:
    from mnasnet.data.photos import _photos

    data = require("skimage.data", extra="train")
    images = _photos()
    for name in GREY_CLASSES:
        images[name] = getattr(data, name)()
    return images


def _cells(length: int) -> np.ndarray:
    """Cell edges along one side: ``length // _CELL`` cells tiling ``[0, length]``."""
    return np.linspace(0, length, max(2, length // _CELL) + 1).round().astype(int)


def _patches(image, rng: np.random.Generator) -> dict[str, list]:
    """Square crops of ``image`` (a PIL image): validation ones inside held-out grid cells, training ones outside."""
    from PIL import Image

    scale = _SHORT_SIDE / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    xs, ys = _cells(image.width), _cells(image.height)
    cells = [(x0, y0, x1, y1) for x0, x1 in zip(xs, xs[1:], strict=False) for y0, y1 in zip(ys, ys[1:], strict=False)]
    order = rng.permutation(len(cells))
    held_out = [cells[i] for i in order[: max(1, round(len(cells) * VAL_CELL_FRACTION))]]
    patches: dict[str, list] = {"train": [], "val": []}
    while len(patches["val"]) < VAL_PER_PHOTO:
        x0, y0, x1, y1 = held_out[int(rng.integers(len(held_out)))]
        size = int(rng.integers(_PATCH_RANGE[0], min(_PATCH_RANGE[1], x1 - x0, y1 - y0) + 1))
        left, top = int(rng.integers(x0, x1 - size + 1)), int(rng.integers(y0, y1 - size + 1))
        patches["val"].append(image.crop((left, top, left + size, top + size)))
    while len(patches["train"]) < TRAIN_PER_PHOTO:
        size = int(rng.integers(_PATCH_RANGE[0], _PATCH_RANGE[1] + 1))
        left, top = int(rng.integers(0, image.width - size + 1)), int(rng.integers(0, image.height - size + 1))
        if any(left < x1 and left + size > x0 and top < y1 and top + size > y0 for x0, y0, x1, y1 in held_out):
            continue  # overlaps a held-out cell
        patches["train"].append(image.crop((left, top, left + size, top + size)))
    return {
        split: [crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC) for crop in crops]
        for split, crops in patches.items()
    }


def materialise_photos_search() -> Path:
    """Writes the dataset once to ``cache_dir()/datasets/photos-search-v1`` (train/ and val/ class folders)."""
    target = cache_dir() / "datasets" / VERSION
    if (target / "val").is_dir():
        return target
    writable_cache_dir("datasets")
    from PIL import Image

    images = _images()
    rng = np.random.default_rng(0)
    with atomic_directory(target) as temp:
        for name in SEARCH_PHOTO_CLASSES:
            image = Image.fromarray(
                np.ascontiguousarray(images[name][..., :3] if images[name].ndim == 3 else images[name])
            )
            for split, crops in _patches(image.convert("RGB"), rng).items():
                folder = temp / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for index, crop in enumerate(crops):
                    crop.save(folder / f"{index:03d}.png")
    return target
