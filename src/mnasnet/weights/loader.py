"""The one place that turns a name or a path into a model with weights.

``mnasnet.create_model(weights=...)``, ``mnasnet.load_model``, the runtime
predictors, the exporters and ``mnasnet train --weights`` all call
:func:`load_weights`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mnasnet.checkpoint import load_model, read_checkpoint
from mnasnet.errors import CheckpointError
from mnasnet.model import MnasNet
from mnasnet.weights.download import convert_to_cache, converted_path, fetch_weights_file, verify_file
from mnasnet.weights.registry import Weights, get_weights, list_weights

__all__ = ["load_weights"]

# Suffixes that can only be files: a missing one is a missing file, not a registry name.
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".tgz", ".gz", ".onnx", ".tflite")


def _weights_for_file(path: Path) -> Weights | None:
    return next((weights for weights in list_weights() if weights.file_name == path.name), None)


def _cached_conversion(weights: Weights) -> MnasNet | None:
    """The converted checkpoint in the cache, if it was made from the published file."""
    path = converted_path(weights)
    if not path.is_file():
        return None
    try:
        source_sha256 = str(read_checkpoint(path).extra.get("source_sha256", ""))
        if weights.sha256 is None or source_sha256.startswith(weights.sha256.lower()):
            return load_model(path)
        reason = f"it was converted from a file with sha256 {source_sha256 or 'unknown'}, not {weights.sha256}"
    except CheckpointError as error:  # written by an incompatible version, or damaged
        reason = str(error)
    print(f"warning: ignoring the cached {path}: {reason}; converting again", file=sys.stderr)
    path.unlink()
    return None


def load_weights(source: str | os.PathLike, *, progress: bool = True) -> MnasNet:
    """A model with published or saved weights, in eval mode, carrying its preprocessing and labels.

    Args:
        source: a registry name (``mnasnet weights`` lists them; the publisher's
            name works too), the path of one of our checkpoints, or the path of a
            publisher's file as the registry names it (it is checked and converted).
        progress: show download progress on stderr.

    Raises:
        ValueError: unknown name.
        DownloadError: the file cannot be fetched or fails its hash check.
        CheckpointError: a local file is not a usable checkpoint.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; convert a TF checkpoint folder first with "
            f"`mnasnet convert {path} OUT.safetensors --from tf --arch ARCH`"
        )
    if path.suffix.lower() in (".onnx", ".tflite"):
        raise CheckpointError(f"{path} is an exported file, not a PyTorch checkpoint; open it with load_predictor")
    if path.exists():
        weights = _weights_for_file(path)
        if weights is not None and path.suffix != ".safetensors":
            return load_model(convert_to_cache(weights, path, verify_file(path, weights.sha256)))
        return load_model(path)
    if path.suffix.lower() in _FILE_SUFFIXES or os.sep in str(source):
        raise CheckpointError(f"checkpoint not found: {path}")
    weights = get_weights(str(source))
    cached = _cached_conversion(weights)
    if cached is not None:
        return cached
    source_path, source_sha256 = fetch_weights_file(weights, progress=progress)
    return load_model(convert_to_cache(weights, source_path, source_sha256))
