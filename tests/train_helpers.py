"""Small datasets and settings shared by the training, evaluation and dataset tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_colour_dataset(root: Path, *, classes: int = 3, per_class: int = 8, val_per_class: int = 4, size: int = 40):
    """``root/{train,val}/cN/*.png``: class N is a noisy image whose dominant colour is channel N % 3.

    Learnable in a few steps, so the loop has something real to fit.
    """
    rng = np.random.default_rng(123)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 90, size=(size, size + 8, 3))
                pixels[..., label % 3] += 120 + 30 * (label // 3)
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index}.png")
    return root


def tiny_settings(data: Path, output: Path, **overrides) -> dict:
    """A run small enough for CI: MnasNet-small x0.35 at 32 px, batch 8."""
    settings = {
        "data": str(data),
        "output": str(output),
        "arch": "small",
        "width": 0.35,
        "resolution": 32,
        "epochs": 2,
        "batch_size": 8,
        "workers": 0,
        "lr": 0.05,
        "warmup_epochs": 0.5,
        "ema_decay": 0.99,
        "save_every": 0,
        "tensorboard": False,
        "plot": False,
    }
    settings.update(overrides)
    return settings
