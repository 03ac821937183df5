"""TFLite export with litert-torch: float32, and full-integer int8 with int8 input and output.

The model is first rewritten by :class:`~mnasnet.deploy.graph.ExportableMnasNet`
(BN folded, NHWC input by default, SE and head pooling as AVERAGE_POOL_2D,
quantisable residual adds), then quantised with PT2E and converted. The int8
file has int8 input and output tensors, every operator int8, and no layout
transposes, so Vela places all of it on an Ethos-U NPU.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

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
from mnasnet.deploy.graph import LAYOUTS, POOLINGS, ExportableMnasNet
from mnasnet.deploy.metadata import write_tflite_metadata
from mnasnet.deploy.qat import convert_qat, read_qat_state
from mnasnet.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, DeployError, quantize_pt2e
from mnasnet.extras import require
from mnasnet.fileio import atomic_path
from mnasnet.model import MnasNet

__all__ = ["export_tflite", "tflite_io_details"]

# tflite TensorType codes
_INT8, _FLOAT32 = 9, 0


def tflite_io_details(path: str | os.PathLike) -> dict[str, dict]:
    """``{"input": {...}, "output": {...}}``: dtype name, shape, scale and zero point of a file's tensors."""
    schema = require("ai_edge_litert.schema_py_generated")

    data = bytearray(Path(path).read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    names = {value: key for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    details = {}
    for role, index in (("input", graph.Inputs(0)), ("output", graph.Outputs(0))):
        tensor = graph.Tensors(index)
        quant = tensor.Quantization()
        scale = float(quant.Scale(0)) if quant is not None and quant.ScaleLength() else None
        zero_point = int(quant.ZeroPoint(0)) if quant is not None and quant.ZeroPointLength() else None
        details[role] = {
            "dtype": names[tensor.Type()].lower(),
            "shape": [int(v) for v in tensor.ShapeAsNumpy()],
            "scale": scale,
            "zero_point": zero_point,
        }
    return details


@contextlib.contextmanager
def _quiet():
    """litert-torch prints progress lines and MLIR diagnostics to stdout; keep the CLI's output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _io_dtypes(path: Path) -> list[str]:
    schema = require("ai_edge_litert.schema_py_generated")
    graph = schema.Model.GetRootAs(bytearray(path.read_bytes()), 0).Subgraphs(0)
    names = {value: key.lower() for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    indices = [graph.Inputs(i) for i in range(graph.InputsLength())]
    indices += [graph.Outputs(i) for i in range(graph.OutputsLength())]
    return [names[graph.Tensors(index).Type()] for index in indices]


def force_int8_io(path: Path) -> None:
    """Makes every input and output int8 if the converter left float QUANTIZE/DEQUANTIZE at the ends."""
    if all(dtype == "int8" for dtype in _io_dtypes(path)):
        return
    modify_model_interface = require("ai_edge_litert._pywrap_modify_model_interface").modify_model_interface

    fixed = path.with_name(path.stem + ".io.tflite")
    if modify_model_interface(str(path), str(fixed), _INT8, _INT8) != 0:
        raise DeployError("could not make the int8 TFLite file's inputs and outputs int8")
    os.replace(fixed, path)


def float_operators(path: str | os.PathLike) -> list[str]:
    """The operators of a TFLite file that write float32 tensors (names, in graph order).

    A full-integer file has none: each one is float compute that an NPU hands back to the CPU.
    """
    schema = require("ai_edge_litert.schema_py_generated")
    model = schema.Model.GetRootAs(bytearray(Path(path).read_bytes()), 0)
    graph = model.Subgraphs(0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    found = []
    for index in range(graph.OperatorsLength()):
        operator = graph.Operators(index)
        outputs = [operator.Outputs(i) for i in range(operator.OutputsLength())]
        if any(graph.Tensors(t).Type() == _FLOAT32 for t in outputs if t >= 0):
            code = model.OperatorCodes(operator.OpcodeIndex())
            found.append(names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))
    return found


def check_full_integer(path: Path) -> None:
    """Refuses an "int8" file that still computes in float (a quantiser gap, not the user's doing)."""
    found = float_operators(path)
    if found:
        counts = ", ".join(f"{count} {name}" for name, count in sorted(collections.Counter(found).items()))
        raise DeployError(
            f"the int8 conversion left {len(found)} operators in float ({counts}); no file was written. "
            "This is a bug in mnasnet's quantisation: please report it with the model's architecture"
        )


def export_tflite(
    weights: str | os.PathLike | MnasNet,
    out: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: str | os.PathLike | np.ndarray | None = None,
    per_channel: bool = True,
    batch: int | str | None = 1,
    layout: str = "nhwc",
    calibration_limit: int = DEFAULT_CALIBRATION_IMAGES,
    pooling: str = "mean",
) -> Path:
    """Exports a model to TFLite (float32, or full-integer int8 with int8 input/output) with its metadata.

    Args:
        weights: a model, one of our checkpoints or a registry name.
        out: the ``.tflite`` file to write (atomically).
        int8: full-integer quantisation (needs ``calibration``).
        calibration: a folder of images, a dataset name, or float32 NCHW images already preprocessed.
        per_channel: per-channel weight scales (default) or per-tensor (for NPUs that only take that).
        batch: the fixed batch size (TFLite graphs here are static; ``"dynamic"`` is refused).
        layout: ``"nhwc"`` (default: what TFLite users feed, no transposes) or ``"nchw"``.
        pooling: global means as ``"mean"`` (default, faster on CPU) or ``"avgpool"``
            (faster on an Ethos-U NPU); both run entirely on the NPU.

    Raises:
        DeployError: an option or combination that cannot work.
        DataError: calibration images missing or unreadable.
    """
    out = check_writable(out, ".tflite")
    check_export_packages("tflite", int8)
    import litert_torch

    if layout not in LAYOUTS:
        raise DeployError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    batch_size = parse_batch(batch, allow_dynamic=False, fmt="TFLite (static shapes keep XNNPACK and NPUs happy)")
    model = open_model(weights)
    qat = read_qat_state(weights) if int8 else None  # a QAT checkpoint brings its trained ranges: no calibration
    images = None if qat is not None else calibration_set(model, calibration, limit=calibration_limit, int8=int8)
    if pooling not in POOLINGS:
        raise DeployError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    module = ExportableMnasNet(model, layout=layout, pooling=pooling)
    sample = sample_input(model, batch_size, layout)
    metadata = base_metadata(
        model,
        layout=layout,
        precision="int8" if int8 else "float32",
        batch=batch_size,
        litert_torch_version=litert_torch.__version__,
    )
    with tempfile.TemporaryDirectory(prefix="mnasnet-tflite-") as workdir:
        raw = Path(workdir) / "raw.tflite"
        with _quiet():
            if int8:
                from litert_torch.quantize.quant_config import QuantConfig

                if qat is not None:
                    converted, quantizer = convert_qat(module, sample, qat, per_channel=per_channel)
                else:
                    images = to_layout(images, layout)
                    converted, quantizer = quantize_pt2e(module, sample, images, per_channel=per_channel)
                edge = litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
            else:
                edge = litert_torch.convert(module, (sample,))
            edge.export(str(raw))
        if int8:
            force_int8_io(raw)
            check_full_integer(raw)
            details = tflite_io_details(raw)
            metadata.input_quantization = {k: details["input"][k] for k in ("dtype", "scale", "zero_point")}
            metadata.output_quantization = {k: details["output"][k] for k in ("dtype", "scale", "zero_point")}
            metadata.quantization = {
                "tool": "litert-torch PT2E",
                "weights": "int8 per-channel symmetric" if per_channel else "int8 per-tensor symmetric",
                "activations": f"int8 per-tensor ({'QAT ranges' if qat else 'histogram observer'})",
                "calibration_images": 0 if qat else int(len(images)),
            }
        with atomic_path(out) as temp:
            write_tflite_metadata(raw, temp, metadata)
    return out
