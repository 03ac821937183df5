"""Deployment: ONNX and TFLite export, int8 quantisation, runtimes, benchmark and Ethos-U readiness.

Importing this package registers the ``.onnx`` and ``.tflite`` runtimes with
:func:`mnasnet.runtime.load_predictor`; the heavy libraries (onnxruntime, LiteRT,
litert-torch, Vela) are imported only when used.
"""

from mnasnet.deploy.export_onnx import export_onnx
from mnasnet.deploy.export_tflite import export_tflite
from mnasnet.deploy.metadata import ExportMetadata, read_metadata
from mnasnet.deploy.quantize import DeployError
from mnasnet.deploy.runtimes import LiteRTPredictor, OnnxPredictor, load_onnx, load_tflite
from mnasnet.runtime import register_runtime

register_runtime(".onnx", load_onnx)
register_runtime(".tflite", load_tflite)

__all__ = [
    "DeployError",
    "ExportMetadata",
    "LiteRTPredictor",
    "OnnxPredictor",
    "export_onnx",
    "export_tflite",
    "read_metadata",
]
