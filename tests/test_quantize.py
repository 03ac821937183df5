"""Calibration data: folders searched recursively, dataset names, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mnasnet.data.preprocess import Preprocess
from mnasnet.deploy.quantize import calibration_files, load_calibration_images
from mnasnet.errors import DataError


def write_images(folder, count, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"{index}.png")


def test_folder_is_searched_recursively_and_subsampled(tmp_path):
    write_images(tmp_path / "a", 3)
    write_images(tmp_path / "b" / "deeper", 4)
    (tmp_path / "notes.txt").write_text("not an image")
    assert len(calibration_files(tmp_path)) == 7
    images = load_calibration_images(tmp_path, Preprocess.for_resolution(32), limit=5)
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.float32
    # normalised with the weights' own mean/std: uniform noise pixels centre near 0
    assert abs(float(images.mean())) < 0.5


def test_dataset_folder_calibrates_on_its_train_split(tmp_path):
    write_images(tmp_path / "train" / "cat", 2)
    write_images(tmp_path / "val" / "cat", 5)
    assert [path.parent.parent.name for path in calibration_files(tmp_path)] == ["train", "train"]


def test_builtin_dataset_name(tmp_path, monkeypatch):

    monkeypatch.setenv("MNASNET_HOME", str(tmp_path))
    files = calibration_files("digits")
    assert len(files) > 1000 and all("train" in path.parts for path in files)


def test_missing_or_empty_calibration_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="calibration images not found"):
        calibration_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no calibration images"):
        calibration_files(tmp_path / "empty")
