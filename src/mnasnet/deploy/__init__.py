"""Deployment: ONNX and TFLite export, int8 quantisation, runtimes, benchmark and Ethos-U readiness.

:func:`mnasnet.runtime.load_predictor` opens ``.onnx`` and ``.tflite`` files through
:mod:`mnasnet.deploy.runtimes`; the heavy libraries (onnxruntime, LiteRT,
litert-torch, Vela) are imported only when used.
"""

import logging
import os
import warnings

# The converters' C++ and Python logs (absl INFO lines, torchao's optional CUDA
# kernels, pytree deprecations) bury our one-line output; keep only real errors.
# Set before litert-torch, TensorFlow Lite or torchao are first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GLOG_minloglevel", "2")
for _name in ("torchao", "torch.utils._pytree", "torch._export", "absl", "litert_torch"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec.*")

from mnasnet.deploy.export_onnx import export_onnx  # noqa: E402
from mnasnet.deploy.export_tflite import export_tflite  # noqa: E402
from mnasnet.deploy.metadata import ExportMetadata, read_metadata  # noqa: E402
from mnasnet.deploy.quantize import DeployError  # noqa: E402
from mnasnet.deploy.runtimes import LiteRTPredictor, OnnxPredictor  # noqa: E402

__all__ = [
    "DeployError",
    "ExportMetadata",
    "LiteRTPredictor",
    "OnnxPredictor",
    "export_onnx",
    "export_tflite",
    "read_metadata",
]
