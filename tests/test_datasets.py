"""Datasets, samplers and the reference training crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnasnet.data.datasets import (
    EpochSampler,
    ImageFolderDataset,
    ShardSampler,
    make_loader,
    resolve_dataset,
    split_folder,
)
from mnasnet.data.transforms_train import (
    CropParams,
    TrainTransform,
    center_crop_box,
    resize_bilinear_tf,
    sample_distorted_bounding_box,
)
from mnasnet.errors import DataError
from train_helpers import make_colour_dataset


def test_random_crop_follows_reference_constraints():
    rng = np.random.default_rng(0)
    width, height = 500, 375
    boxes = [sample_distorted_bounding_box(width, height, rng) for _ in range(3000)]
    areas = np.array([w * h / (width * height) for _, _, w, h in boxes])
    aspects = np.array([w / h for _, _, w, h in boxes])
    assert all(x + w <= width and y + h <= height for x, y, w, h in boxes)
    # min_object_covered 0.1 with the whole image as the box: a crop keeps >= 10% of it
    assert areas.min() >= 0.1 and areas.max() <= 1.0
    # width = round(height * aspect) with aspect in [3/4, 4/3]
    assert aspects.min() >= 0.75 - 1 / 100 and aspects.max() <= 4 / 3 + 1 / 100
    # TF draws offsets in [0, size - crop): a strictly smaller crop never touches the last row
    assert all(y + h < height for _, y, _, h in boxes if h < height)
    # the height (not the area) is uniform: the mean area is well above the (0.1 + 1) / 2 midpoint of areas? no:
    # a uniform height gives area ~ h**2, whose mean is below the midpoint of the area range
    assert 0.2 < areas.mean() < 0.55


def test_random_crop_falls_back_to_whole_image_when_impossible():
    rng = np.random.default_rng(0)
    # an area range no crop of a 2x50 image can meet at these aspect ratios
    params = CropParams(area_range=(0.9, 1.0), aspect_ratio_range=(1.0, 1.0))
    assert sample_distorted_bounding_box(50, 2, rng, params) == (0, 0, 50, 2)


def test_center_crop_box_is_reference_eval_crop():
    # preprocessing.py: crop = int(224 / (224 + 32) * min(h, w)); offset = ((h - crop) + 1) // 2
    assert center_crop_box(500, 375, 224) == (86, 24, 328, 328)
    assert center_crop_box(256, 256, 224) == (16, 16, 224, 224)


def test_resize_is_tf_legacy_bilinear():
    image = np.arange(64, dtype=np.float32).reshape(8, 8, 1)
    # align_corners=False, half_pixel_centers=False samples at dst * in / out: a factor 2 picks every 2nd pixel
    np.testing.assert_array_equal(resize_bilinear_tf(image, 4)[..., 0], image[::2, ::2, 0])
    row = np.array([[0.0, 10.0]], dtype=np.float32).repeat(2, 0)[..., None]
    # upsampling 2 -> 4 samples at 0, 0.5, 1, 1.5 and clamps at the edge (TF's legacy quirk)
    np.testing.assert_allclose(resize_bilinear_tf(row, 4)[0, :, 0], [0.0, 5.0, 10.0, 10.0])


def test_train_transform_is_deterministic_per_seed_and_normalised():
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3)).astype(np.uint8))
    transform = TrainTransform(32)
    first = transform(image, np.random.default_rng(7))
    again = transform(image, np.random.default_rng(7))
    other = transform(image, np.random.default_rng(8))
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    flat = Image.new("RGB", (40, 40), (124, 116, 104))  # about the ImageNet mean
    assert float(TrainTransform(16)(flat, np.random.default_rng(0)).abs().max()) < 0.02


def test_image_folder_dataset_and_errors(tmp_path):
    root = make_colour_dataset(tmp_path / "data", classes=3, per_class=2, val_per_class=1)
    train = ImageFolderDataset(root / "train", transform=lambda im: im.size)
    assert train.classes == ["c0", "c1", "c2"] and len(train) == 6
    assert train[0] == ((48, 40), 0)
    with pytest.raises(DataError, match="dataset folder not found"):
        resolve_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="no val/ folder"):
        split_folder(tmp_path / "empty", "val")
    (root / "val" / "c9").mkdir()
    (root / "val" / "c0" / "0.png").rename(root / "val" / "c9" / "0.png")
    with pytest.raises(DataError, match="classes the training set lacks: c9"):
        ImageFolderDataset(root / "val", classes=train.classes)


def test_builtin_digits_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "home"))
    root = resolve_dataset("digits")
    assert root == tmp_path / "home" / "datasets" / "digits-v1"
    train, val = ImageFolderDataset(root / "train"), ImageFolderDataset(root / "val")
    # scikit-learn's digits: 1797 images of 10 classes; the split keeps 20% of each class
    assert len(train) + len(val) == 1797
    assert train.classes == val.classes == [str(d) for d in range(10)]
    counts = np.bincount(val.targets)
    assert counts.min() >= 35 and counts.max() <= 37
    image, label = val[0]
    assert image.size == (32, 32) and label == 0
    assert resolve_dataset("digits") == root  # cached, not rewritten


def test_epoch_sampler_shards_resumes_and_seeds():
    full = list(EpochSampler(10, seed=3))
    assert sorted(i for i, _ in full) == list(range(10))
    ranks = [list(EpochSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)  # padded to 12 like DistributedSampler
    assert {i for r in ranks for i, _ in r} == set(range(10))
    resumed = EpochSampler(10, seed=3)
    resumed.set_epoch(0, start=6)
    assert list(resumed) == full[6:]
    # a sample's augmentation seed depends on (seed, epoch, index), not on the rank
    seeds = dict(full)
    assert all(seeds[i] == s for r in ranks for i, s in r)
    next_epoch = EpochSampler(10, seed=3)
    next_epoch.set_epoch(1)
    assert [i for i, _ in next_epoch] != [i for i, _ in full]
    assert list(ShardSampler(5, rank=1, world_size=2)) == [1, 3]


def test_loader_batches_do_not_depend_on_workers(tmp_path):
    root = make_colour_dataset(tmp_path / "data", classes=2, per_class=6, val_per_class=1)
    dataset = ImageFolderDataset(root / "train", train_transform=TrainTransform(24))
    batches = []
    for workers in (0, 2):
        sampler = EpochSampler(len(dataset), seed=1)
        batches.append([b for b, _ in make_loader(dataset, sampler, batch_size=4, workers=workers)])
    for a, b in zip(*batches, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
