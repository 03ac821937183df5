"""Predictors over exported files: ONNX Runtime and LiteRT.

Both take what every :class:`~mnasnet.runtime.Predictor` takes, float32 NCHW
images normalised as the file's metadata says, and do the rest themselves:
layout conversion for NHWC files, int8 quantisation of the input with the file's
own scale and zero point, and dequantisation of int8 output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mnasnet.data.preprocess import Preprocess
from mnasnet.deploy.metadata import ExportMetadata, read_onnx_metadata, read_tflite_metadata
from mnasnet.errors import CheckpointError
from mnasnet.extras import require
from mnasnet.runtime import Predictor
from mnasnet.threads import thread_count

__all__ = ["LiteRTPredictor", "OnnxPredictor", "load_onnx", "load_tflite"]


def _fallback_preprocess(shape: list) -> tuple[Preprocess, str]:
    """A foreign file without our metadata: guess the layout from where the 3 channels are."""
    layout = "nhwc" if len(shape) == 4 and shape[-1] == 3 else "nchw"
    size = shape[1] if layout == "nhwc" else shape[-1]
    size = size if isinstance(size, int) and size > 0 else 224
    return Preprocess.for_resolution(size), layout


def quantize_input(images: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float images to int8 with a tensor's scale and zero point (round half to even, as TFLite's QUANTIZE)."""
    scaled = np.rint(images * np.float32(1.0 / scale))
    scaled += np.float32(zero_point)
    return np.clip(scaled, -128, 127, out=scaled).astype(np.int8)


class OnnxPredictor(Predictor):
    """An exported ``.onnx`` file run by ONNX Runtime on the CPU."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or thread_count()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            raise CheckpointError(
                f"{self.path} cannot be loaded by ONNX Runtime ({str(error).splitlines()[0]})"
            ) from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = list(model_input.shape)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        _set_description(self, self.metadata, shape)
        precision = self.metadata.precision if self.metadata else "float32"
        self.name = f"onnxruntime-{'int8' if precision == 'int8' else 'fp32'}"

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        images = _to_layout(images, self.layout)
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: images})[0].astype(np.float32)
        return _in_fixed_batches(images, self.fixed_batch, lambda x: self.session.run(None, {self.input_name: x})[0])


class LiteRTPredictor(Predictor):
    """An exported ``.tflite`` file run by the LiteRT interpreter (XNNPACK on the CPU)."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        Interpreter = require("ai_edge_litert.interpreter").Interpreter
        self.path = Path(path)
        self.metadata = read_tflite_metadata(self.path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or thread_count())
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise CheckpointError(f"{self.path} cannot be loaded by LiteRT ({str(error).splitlines()[0]})") from None
        self._read_details()
        self.file_batch = int(self.input["shape"][0])
        _set_description(self, self.metadata, list(self.input["shape"]))
        self.name = f"litert-{'int8' if self.input['dtype'] == np.int8 else 'fp32'}"

    def _read_details(self) -> None:
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def _run(self, images: np.ndarray) -> np.ndarray:
        if images.shape[0] != self.input["shape"][0]:
            # the graph is static; resizing the batch re-plans it once per new batch size
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self._read_details()
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] == np.int8:
            images = quantize_input(images, scale, zero_point)
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        if self.output["dtype"] == np.int8:
            return (logits.astype(np.float32) - zero_point) * np.float32(scale)
        return logits.astype(np.float32)

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(np.ascontiguousarray(_to_layout(images, self.layout)))


def _set_description(predictor: Predictor, metadata: ExportMetadata | None, shape: list) -> None:
    if metadata is not None:
        predictor.preprocess, predictor.labels, predictor.layout = metadata.preprocess, metadata.labels, metadata.layout
    else:
        predictor.preprocess, predictor.layout = _fallback_preprocess(shape)
        predictor.labels = None


def _to_layout(images: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)) if layout == "nhwc" else images


def _in_fixed_batches(images: np.ndarray, batch: int, run) -> np.ndarray:
    """Runs a fixed-batch model over any number of images (the last chunk padded)."""
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        count = len(chunk)
        if count < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])
        outputs.append(np.asarray(run(chunk))[:count])
    return np.concatenate(outputs).astype(np.float32)


def load_onnx(path: Path) -> OnnxPredictor:
    return OnnxPredictor(path)


def load_tflite(path: Path) -> LiteRTPredictor:
    return LiteRTPredictor(path)
