"""Post-training int8 quantisation: calibration images, PT2E (for TFLite) and ONNX Runtime QDQ.

Both paths are static: weights int8 (per-channel by default, per-tensor on
request) and activations int8 with scales calibrated on real images run through
the weights' own evaluation preprocessing. ONNX Runtime's dynamic int8 is avoided
on purpose: it requantises activations at run time and is about 15x slower for
convnets here.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from mnasnet.data.images import find_images, load_image
from mnasnet.data.preprocess import Preprocess, build_eval_transform
from mnasnet.errors import DataError, MnasNetError
from mnasnet.extras import require

__all__ = [
    "DEFAULT_CALIBRATION_IMAGES",
    "DeployError",
    "load_calibration_images",
    "quantize_onnx",
    "quantize_pt2e",
]

DEFAULT_CALIBRATION_IMAGES = 200  # NXP's zoo uses 1000; 200 keeps an A1 x1.0 export near a minute on 2 cores


class DeployError(MnasNetError, ValueError):
    """An export option or combination of options that cannot work."""


def calibration_files(source: str | os.PathLike) -> list[Path]:
    """The image files a ``--calibration`` value names: a folder (recursive) or a dataset (its train split).

    Raises:
        DataError: nothing there, or no images in it.
    """
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists():
        from mnasnet.data.datasets import BUILTIN_DATASETS, resolve_dataset

        if text not in BUILTIN_DATASETS:
            raise DataError(
                f"calibration images not found: {text} (give a folder of images or a built-in dataset: "
                f"{', '.join(BUILTIN_DATASETS)})"
            )
        path = resolve_dataset(text)
    # Calibrate on a dataset's training images: its val/ split is for measuring accuracy.
    if path.is_dir() and (path / "train").is_dir() and (path / "val").is_dir():
        path = path / "train"
    files = find_images(path)
    if not files or (len(files) == 1 and not files[0].is_file()):
        raise DataError(f"no calibration images in {path}")
    return files


def load_calibration_images(
    source: str | os.PathLike,
    preprocess: Preprocess,
    *,
    limit: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
) -> np.ndarray:
    """Up to ``limit`` images from ``source``, preprocessed, as float32 NCHW.

    With more images than ``limit`` a seeded random subset is taken, so every class
    of a dataset folder is represented rather than the first few in sorted order.
    """
    from tqdm import tqdm

    files = calibration_files(source)
    if len(files) > limit:
        chosen = np.random.default_rng(seed).choice(len(files), size=limit, replace=False)
        files = [files[index] for index in sorted(chosen)]
    transform = build_eval_transform(preprocess)
    images = [transform(load_image(path)).numpy() for path in tqdm(files, desc="calibration images", leave=False)]
    return np.stack(images).astype(np.float32)


def _is_observer(node: torch.fx.Node) -> bool:
    return node.op == "call_module" and str(node.target).startswith("activation_post_process")


def _one_attribute_node_per_use(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Gives every user of a shared parameter (or constant) its own ``get_attr`` node.

    litert-torch's annotators put the weight node in each conv's pattern and skip a pattern any of
    whose nodes is already annotated, so of the convs that share a weight (RetinaNet's towers run
    on all five pyramid levels) only the first was quantised and the rest ran in float on the CPU.
    The nodes still read one parameter, so QAT trains it once and every use gets the same scales.
    """
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op != "get_attr" or len(node.users) < 2:
            continue
        for user in list(node.users)[1:]:
            with graph.inserting_before(user):
                copy = graph.get_attr(node.target)
            copy.meta = dict(node.meta)
            user.replace_input_with(node, copy)
    graph_module.recompile()
    return graph_module


def _has_quantized_output(node) -> bool:
    annotation = node.meta.get("quantization_annotation") if isinstance(node, torch.fx.Node) else None
    return annotation is not None and annotation.output_qspec is not None


