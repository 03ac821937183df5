"""Image-folder datasets, the built-in dataset, samplers and loaders for training and evaluation.

A dataset is a folder with ``train/`` and ``val/`` sub-folders, each holding one
folder of images per class (torchvision's ImageFolder layout). The built-in
dataset (``digits``: scikit-learn's handwritten digits, shipped inside its wheel)
is written once in that same layout to a cache folder, so user folders and the
built-in set take one code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from mnasnet.data.images import IMAGE_SUFFIXES, load_image
from mnasnet.errors import DataError, MnasNetError
from mnasnet.extras import require
from mnasnet.fileio import atomic_directory, cache_dir, writable_cache_dir
from mnasnet.threads import available_cpus

__all__ = [
    "BUILTIN_DATASETS",
    "EpochSampler",
    "ImageFolderDataset",
    "ShardSampler",
    "cache_dir",
    "resolve_dataset",
]

BUILTIN_DATASETS = ("digits", "photos", "photos-search")  # mnasnet.data.photos, mnasnet.data.photos_search
_DIGITS_VERSION = "digits-v1"
_DIGITS_SIZE = 32  # the 8x8 originals, upscaled so random crops stay meaningful
_DIGITS_VAL_FRACTION = 0.2


def resolve_dataset(name_or_dir: str | os.PathLike) -> Path:
    """The root folder (holding ``train/`` and ``val/``) of a dataset given by folder or built-in name.

    The built-in ``digits`` is written to ``cache_dir()/datasets`` on first use.

    Raises:
        DataError: the folder does not exist and is not a built-in name.
    """
    text = str(name_or_dir)
    if text in BUILTIN_DATASETS and not Path(text).exists():
        if text == "photos":
            from mnasnet.data.photos import materialise_photos

            return materialise_photos()
        if text == "photos-search":
            from mnasnet.data.photos_search import materialise_photos_search

            return materialise_photos_search()
        return _materialise_digits()
    root = Path(text).expanduser()
    if not root.is_dir():
        names = ", ".join(BUILTIN_DATASETS)
        raise DataError(
            f"dataset folder not found: {root} (give a folder with train/ and val/ sub-folders "
            f"of class folders, or a built-in dataset: {names})"
        )
    return root


def _materialise_digits() -> Path:
    target = cache_dir() / "datasets" / _DIGITS_VERSION
    if (target / "val").is_dir():
        return target
    load_digits = require("sklearn.datasets").load_digits
    writable_cache_dir("datasets")  # a clear error if the cache cannot be written, before any work
    from PIL import Image

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    # a fixed, stratified split: 20% of each class, chosen by a seeded shuffle
    rng = np.random.default_rng(0)
    split = np.empty(len(images), dtype=object)
    for label in np.unique(digits.target):
        members = np.flatnonzero(digits.target == label)
        members = members[rng.permutation(len(members))]
        n_val = int(round(len(members) * _DIGITS_VAL_FRACTION))
        split[members[:n_val]] = "val"
        split[members[n_val:]] = "train"
    with atomic_directory(target) as temp:
        for index, (pixels, label) in enumerate(zip(images, digits.target, strict=True)):
            folder = temp / split[index] / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels, mode="L").resize((_DIGITS_SIZE, _DIGITS_SIZE), Image.BICUBIC)
            image.save(folder / f"{index:04d}.png")
    return target


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` files, labelled by the sorted class-folder names.

    Items are ``(tensor, label)``. With a ``train_transform`` the dataset is indexed
    by ``(index, seed)`` pairs (see :class:`EpochSampler`): the seed drives that
    sample's augmentation, so crops do not depend on worker processes or on resuming.

    Raises:
        DataError: the folder is missing, has no class folders, or holds no images.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        transform=None,
        train_transform=None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset folder not found: {self.root}")
        found = _class_folders(self.root)
        if not found:
            raise DataError(f"no class folders in {self.root} (expected {self.root}/<class name>/<images>)")
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise DataError(f"{self.root} has classes the training set lacks: {', '.join(unknown[:5])}")
        index_of = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for name in found:
            files = sorted(
                p for p in (self.root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            self.samples.extend((path, index_of[name]) for path in files)
        if not self.samples:
            raise DataError(f"no images in {self.root} (looked for {', '.join(IMAGE_SUFFIXES)})")
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.train_transform = train_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        if self.train_transform is not None:
            index, seed = item
            path, label = self.samples[index]
            return self.train_transform(load_image(path), np.random.default_rng(seed)), label
        path, label = self.samples[item]
        image = load_image(path)
        return (self.transform(image) if self.transform is not None else image), label


def split_folder(root: Path, split: str) -> Path:
    """``root/split``, or one clear error naming what is missing."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{root} has no {split}/ folder (expected {root}/{split}/<class name>/<images>)")
    return folder


class EpochSampler(Sampler):
    """Shuffled, rank-sharded ``(index, augmentation seed)`` pairs for one epoch, resumable mid-epoch.

    Like ``DistributedSampler``: every epoch a permutation seeded by ``(seed, epoch)``,
    padded to a multiple of ``world_size`` and dealt round-robin to ranks. ``start``
    skips that many of this rank's samples (a run resumed in the middle of an epoch).
    """

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = -(-size // world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        order = order.tolist()
        order += order[: self.per_rank * self.world_size - self.size]
        mine = order[self.rank :: self.world_size]
        for position in range(self.start, self.per_rank):
            index = mine[position]
            # one seed per (run seed, epoch, sample): independent of ranks, workers and resuming
            yield index, int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``, no padding: ranks together see each sample once."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C is for the main process, which saves a checkpoint; workers must live until it is done.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _WorkerFailure:
    """A user error (a bad image) raised in a loader worker, carried to the main process in place of a batch."""

    def __init__(self, error: MnasNetError) -> None:
        self.error = error


class _CatchUserErrors(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        try:
            return self.dataset[item]
        except MnasNetError as error:
            return _WorkerFailure(error)


class _CollateUnlessFailed:
    def __init__(self, collate_fn) -> None:
        self.collate_fn = collate_fn or default_collate

    def __call__(self, items):
        failed = next((item for item in items if isinstance(item, _WorkerFailure)), None)
        return failed if failed is not None else self.collate_fn(items)


class _Loader(DataLoader):
    """Raises a worker's user error as itself, not as PyTorch's multi-line "Caught X in DataLoader worker"."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, _WorkerFailure):
                raise batch.error
            yield batch


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    *,
    batch_size: int,
    workers: int,
    drop_last: bool = False,
    pin_memory: bool = False,
    collate_fn=None,
) -> DataLoader:
    """A DataLoader whose workers ignore Ctrl-C and draw no numbers from the global RNG.

    A :class:`~mnasnet.errors.MnasNetError` raised in a worker (e.g. a corrupt image)
    reaches the caller as that same one-line error.
    """
    num_workers = min(workers, available_cpus())
    if num_workers > 0:
        dataset, collate_fn = _CatchUserErrors(dataset), _CollateUnlessFailed(collate_fn)
    return _Loader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        # more decoding processes than cores only adds contention (and a warning from PyTorch)
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_sigint if workers > 0 else None,  # unused when num_workers is 0
        # a private generator: creating the iterator must not consume the global RNG,
        # or dropout masks would differ between a resumed and an uninterrupted run
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
