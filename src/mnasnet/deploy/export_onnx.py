"""ONNX export: float32 (dynamic batch by default) and static int8 QDQ with ONNX Runtime."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from mnasnet.deploy.common import (
    base_metadata,
    calibration_set,
    check_export_packages,
    check_writable,
    open_model,
    parse_batch,
    sample_input,
    to_layout,
)
from mnasnet.deploy.graph import LAYOUTS, ExportableMnasNet
from mnasnet.deploy.metadata import set_onnx_metadata
from mnasnet.deploy.qat import convert_qat, read_qat_state
from mnasnet.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, DeployError, quantize_onnx
from mnasnet.fileio import atomic_path
from mnasnet.model import MnasNet

__all__ = ["export_onnx"]

OPSET = 20


def _export_float(module: torch.nn.Module, sample: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    program = torch.onnx.export(
        module,
        (sample,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=dynamic_shapes,
        opset_version=OPSET,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    program.save(str(path))


def export_onnx(
    weights: str | os.PathLike | MnasNet,
    out: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: str | os.PathLike | np.ndarray | None = None,
    per_channel: bool = True,
    batch: int | str | None = "dynamic",
    layout: str = "nchw",
    calibration_limit: int = DEFAULT_CALIBRATION_IMAGES,
) -> Path:
    """Exports a model to ONNX, optionally int8 (static QDQ), with its metadata.

    Args:
        weights: a model, one of our checkpoints or a registry name.
        out: the ``.onnx`` file to write (atomically).
        int8: quantise weights and activations to int8 (needs ``calibration``).
        calibration: a folder of images, a dataset name, or float32 NCHW images already preprocessed.
        per_channel: per-channel weight scales (default) or one scale per tensor.
        batch: a fixed batch size, or ``"dynamic"``.
        layout: ``"nchw"`` (default for ONNX) or ``"nhwc"`` input.

    Raises:
        DeployError: an option or combination that cannot work.
        DataError: calibration images missing or unreadable.
    """
    out = check_writable(out, ".onnx")
    check_export_packages("onnx", int8)
    if layout not in LAYOUTS:
        raise DeployError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    batch_size = parse_batch(batch, allow_dynamic=True, fmt="ONNX")
    model = open_model(weights)
    qat = read_qat_state(weights) if int8 else None  # a QAT checkpoint brings its trained ranges: no calibration
    images = None if qat is not None else calibration_set(model, calibration, limit=calibration_limit, int8=int8)
    module = ExportableMnasNet(model, layout=layout)
    sample = sample_input(model, batch_size or 2, layout)  # batch 2 so the exporter cannot specialise on 1
    metadata = base_metadata(model, layout=layout, precision="int8" if int8 else "float32", batch=batch_size)
    import onnx

    with tempfile.TemporaryDirectory(prefix="mnasnet-onnx-") as workdir:
        float_path = Path(workdir) / "float.onnx"
        if qat is not None:
            # the QAT graph converted with its trained ranges (int8 weights), exported as the same QDQ form
            converted, _ = convert_qat(
                module, sample, qat, per_channel=per_channel, dynamic_batch=batch_size is None, fold_quantize=True
            )
            _export_float(converted, sample, float_path, dynamic_batch=batch_size is None)
            metadata.quantization = {
                "tool": "PT2E quantisation-aware training (torchao), torch.onnx",
                "format": "QDQ",
                "weights": "int8 per-channel symmetric" if per_channel else "int8 per-tensor symmetric",
                "activations": "int8 per-tensor affine (QAT ranges)",
                "calibration_images": 0,
            }
        else:
            _export_float(module, sample, float_path, dynamic_batch=batch_size is None)
        if int8 and qat is None:
            int8_path = Path(workdir) / "int8.onnx"
            quantize_onnx(float_path, int8_path, to_layout(images, layout), per_channel=per_channel, batch=batch_size)
            metadata.quantization = {
                "tool": "onnxruntime.quantize_static",
                "format": "QDQ",
                "weights": "int8 per-channel symmetric" if per_channel else "int8 per-tensor symmetric",
                "activations": "int8 per-tensor asymmetric (MinMax)",
                "calibration_images": int(len(images)),
            }
            float_path = int8_path
        proto = onnx.load(str(float_path))
        set_onnx_metadata(proto, metadata)
        with atomic_path(out) as temp:
            onnx.save(proto, str(temp))
    return out
