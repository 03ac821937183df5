"""Our checkpoint format: safetensors weights plus the metadata that rebuilds the model.

The safetensors header carries JSON under ``mnasnet``: the resolved model config
(block strings, widths, padding, BN settings), the evaluation preprocessing and,
when known, the class labels. ``load_model(path)`` needs nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mnasnet import limits
from mnasnet.data.preprocess import Preprocess
from mnasnet.errors import CheckpointError
from mnasnet.fileio import atomic_path
from mnasnet.model import MnasNet, MnasNetConfig

__all__ = ["Checkpoint", "load_model", "read_checkpoint", "save_checkpoint"]

FORMAT_NAME = "mnasnet"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = limits.MAX_HEADER_BYTES  # ImageNet-21k labels and provenance fit in well under 1 MiB


@dataclass
class Checkpoint:
    """What one of our checkpoint files holds."""

    config: MnasNetConfig
    state_dict: dict[str, torch.Tensor]
    preprocess: Preprocess
    labels: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    model: MnasNet,
    path: str | os.PathLike,
    *,
    preprocess: Preprocess | None = None,
    labels: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes ``model`` to ``path`` (atomically) with everything needed to rebuild it.

    Args:
        preprocess: evaluation preprocessing; defaults to the model's own.
        labels: class names, one per output; defaults to the model's own.
        extra: any further JSON-serialisable provenance (source, converter, ...).
    """
    if getattr(model, "is_fused", False):
        raise CheckpointError("a fused model has no BN layers to save; save the model it was fused from")
    preprocess = preprocess or model.preprocess
    labels = labels if labels is not None else getattr(model, "labels", None)
    if labels is not None and len(labels) != model.config.num_classes:
        raise CheckpointError(f"{len(labels)} labels given for a model with {model.config.num_classes} classes")
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "preprocess": preprocess.to_dict(),
        "labels": labels,
        "extra": extra or {},
    }
    # safetensors refuses shared or non-contiguous storage; clone to plain tensors
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata={FORMAT_NAME: json.dumps(header)})
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads and validates one of our checkpoint files (without building the model).

    The header is validated (within the model limits of :mod:`mnasnet.model`)
    before any tensor is read, so a hostile header cannot make us allocate.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = _read_header(path, handle.metadata() or {})
            config = MnasNetConfig.from_dict(header["config"])
            preprocess = Preprocess.from_dict(header.get("preprocess") or {})
            labels = _labels(header.get("labels"), config)
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except CheckpointError:
        raise
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} has corrupt mnasnet metadata ({error})") from None
    extra = header.get("extra") or {}
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path} has corrupt mnasnet metadata (extra is not a mapping)")
    return Checkpoint(config, state_dict, preprocess, labels, extra)


def _read_header(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    if "mnasnet_detector" in metadata:  # written by mnasnet.detection.model.save_detector
        raise CheckpointError(
            f"{path} is a detector checkpoint, not a classifier; load it with mnasnet.detection.model.load_detector"
        )
    if FORMAT_NAME not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file without mnasnet metadata; "
            "convert it first with `mnasnet convert SRC OUT --from torchvision|timm|tf`"
        )
    if len(metadata[FORMAT_NAME]) > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path} has an mnasnet header over {MAX_HEADER_BYTES // 2**20} MiB; refusing it")
    try:
        header = json.loads(metadata[FORMAT_NAME])
    except (json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} has corrupt mnasnet metadata ({error})") from None
    if not isinstance(header, dict) or header.get("format") not in (FORMAT_NAME, None):
        raise CheckpointError(f"{path} has corrupt mnasnet metadata (not an mnasnet header)")
    version = header.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer mnasnet (format {version!r})")
    return header


def _labels(labels: Any, config: MnasNetConfig) -> list[str] | None:
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise CheckpointError("labels must be a list of strings")
    if len(labels) != config.num_classes:
        raise CheckpointError(f"{len(labels)} labels for a model with {config.num_classes} classes")
    return labels


def model_from_checkpoint(checkpoint: Checkpoint, source: str = "checkpoint") -> MnasNet:
    """Builds the model a :class:`Checkpoint` describes and loads its weights strictly."""
    model = MnasNet(checkpoint.config)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(checkpoint.state_dict))
    unexpected = sorted(set(checkpoint.state_dict) - set(expected))
    if missing:
        problems.append(f"missing {len(missing)} tensors (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
    for name in sorted(set(expected) & set(checkpoint.state_dict)):
        if expected[name].shape != checkpoint.state_dict[name].shape:
            problems.append(
                f"{name} has shape {tuple(checkpoint.state_dict[name].shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
            break
    if problems:
        raise CheckpointError(f"{source} does not match its architecture: " + "; ".join(problems))
    model.load_state_dict(checkpoint.state_dict)
    model.preprocess = checkpoint.preprocess
    model.labels = checkpoint.labels
    return model.eval()


def load_model(path: str | os.PathLike) -> MnasNet:
    """Rebuilds the exact model stored in one of our checkpoint files, in eval mode.

    The returned model carries ``preprocess`` and ``labels`` from the file.

    Raises:
        CheckpointError: the file is missing, corrupt, of another format, or its
            tensors do not fit the architecture it names.
    """
    return model_from_checkpoint(read_checkpoint(path), source=str(path))
