"""The built-in ``photos-search`` dataset (the search proxy's task): layout, a seeded build, disjoint splits."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mnasnet.data import photos_search
from mnasnet.data.datasets import BUILTIN_DATASETS, ImageFolderDataset, resolve_dataset
from mnasnet.data.photos_search import GREY_CLASSES, IMAGE_SIZE, SEARCH_PHOTO_CLASSES


def test_photos_search_is_a_builtin_class_folder_dataset(tmp_path, monkeypatch):
    assert "photos-search" in BUILTIN_DATASETS
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path))
    root = resolve_dataset("photos-search")
    train, val = ImageFolderDataset(root / "train"), ImageFolderDataset(root / "val")
    assert train.classes == val.classes == sorted(SEARCH_PHOTO_CLASSES) and len(train.classes) == 16
    assert np.bincount(train.targets).tolist() == [160] * 16 and np.bincount(val.targets).tolist() == [100] * 16
    for name in ("astronaut", "gravel"):
        patch = Image.open(next((root / "val" / name).iterdir()))
        assert patch.size == (IMAGE_SIZE, IMAGE_SIZE) and patch.mode == "RGB"
        pixels = np.asarray(patch).astype(int)
        # scikit-image's gravel is a grey-scale photo, the astronaut a colour one
        grey = np.abs(pixels[..., 0] - pixels[..., 1]).max() == 0 == np.abs(pixels[..., 1] - pixels[..., 2]).max()
        assert grey == (name in GREY_CLASSES)


def _boxes(crops) -> list[tuple[float, float, float, float]]:
    """Where each patch came from, read back from a photo whose red and green channels encode x and y."""
    boxes = []
    for crop in crops:
        pixels = np.asarray(crop).astype(float)
        x = pixels[..., 0] * (479 / 255)
        y = pixels[..., 1] * (319 / 255)
        boxes.append((x[:, 0].mean(), y[0, :].mean(), x[:, -1].mean(), y[-1, :].mean()))
    return boxes


def test_validation_patches_never_overlap_training_patches_and_the_build_is_seeded():
    xs, ys = np.meshgrid(np.arange(480), np.arange(320))
    ramp = np.stack([xs * 255 / 479, ys * 255 / 319, np.full_like(xs, 128)], axis=-1).round().astype(np.uint8)
    image = Image.fromarray(ramp)
    patches = photos_search._patches(image, np.random.default_rng(3))
    assert len(patches["train"]) == 160 and len(patches["val"]) == 100
    train, val = _boxes(patches["train"]), _boxes(patches["val"])
    # patches are 40 to 96 pixels wide, spread over the photo (not one stripe)
    widths = [right - left for left, _, right, _ in train + val]
    assert min(widths) > 30 and max(widths) < 100
    assert np.ptp([left for left, _, _, _ in val]) > 150 or np.ptp([top for _, top, _, _ in val]) > 150
    margin = 4  # interpolation and 8-bit rounding blur the decoded edges by a few pixels
    for vl, vt, vr, vb in val:
        for tl, tt, tr, tb in train:
            overlap_x = min(vr, tr) - max(vl, tl)
            overlap_y = min(vb, tb) - max(vt, tt)
            assert overlap_x < margin or overlap_y < margin, ((vl, vt, vr, vb), (tl, tt, tr, tb))
    again = photos_search._patches(image, np.random.default_rng(3))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(patches["val"], again["val"], strict=True))
