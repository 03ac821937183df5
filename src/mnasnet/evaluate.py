"""Top-1/top-5 accuracy of any :class:`~mnasnet.runtime.Predictor` on an image-folder dataset.

The evaluator only calls ``predictor.predict_logits`` on images prepared with the
predictor's own ``preprocess``, so checkpoints, registry weights and exported
ONNX/TFLite files are measured the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from mnasnet.data.datasets import ImageFolderDataset, make_loader, resolve_dataset
from mnasnet.data.preprocess import build_eval_transform
from mnasnet.errors import ConfigError, DataError
from mnasnet.limits import check_batch_size
from mnasnet.runtime import Predictor, load_predictor

__all__ = ["evaluate", "evaluation_folder", "topk_correct"]


def topk_correct(logits: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Per sample: is the target among the ``k`` highest logits? (ties broken by lower index)."""
    k = min(k, logits.shape[1])
    # stable sort on -logits keeps the lower index first among equal logits, like torch.topk on CPU
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return (top == targets[:, None]).any(axis=1)


def evaluation_folder(data: str | os.PathLike, split: str = "val") -> Path:
    """The class-folder directory to evaluate: ``DATA/split`` if it exists, else ``DATA`` itself.

    ``data`` may be a built-in dataset name (``digits``).

    Raises:
        DataError: the folder is missing.
    """
    root = resolve_dataset(data)
    return root / split if (root / split).is_dir() else root


_SYNSET = re.compile(r"n\d{8}")


def class_index(
    classes: list[str], labels: list[str] | None, num_outputs: int, *, by_position: bool = False
) -> np.ndarray:
    """Model output index of each dataset class.

    By name when the model knows its labels. By position only where that is safe:
    ImageNet synset folders (``n01440764``...) against a model with one output per
    folder (after a leading ``background`` output, as Google's checkpoints have), a
    model without labels and exactly one output per class, or ``by_position=True``.

    Raises:
        DataError: the classes cannot be matched to the model's outputs.
    """
    if len(classes) > num_outputs:
        raise DataError(f"the dataset has {len(classes)} classes but the model predicts only {num_outputs}")
    offset = 1 if labels and labels[0] == "background" and num_outputs == len(classes) + 1 else 0
    if by_position:
        return np.arange(len(classes), dtype=np.int64) + offset
    if labels and all(name in labels for name in classes):
        position = {name: i for i, name in enumerate(labels)}
        return np.array([position[name] for name in classes], dtype=np.int64)
    synsets = all(_SYNSET.fullmatch(name) for name in classes)
    if (synsets or not labels) and len(classes) + offset == num_outputs:
        return np.arange(len(classes), dtype=np.int64) + offset
    if labels:
        unknown = [name for name in classes if name not in labels]
        shown = ", ".join(repr(name) for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{len(unknown)} of the dataset's {len(classes)} class folders ({shown}) are not among the model's "
            f"{len(labels)} labels; name the folders after the model's labels, or match by position explicitly "
            "(--by-position)"
        )
    raise DataError(
        f"the model knows no class names and has {num_outputs} outputs for the dataset's {len(classes)} classes; "
        "matching them by position would be a guess (--by-position does it anyway)"
    )


def evaluate(
    predictor: Predictor | str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "val",
    batch_size: int = 64,
    per_class: bool = False,
    limit: int | None = None,
    workers: int = 0,
    progress: bool = False,
    by_position: bool = False,
) -> dict[str, Any]:
    """Measures top-1 and top-5 accuracy (percent) on ``data``.

    Args:
        predictor: a Predictor, or what :func:`mnasnet.runtime.load_predictor` opens
            (checkpoint path, registry name, ``.onnx``/``.tflite`` file).
        data: a dataset folder (its ``split`` sub-folder is used when present, else the
            folder itself holds the class folders) or a built-in dataset name.
        split: the sub-folder to evaluate.
        batch_size: images per ``predict_logits`` call.
        per_class: also report top-1 and image count per class.
        limit: evaluate only this many images, spread evenly over the (class-sorted) set.
        workers: DataLoader worker processes for decoding.
        progress: show a progress bar on stderr.
        by_position: match sorted class folders to model outputs by order even when
            their names are not the model's labels (see :func:`class_index`).

    Returns:
        ``{"top1", "top5", "n", "runtime"}`` and, with ``per_class``, ``"per_class": {name: {"top1", "n"}}``.
        With fewer than five classes ``top5`` counts the top-k over all classes.

    Raises:
        DataError: the folder is missing or empty, or its classes cannot be matched to the
            model's outputs (checked before any image is decoded).
    """
    import torch
    from torch.utils.data import Subset

    check_batch_size(batch_size)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    if not isinstance(predictor, Predictor):
        predictor = load_predictor(predictor)
    dataset = ImageFolderDataset(evaluation_folder(data, split), transform=build_eval_transform(predictor.preprocess))
    labels = predictor.labels
    # with labels the outputs are known: refuse a mismatch before decoding a single image
    mapping = class_index(dataset.classes, labels, len(labels), by_position=by_position) if labels else None
    indices = np.arange(len(dataset))
    if limit is not None and limit < len(dataset):
        indices = np.unique(np.linspace(0, len(dataset) - 1, max(limit, 1)).round().astype(np.int64))
    subset = Subset(dataset, indices.tolist())
    loader = make_loader(subset, torch.utils.data.SequentialSampler(subset), batch_size=batch_size, workers=workers)
    all_logits, all_targets = [], []
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"evaluate {predictor.name}", unit="batch", leave=False)
    for images, targets in batches:
        all_logits.append(np.asarray(predictor(images.numpy()), dtype=np.float32))
        all_targets.append(targets.numpy())
    logits = np.concatenate(all_logits)
    if mapping is None:
        mapping = class_index(dataset.classes, None, logits.shape[1], by_position=by_position)
    targets = mapping[np.concatenate(all_targets)]
    top1 = topk_correct(logits, targets, 1)
    top5 = topk_correct(logits, targets, 5)
    result: dict[str, Any] = {
        "top1": 100.0 * float(top1.mean()),
        "top5": 100.0 * float(top5.mean()),
        "n": int(len(targets)),
        "runtime": predictor.name,
    }
    if per_class:
        dataset_targets = np.asarray(dataset.targets)[indices]
        result["per_class"] = {
            name: {"top1": 100.0 * float(top1[dataset_targets == c].mean()), "n": int((dataset_targets == c).sum())}
            for c, name in enumerate(dataset.classes)
            if (dataset_targets == c).any()
        }
    return result
