"""One small interface over every runtime that can run a MnasNet: PyTorch, ONNX Runtime, LiteRT.

``predict`` and ``evaluate`` only talk to a :class:`Predictor`, so an exported
``.onnx`` or ``.tflite`` file works wherever a checkpoint does.
"""

from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mnasnet.data.preprocess import Preprocess
from mnasnet.errors import CheckpointError
from mnasnet.fuse import fuse_model

__all__ = ["RUNTIMES", "Predictor", "TorchPredictor", "load_predictor"]


class Predictor(abc.ABC):
    """Runs a classifier on a batch of preprocessed images.

    Attributes:
        preprocess: how images must be prepared for this model.
        labels: class names, or ``None`` when the model does not know them.
        name: a short description of the runtime (for tables and logs).
    """

    preprocess: Preprocess
    labels: list[str] | None
    name: str

    @abc.abstractmethod
    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Maps float32 NCHW images, normalised as ``preprocess`` says, to float32 logits [N, classes]."""

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        return self.predict_logits(np.ascontiguousarray(images, dtype=np.float32))


class TorchPredictor(Predictor):
    """A PyTorch :class:`~mnasnet.model.MnasNet`, fused for inference (the caller's model is not changed)."""

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess | None = None, labels: list[str] | None = None):
        self.model = fuse_model(model)
        self.preprocess = preprocess or getattr(model, "preprocess", None) or Preprocess()
        self.labels = labels if labels is not None else getattr(model, "labels", None)
        self.name = "pytorch"

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(images)).float().numpy()


# Exported-file suffix -> "module:function" that opens it. Resolved on use, so that
# importing this module loads no runtime library and registers nothing as a side effect.
RUNTIMES: dict[str, str] = {
    ".onnx": "mnasnet.deploy.runtimes:load_onnx",
    ".tflite": "mnasnet.deploy.runtimes:load_tflite",
}


def _runtime_loader(suffix: str) -> Callable[[Path], Predictor]:
    module_name, function_name = RUNTIMES[suffix].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def load_predictor(weights: str | os.PathLike) -> Predictor:
    """Opens a checkpoint, an exported file or a registry name as a :class:`Predictor`."""
    path = Path(weights)
    suffix = path.suffix.lower()
    if suffix in RUNTIMES:
        if not path.is_file():
            raise CheckpointError(f"model file not found: {path}")
        return _runtime_loader(suffix)(path)
    from mnasnet.weights import load_weights  # the one loader: checkpoint, publisher's file or registry name

    return TorchPredictor(load_weights(weights))
