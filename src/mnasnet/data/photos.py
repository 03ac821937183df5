"""The built-in ``photos`` dataset: which of ten real photographs a small patch was cut from.

The photographs ship inside the scikit-image and scikit-learn wheels (astronaut, coffee, cat, rocket,
motorcycle, Hubble deep field, immunohistochemistry, retina; scikit-learn's china and flower), so the
set needs no download. Each photo gives 200 patches of 48 to 112 pixels (after scaling its shorter
side to 320), stored at 40x40: 160 for ``train/`` and 40 for ``val/``. The validation patches come
from a vertical stripe of the photo (a fifth of its width) that no training patch overlaps, so the
network must learn each photo's colours and textures, not memorise pixels.

Why it is harder than ``digits``, and why int8 shows on it: ``digits`` is nearly binary strokes that a
small network classifies at ~98%, so quantisation noise rarely flips a prediction. Here classes differ
in colour balance and fine texture, accuracy is well below saturation, and the decisions rest on small
activation differences: the rounding of a low-width, depthwise-heavy network (MnasNet-small x0.35,
whose folded depthwise kernels have per-channel ranges spanning orders of magnitude) moves them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnasnet.extras import require
from mnasnet.fileio import atomic_directory, cache_dir, writable_cache_dir

__all__ = ["PHOTO_CLASSES", "materialise_photos"]

VERSION = "photos-v1"
PHOTO_CLASSES = (
    "astronaut", "cat", "china", "coffee", "flower", "hubble", "ihc", "motorcycle", "retina", "rocket",
)  # fmt: skip
IMAGE_SIZE = 40  # stored size: random 32-pixel training crops stay meaningful
PATCHES_PER_PHOTO = 200
VAL_FRACTION = 0.2
_SHORT_SIDE = 320
_PATCH_RANGE = (48, 112)


def _photos() -> dict[str, np.ndarray]:
    data = require("skimage.data", extra="train")
    sample_images = require("sklearn.datasets").load_sample_images
    china, flower = sample_images().images
    return {
        "astronaut": data.astronaut(),
        "cat": data.chelsea(),
        "china": china,
        "coffee": data.coffee(),
        "flower": flower,
        "hubble": data.hubble_deep_field(),
        "ihc": data.immunohistochemistry(),
        "motorcycle": data.stereo_motorcycle()[0],
        "retina": data.retina(),
        "rocket": data.rocket(),
    }


def _patches(image, rng: np.random.Generator) -> dict[str, list]:
    """``PATCHES_PER_PHOTO`` square crops of ``image`` (a PIL image), split by a held-out vertical stripe."""
    from PIL import Image

    scale = _SHORT_SIDE / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    width, height = image.size
    stripe = round(width * VAL_FRACTION)
    stripe_left = int(rng.integers(0, width - stripe + 1))
    wanted = {"val": round(PATCHES_PER_PHOTO * VAL_FRACTION)}
    wanted["train"] = PATCHES_PER_PHOTO - wanted["val"]
    patches: dict[str, list] = {"train": [], "val": []}
    while any(len(patches[split]) < count for split, count in wanted.items()):
        want_val = len(patches["val"]) < wanted["val"]
        size = int(rng.integers(_PATCH_RANGE[0], _PATCH_RANGE[1] + 1))
        if want_val:
            size = min(size, stripe)
            left = stripe_left + int(rng.integers(0, stripe - size + 1))
        else:
            left = int(rng.integers(0, width - size + 1))
            if left + size > stripe_left and left < stripe_left + stripe:
                continue  # overlaps the validation stripe
        top = int(rng.integers(0, height - size + 1))
        crop = image.crop((left, top, left + size, top + size)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        patches["val" if want_val else "train"].append(crop)
    return patches


def materialise_photos() -> Path:
    """Writes the dataset once to ``cache_dir()/datasets/photos-v1`` (train/ and val/ class folders)."""
    target = cache_dir() / "datasets" / VERSION
    if (target / "val").is_dir():
        return target
    writable_cache_dir("datasets")
    from PIL import Image

    photos = _photos()
    rng = np.random.default_rng(0)
    with atomic_directory(target) as temp:
        for name in PHOTO_CLASSES:
            image = Image.fromarray(np.ascontiguousarray(photos[name][..., :3])).convert("RGB")
            for split, crops in _patches(image, rng).items():
                folder = temp / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for index, crop in enumerate(crops):
                    crop.save(folder / f"{index:03d}.png")
    return target
