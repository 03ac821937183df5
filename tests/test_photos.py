"""The built-in ``photos`` dataset: layout, sizes, a reproducible build, and patches that are real photo crops."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mnasnet.data.datasets import BUILTIN_DATASETS, ImageFolderDataset, resolve_dataset
from mnasnet.data.photos import IMAGE_SIZE, PHOTO_CLASSES


def test_photos_is_a_builtin_class_folder_dataset(tmp_path, monkeypatch):
    assert "photos" in BUILTIN_DATASETS
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "a"))
    root = resolve_dataset("photos")
    train, val = ImageFolderDataset(root / "train"), ImageFolderDataset(root / "val")
    assert train.classes == val.classes == sorted(PHOTO_CLASSES)
    assert np.bincount(train.targets).tolist() == [160] * 10 and np.bincount(val.targets).tolist() == [40] * 10
    first = Image.open(next((root / "val" / "astronaut").iterdir()))
    assert first.size == (IMAGE_SIZE, IMAGE_SIZE) and first.mode == "RGB"
    # built again elsewhere: the same bytes (a seeded build)
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "b"))
    again = resolve_dataset("photos")
    for path in sorted((root / "val" / "rocket").iterdir())[:5]:
        assert (again / "val" / "rocket" / path.name).read_bytes() == path.read_bytes()


def test_patches_look_like_their_photo():
    """Outside yardstick: scikit-image's own photos. Each class's mean colour is nearest its own photo's."""
    from skimage import data

    root = resolve_dataset("photos")
    photos = {"astronaut": data.astronaut(), "coffee": data.coffee(), "rocket": data.rocket(),
              "hubble": data.hubble_deep_field(), "ihc": data.immunohistochemistry()}  # fmt: skip
    photo_means = {name: image[..., :3].reshape(-1, 3).mean(0) for name, image in photos.items()}
    for name in photos:
        patches = [np.asarray(Image.open(path)) for path in (root / "train" / name).iterdir()]
        mean = np.mean([patch.reshape(-1, 3).mean(0) for patch in patches], axis=0)
        nearest = min(photo_means, key=lambda other: np.abs(photo_means[other] - mean).sum())
        assert nearest == name, (name, nearest)
