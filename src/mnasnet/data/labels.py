"""ImageNet-1k class names, shipped with the package (index order, one per line)."""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["imagenet_labels"]

NUM_IMAGENET_CLASSES = 1000


@functools.cache
def _read_labels() -> tuple[str, ...]:
    text = resources.files("mnasnet.data").joinpath("imagenet_labels.txt").read_text(encoding="utf-8")
    labels = tuple(line for line in text.splitlines() if line)
    if len(labels) != NUM_IMAGENET_CLASSES:  # a broken install, not a user error
        raise RuntimeError(f"imagenet_labels.txt holds {len(labels)} names, expected {NUM_IMAGENET_CLASSES}")
    return labels


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (torchvision's short names)."""
    return list(_read_labels())
