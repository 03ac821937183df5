"""A torch Dataset over a :class:`DetectionData`, and the collate function for its batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mnasnet.data.images import load_image
from mnasnet.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from mnasnet.detection.data.records import DetectionData
from mnasnet.detection.data.transforms import Sample, Transform
from mnasnet.errors import DataError

__all__ = ["DetectionDataset", "collate"]


class DetectionDataset(Dataset):
    """Images and their targets, transformed and normalised.

    An item is ``(image, target)``: ``image`` a ``[3, H, W]`` float32 tensor normalised with
    ``mean`` and ``std``; ``target`` a dict with ``"boxes"`` (``[N, 4]`` float32 ``xyxy`` in
    the transformed image's pixels), ``"labels"`` (``[N]`` int64, 1..K), ``"image_id"`` (int),
    ``"orig_size"`` (``[2]`` int64, original height and width), and ``"scale"`` / ``"offset"``
    (``[2]`` float32 each: ``x_input = x_original * scale[0] + offset[0]``, likewise y), which
    map predictions back to the original image.

    The dataset can be indexed by ``index`` or, like the classification datasets, by
    ``(index, seed)`` pairs (:class:`mnasnet.data.datasets.EpochSampler`): the seed drives that
    sample's augmentation. A plain index uses the seed ``(seed, index)``.

    Images of any mode (L, LA, P, RGBA, CMYK, 16-bit, 1-bit) and EXIF orientation are read as
    RGB by :func:`mnasnet.data.images.load_image`.
    """

    def __init__(
        self,
        data: DetectionData,
        transform: Transform | None = None,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        self.data, self.transform, self.seed = data, transform, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.data.records)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        record = self.data.records[index]
        image = load_image(record.path)
        if image.size != (record.width, record.height):
            raise DataError(
                f"{record.path} is {image.size[0]}x{image.size[1]}, its annotations say {record.width}x{record.height}"
            )
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        sample = Sample(
            image=pixels.to(torch.float32).div_(255.0),
            boxes=torch.from_numpy(record.boxes.copy()),
            labels=torch.from_numpy(self.data.labels(record)),
        )
        if self.transform is not None:
            rng = np.random.default_rng(seed if seed is not None else [self.seed, index])
            sample = self.transform(sample, rng)
        target = {
            "boxes": sample.boxes.to(torch.float32),
            "labels": sample.labels.to(torch.int64),
            "image_id": record.image_id,
            "orig_size": torch.tensor([record.height, record.width], dtype=torch.int64),
            "scale": torch.tensor(sample.scale, dtype=torch.float32),
            "offset": torch.tensor(sample.offset, dtype=torch.float32),
        }
        return (sample.image - self.mean) / self.std, target


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stacks images into ``[B, 3, H, W]`` and keeps the targets as a list (their box counts differ).

    Images of different sizes are padded bottom-right with zeros (the mean, once normalised) to
    the largest height and width, which leaves every box where it was.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [image for image, _ in batch]
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    stacked = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for slot, image in zip(stacked, images, strict=True):
        slot[:, : image.shape[-2], : image.shape[-1]] = image
    return stacked, [target for _, target in batch]
