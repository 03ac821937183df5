"""What the exporters share: opening the source model, the calibration set and the metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

import mnasnet
from mnasnet.deploy.metadata import ExportMetadata
from mnasnet.deploy.quantize import DeployError, load_calibration_images
from mnasnet.limits import check_batch_size
from mnasnet.model import MnasNet

__all__ = ["open_model", "base_metadata", "calibration_set", "parse_batch"]


def open_model(weights: str | os.PathLike | MnasNet) -> MnasNet:
    """A model in eval mode from a model object, one of our checkpoints or a registry name."""
    if isinstance(weights, MnasNet):
        return weights.eval()
    path = Path(weights)
    if path.suffix.lower() in (".onnx", ".tflite"):
        raise DeployError(f"{path} is already an exported file; export from a checkpoint or a registry name")
    from mnasnet.weights import load_weights  # our checkpoint, a publisher's file, or a registry name

    return load_weights(str(weights))


def parse_batch(batch: int | str | None, *, allow_dynamic: bool, fmt: str) -> int | None:
    """``N`` or ``"dynamic"`` (returned as ``None``)."""
    if batch is None or str(batch).lower() == "dynamic":
        if not allow_dynamic:
            raise DeployError(f"--batch dynamic is not supported for {fmt}: give a fixed batch size such as 1")
        return None
    try:
        value = int(batch)
    except ValueError:
        raise DeployError(f"--batch must be a positive integer or 'dynamic', got {batch!r}") from None
    return check_batch_size(value, "--batch")


def check_calibration_given(calibration: object, *, int8: bool) -> None:
    """Calibration images go with an int8 export and only with one."""
    if not int8 and calibration is not None:
        raise DeployError("--calibration only applies to int8 exports: add --int8")
    if int8 and calibration is None:
        raise DeployError(
            "int8 export needs calibration images: --calibration FOLDER (searched recursively) "
            "or the name of a built-in dataset (digits)"
        )


def calibration_set(
    model: MnasNet, calibration: str | os.PathLike | np.ndarray | None, *, limit: int, int8: bool
) -> np.ndarray | None:
    """The calibration images (float32 NCHW) for an int8 export, or ``None`` for a float one."""
    check_calibration_given(calibration, int8=int8)
    if not int8:
        return None
    if isinstance(calibration, np.ndarray):
        return calibration.astype(np.float32)
    return load_calibration_images(calibration, model.preprocess, limit=limit)


def base_metadata(model: MnasNet, *, layout: str, precision: str, batch: int | None, **extra) -> ExportMetadata:
    import torch as _torch

    return ExportMetadata(
        config=model.config.to_dict(),
        preprocess=model.preprocess,
        labels=list(model.labels) if getattr(model, "labels", None) else None,
        layout=layout,
        precision=precision,
        batch=batch,
        extra={"mnasnet_version": mnasnet.__version__, "torch_version": _torch.__version__, **extra},
    )


def sample_input(model: MnasNet, batch: int, layout: str) -> torch.Tensor:
    size = model.config.resolution
    shape = (batch, size, size, 3) if layout == "nhwc" else (batch, 3, size, size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def to_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """NCHW images in the file's input layout."""
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)) if layout == "nhwc" else images


def check_writable(out: str | os.PathLike, suffix: str) -> Path:
    out = Path(out)
    if out.suffix.lower() != suffix:
        raise DeployError(f"output file {out} should end in {suffix}")
    if out.is_dir():
        raise DeployError(f"output path {out} is a folder")
    return out


# Optional packages each export needs, by (format, int8); checked before any work so that a
# missing one is named at once (with its pip extra), not after a download or a calibration.
EXPORT_PACKAGES = {
    ("onnx", False): ("onnx", "onnxscript"),
    ("onnx", True): ("onnx", "onnxscript", "onnxruntime"),
    ("tflite", False): ("litert_torch", "ai_edge_litert"),
    ("tflite", True): ("litert_torch", "ai_edge_litert", "torchao"),
}


def check_export_packages(fmt: str, int8: bool) -> None:
    """Raises one MissingDependencyError naming every package the export needs and lacks."""
    from mnasnet.extras import check_installed

    check_installed(EXPORT_PACKAGES[fmt, int8], purpose=f"the {'int8 ' if int8 else ''}{fmt.upper()} export")