def _annotate_missed_ops(graph_module: torch.fx.GraphModule, config) -> None:
    """Annotates what litert-torch's quantiser leaves float in our graphs.

    Without this they run as float ops on the CPU, between a DEQUANTIZE and a QUANTIZE (Vela counted
    14 in RetinaNet's FPN alone):

    * every ``add``: the quantiser's source-partition matcher finds none in a ``torch.export`` graph.
      Residual adds used to get int8 only from their consumers' observers, which left an add fed by
      another add unobserved;
    * the nearest-neighbour upsampling of an FPN's top-down path (a copy: it shares its input's scale);
    * a conv+ReLU pair whose conv also feeds other layers (P6 feeds its towers and, through a ReLU,
      P7): the pattern leaves the conv's output float, so it gets its own int8 output instead.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    convs = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
    upsamplings = (torch.ops.aten.upsample_nearest2d.vec, torch.ops.aten.upsample_nearest2d.default)
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        annotation = node.meta.get("quantization_annotation")
        if node.target in convs and annotation is not None and annotation.output_qspec is None and len(node.users) > 1:
            annotation.output_qspec = config.output_activation
            for user in node.users:
                user_annotation = user.meta.get("quantization_annotation")
                if user_annotation is not None and node not in user_annotation.input_qspec_map:
                    user_annotation.input_qspec_map[node] = config.input_activation
            continue
        if annotation is not None and annotation._annotated:
            continue
        inputs = [arg for arg in node.args if isinstance(arg, torch.fx.Node)]
        if not inputs or not all(_has_quantized_output(arg) for arg in inputs):
            continue  # a float input stays float
        if node.target in upsamplings:
            shared = SharedQuantizationSpec(inputs[0])
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={inputs[0]: shared}, output_qspec=shared, _annotated=True
            )
        elif node.target == torch.ops.aten.add.Tensor:
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={arg: config.input_activation for arg in inputs},
                output_qspec=config.output_activation,
                _annotated=True,
            )


@functools.cache
def int8_quantizer_class() -> type:
    """litert-torch's ``PT2EQuantizer`` that quantises every use of a shared weight (the class; build it yourself)."""
    require("litert_torch")
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    class Int8Quantizer(PT2EQuantizer):
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return _one_attribute_node_per_use(super().transform_for_annotation(model))

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            _annotate_missed_ops(model, self.global_config)
            return model

    return Int8Quantizer


def quantize_pt2e(module: torch.nn.Module, sample: torch.Tensor, calibration: np.ndarray, *, per_channel: bool = True):
    """PT2E static int8 quantisation of ``module`` (calibrated on ``calibration``, one image at a time).

    Returns the converted graph module and the quantiser, as ``litert_torch.convert`` wants them.
    ``calibration`` must already be in the module's input layout.
    """
    require("litert_torch")
    require("torchao")
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from tqdm import tqdm

    quantizer = int8_quantizer_class()().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    graph = torch.export.export(module, (sample,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    batch = sample.shape[0]
    with torch.no_grad():
        for start in tqdm(range(0, len(calibration), batch), desc="calibrating (PT2E)", leave=False):
            chunk = calibration[start : start + batch]
            if len(chunk) < batch:
                chunk = np.concatenate([chunk, calibration[: batch - len(chunk)]])
            prepared(torch.from_numpy(np.ascontiguousarray(chunk)))
    converted = convert_pt2e(prepared, fold_quantize=False)
    return move_exported_model_to_eval(converted), quantizer


class _ArrayReader:
    """ONNX Runtime's CalibrationDataReader over an array of images."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int | None) -> None:
        self.input_name = input_name
        # a fixed-batch file takes exactly that batch; a dynamic one takes 16 at a time
        step = batch or 16
        self.chunks = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            if batch and len(chunk) < batch:
                chunk = np.concatenate([chunk, images[: batch - len(chunk)]])
            self.chunks.append(np.ascontiguousarray(chunk))
        self.position = 0

    def get_next(self):
        if self.position >= len(self.chunks):
            return None
        self.position += 1
        return {self.input_name: self.chunks[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def quantize_onnx(
    float_path: Path, out_path: Path, calibration: np.ndarray, *, per_channel: bool = True, batch: int | None = None
) -> None:
    """Static int8 QDQ quantisation of an ONNX file with ONNX Runtime (int8 weights and activations).

    The QDQ form keeps float input and output; ONNX Runtime fuses each
    DequantizeLinear-op-QuantizeLinear group into an int8 kernel.
    """
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    input_name = onnx.load(str(float_path), load_external_data=False).graph.input[0].name
    reader = _ArrayReader(input_name, calibration, batch)
    CalibrationDataReader.register(_ArrayReader)
    quantize_static(
        str(float_path),
        str(out_path),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
