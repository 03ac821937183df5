"""The resumable training checkpoint: model, EMA, optimiser, scaler, position, RNG states, config.

Written atomically to ``RUN_DIR/checkpoint.pt`` (never half-written: a kill during
the write leaves the previous one) and read back with ``weights_only=True``. It also
holds the task's *signature* (what the weights must match, e.g. architecture and
class count), so that resuming with a different model fails with the differing keys.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnasnet.errors import CheckpointError
from mnasnet.fileio import atomic_path

__all__ = [
    "CHECKPOINT_NAME",
    "capture_rng",
    "check_signature",
    "load_training_state",
    "restore_rng",
    "save_training_state",
]

CHECKPOINT_NAME = "checkpoint.pt"


def capture_rng() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch CPU and CUDA) as plain picklable values."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undoes :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Writes the training state atomically."""
    with atomic_path(path) as temp:
        torch.save(state, temp)
    return Path(path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a training state written by :func:`save_training_state`.

    Raises:
        CheckpointError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (pickle raises many kinds)
        raise CheckpointError(f"cannot read training checkpoint {path}: {error}") from None


def check_signature(path: str | os.PathLike, saved: dict[str, Any] | None, requested: dict[str, Any]) -> None:
    """Refuses to resume when the run asks for another model than the checkpoint holds.

    Raises:
        CheckpointError: naming each key whose saved and requested values differ.
    """
    if saved is None:  # a checkpoint from before signatures: the weights load or fail on their own
        return
    differing = [key for key in sorted(set(saved) | set(requested)) if saved.get(key) != requested.get(key)]
    if differing:
        details = ", ".join(f"{key} {saved.get(key)!r} -> {requested.get(key)!r}" for key in differing)
        raise CheckpointError(
            f"cannot resume {path}: the checkpoint was trained with another set-up ({details}); "
            "resume with the run's own settings or start a new --output"
        )
