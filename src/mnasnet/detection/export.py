"""Detector export: ONNX float32 (optionally with NMS in the graph), TFLite float32 and full-integer int8.

Every file keeps the network's two outputs apart, ``cls_logits`` ``[B, N, C]`` and ``bbox_regression``
``[B, N, 4]`` (int8 files: each with its own scale), and carries what decodes them: the
:class:`~mnasnet.detection.model.DetectorConfig` (head, size, classes, labels, normalisation,
post-processing), the anchor settings with the head's map sizes, and the quantisation parameters.
An Ethos-U NPU (Vela) runs no NMS, so decoding and NMS stay on the CPU: the predictors here run the
file with ONNX Runtime or LiteRT and post-process with :mod:`mnasnet.detection.postprocess`.
An ONNX file exported with ``nms=True`` outputs final detections itself (``NonMaxSuppression``)::

    export_detector_tflite("ssdlite.safetensors", "ssdlite_int8.tflite", int8=True, calibration="faces-coins")
    predictor = load_tflite_predictor("ssdlite_int8.tflite")
    detections = predictor.detect(images, original_sizes)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnasnet.deploy.common import check_export_packages, check_writable
from mnasnet.deploy.export_tflite import check_full_integer, force_int8_io
from mnasnet.deploy.graph import LAYOUTS, POOLINGS
from mnasnet.deploy.quantize import DeployError
from mnasnet.detection import DetectionError
from mnasnet.detection.anchors import anchors_from_dict
from mnasnet.detection.model import Detector, DetectorConfig, feature_map_sizes, load_detector
from mnasnet.detection.runtime import DetectionPredictor
from mnasnet.errors import CheckpointError, DataError
from mnasnet.extras import require
from mnasnet.fileio import atomic_path

__all__ = [
    "DEFAULT_CALIBRATION_IMAGES",
    "DetectorExportMetadata",
    "LiteRTDetectionPredictor",
    "OnnxDetectionPredictor",
    "detection_calibration_images",
    "export_detector",
    "export_detector_onnx",
    "export_detector_tflite",
    "load_onnx_predictor",
    "load_tflite_predictor",
    "metadata_summary",
    "read_detector_metadata",
]

METADATA_KEY = "mnasnet_detector"  # beside classifiers' "mnasnet": a classifier loader never mistakes one for the other
FORMAT_NAME = "mnasnet-detector-export"
FORMAT_VERSION = 1
OPSET = 20
FORMATS = ("onnx", "tflite")
DEFAULT_CALIBRATION_IMAGES = (
    128  # detection inputs are larger than ImageNet's: 128 keeps an SSDLite export near a minute
)
RAW_OUTPUTS = ("cls_logits", "bbox_regression")
NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections", *RAW_OUTPUTS)


@dataclasses.dataclass
class DetectorExportMetadata:
    """What an exported detector file carries so that ``detect predict`` and ``evaluate`` need nothing else.

    Attributes:
        config: the detector's settings (head, classes, labels, normalisation, post-processing).
        anchors: the anchor settings (:meth:`DefaultBoxes.to_dict` / :meth:`GridAnchors.to_dict`).
        image_size: ``(height, width)`` of the input the file takes.
        map_sizes: ``(height, width)`` of each head map, which with ``anchors`` gives the anchor tensor.
        layout: ``"nchw"`` or ``"nhwc"`` input.
        precision: ``"float32"`` or ``"int8"``.
        batch: the fixed batch size, or ``None`` for a dynamic batch.
        nms: whether the file outputs final detections (ONNX ``NonMaxSuppression``) beside the raw outputs.
        class_output: what the ``cls_logits`` output holds: ``"logits"``, or ``"scores"`` (int8 files:
            class probabilities, softmax for SSDLite and sigmoid for RetinaNet, computed on the NPU).
        outputs: role (``cls_logits``, ``bbox_regression``, ...) -> the file's output tensor name.
        input_quantization / output_quantization: ``{"scale", "zero_point"}`` of int8 tensors
            (outputs by role); ``None`` for float files.
        quantization: how weights and activations were quantised; ``None`` for float files.
        extra: provenance (library versions).
    """

    config: DetectorConfig
    anchors: dict[str, Any]
    image_size: tuple[int, int]
    map_sizes: list[tuple[int, int]]
    layout: str = "nchw"
    precision: str = "float32"
    batch: int | None = None
    nms: bool = False
    class_output: str = "logits"
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    input_quantization: dict[str, Any] | None = None
    output_quantization: dict[str, dict[str, Any]] | None = None
    quantization: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def anchor_boxes(self) -> torch.Tensor:
        """The ``[N, 4]`` pixel anchors (x1, y1, x2, y2) the file's predictions are offsets from."""
        return anchors_from_dict(self.anchors).generate(self.image_size, self.map_sizes)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["config"] = self.config.to_dict()
        return json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **data}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "file") -> DetectorExportMetadata:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.pop("format", None) != FORMAT_NAME:
                raise ValueError("not mnasnet detector export metadata")
            version = data.pop("format_version", 0)
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise CheckpointError(f"{source} was exported by a newer mnasnet (detector export {version})")
            known = {field.name for field in dataclasses.fields(cls)}
            data = {key: value for key, value in data.items() if key in known}
            data["config"] = DetectorConfig.from_dict(data["config"])
            data["image_size"] = tuple(int(side) for side in data["image_size"])
            data["map_sizes"] = [tuple(int(side) for side in size) for size in data["map_sizes"]]
            metadata = cls(**data)
            if metadata.class_output not in ("logits", "scores"):
                raise ValueError(f"class_output {metadata.class_output!r}")
            anchors_from_dict(metadata.anchors)  # fails here, not at the first prediction
        except CheckpointError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as error:
            raise CheckpointError(f"{source} has corrupt mnasnet detector metadata ({error})") from None
        return metadata


# -- reading and writing the metadata --------------------------------------------------------


def _onnx_metadata_text(path: Path) -> str | None:
    onnx = require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError, ...
        raise CheckpointError(f"{path} is not a readable ONNX file ({type(error).__name__})") from None
    return next((prop.value for prop in model.metadata_props if prop.key == METADATA_KEY), None)


def _tflite_metadata_text(path: Path) -> str | None:
    schema = require("ai_edge_litert.schema_py_generated")
    from mnasnet.deploy.metadata import _read_tflite_bytes

    data = _read_tflite_bytes(path)
    try:
        model = schema.Model.GetRootAs(data, 0)
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            if entry.Name() and entry.Name().decode() == METADATA_KEY:
                return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    except Exception as error:  # flatbuffers raises IndexError, struct.error, ... on garbage
        raise CheckpointError(f"{path} is not a readable TFLite file ({type(error).__name__})") from None
    return None


def read_detector_metadata(path: str | os.PathLike) -> DetectorExportMetadata:
    """The metadata of a detector exported by :func:`export_detector_onnx` or :func:`export_detector_tflite`.

    Raises:
        CheckpointError: the file is missing, unreadable, not a ``.onnx``/``.tflite`` file, or not a
            detector exported by mnasnet (a classifier export, or a foreign file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".tflite"):
        raise CheckpointError(f"{path}: not an exported detector (.onnx or .tflite)")
    text = _onnx_metadata_text(path) if suffix == ".onnx" else _tflite_metadata_text(path)
    if text is None:
        raise CheckpointError(
            f"{path} carries no mnasnet detector metadata (a classifier export, or a file exported elsewhere); "
            "export detectors with `mnasnet detect export`"
        )
    return DetectorExportMetadata.from_json(text, str(path))


def _write_tflite_metadata(source: Path, target: Path, text: str) -> None:
    """Copies the TFLite file ``source`` to ``target`` with ``text`` in its metadata table."""
    schema = require("ai_edge_litert.schema_py_generated")
    flatbuffer_utils = require("ai_edge_litert.tools.flatbuffer_utils")

    model = flatbuffer_utils.read_model(str(source))
    model.metadata = [
        entry for entry in (model.metadata or []) if entry.name not in (METADATA_KEY, METADATA_KEY.encode())
    ]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(model.buffers) - 1
    model.metadata.append(entry)
    flatbuffer_utils.write_model(model, str(target))


# -- the source detector and calibration images ----------------------------------------------


def _open_detector(weights: str | os.PathLike | Detector) -> Detector:
    if isinstance(weights, Detector):
        return weights.eval()
    path = Path(weights)
    if path.suffix.lower() in (".onnx", ".tflite"):
        raise DeployError(f"{path} is already an exported file; export from a detector checkpoint")
    return load_detector(path)  # CheckpointError names a classification checkpoint as such


def detection_calibration_images(
    config: DetectorConfig,
    source: str | os.PathLike | np.ndarray,
    *,
    limit: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
) -> np.ndarray:
    """Up to ``limit`` training images of a detection dataset, through the detector's evaluation transform.

    Args:
        config: the detector (its size, head and normalisation).
        source: a built-in dataset name, a folder with ``train.json`` (COCO), or float32 NCHW images
            already normalised.

    Returns:
        float32 NCHW images, a seeded random subset when the split holds more than ``limit``.
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[1:] != (3, config.size, config.size) or len(source) == 0:
            raise DataError(
                f"calibration images must be a non-empty [N, 3, {config.size}, {config.size}] array, got {source.shape}"
            )
        return source.astype(np.float32)
    from mnasnet.detection.data import DetectionDataset, eval_transform, load_coco
    from mnasnet.detection.synthetic import resolve_detection_dataset

    folder = resolve_detection_dataset(source)
    data = load_coco(folder / "train.json", check_image_sizes=False)
    transform = eval_transform(config.size, letterbox=config.head == "retinanet")
    dataset = DetectionDataset(data, transform, mean=config.mean, std=config.std)
    indices = np.arange(len(dataset))
    if len(indices) > limit:
        indices = np.sort(np.random.default_rng(seed).choice(len(indices), size=limit, replace=False))
    return np.stack([dataset[int(index)][0].numpy() for index in indices]).astype(np.float32)


def _calibration(config: DetectorConfig, calibration, *, int8: bool, limit: int) -> np.ndarray | None:
    if not int8:
        if calibration is not None:
            raise DeployError("--calibration only applies to int8 exports: add --int8")
        return None
    if calibration is None:
        raise DeployError(
            "int8 export needs calibration images: --calibration DATA (a built-in detection dataset such as "
            "faces-coins, or a folder with train.json in COCO format)"
        )
    return detection_calibration_images(config, calibration, limit=limit)


def _base_metadata(detector: Detector, *, layout: str, precision: str, batch: int | None, nms: bool = False, **extra):
    import mnasnet

    config = detector.config
    size = (config.size, config.size)
    return DetectorExportMetadata(
        config=config,
        anchors=config.anchor_generator.to_dict(),
        image_size=size,
        map_sizes=feature_map_sizes(config, size),
        layout=layout,
        precision=precision,
        batch=batch,
        nms=nms,
        extra={"mnasnet_version": mnasnet.__version__, "torch_version": torch.__version__, **extra},
    )


def _sample(config: DetectorConfig, batch: int, layout: str) -> torch.Tensor:
    size = config.size
    shape = (batch, size, size, 3) if layout == "nhwc" else (batch, 3, size, size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _check_choices(layout: str, pooling: str) -> None:
    if layout not in LAYOUTS:
        raise DeployError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if pooling not in POOLINGS:
        raise DeployError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


# -- ONNX --------------------------------------------------------------------------------------


def export_detector_onnx(
    weights: str | os.PathLike | Detector,
    out: str | os.PathLike,
    *,
    nms: bool = False,
    batch: int | str | None = "dynamic",
    layout: str = "nchw",
) -> Path:
    """Exports a detector to float32 ONNX with its metadata.

    Args:
        weights: a :class:`Detector` or a detector checkpoint.
        out: the ``.onnx`` file to write (atomically).
        nms: also output final detections, decoded and suppressed in the graph (``TopK`` per class
            and ``NonMaxSuppression``, SSDLite's post-processing): ``boxes`` ``[B, D, 4]`` in input
            pixels, ``scores`` ``[B, D]``, ``labels`` ``[B, D]``, ``num_detections`` ``[B]`` (the
            valid slots come first), beside ``cls_logits`` and ``bbox_regression``.
        batch: a fixed batch size, or ``"dynamic"``.
        layout: ``"nchw"`` (default) or ``"nhwc"`` input.

    Raises:
        DeployError: an option that cannot work.
        CheckpointError: ``weights`` is not a detector checkpoint.
    """
    from mnasnet.deploy.common import parse_batch
    from mnasnet.detection.export_graph import DetectorWithNMS, ExportableDetector, onnx_nms

    out = check_writable(out, ".onnx")
    check_export_packages("onnx", False)
    _check_choices(layout, "mean")
    batch_size = parse_batch(batch, allow_dynamic=True, fmt="ONNX")
    detector = _open_detector(weights)
    config = detector.config
    if nms and config.head != "ssdlite":
        raise DeployError("in-graph NMS is built for SSDLite; export a RetinaNet without --nms (the runtime decodes)")
    module = ExportableDetector(detector, layout=layout)
    metadata = _base_metadata(detector, layout=layout, precision="float32", batch=batch_size, nms=nms)
    if nms:
        module = DetectorWithNMS(module, metadata.anchor_boxes(), metadata.image_size).eval()
    names = NMS_OUTPUTS if nms else RAW_OUTPUTS
    metadata.outputs = {name: name for name in names}
    sample = _sample(config, batch_size or 2, layout)  # batch 2 so the exporter cannot specialise on 1
    import onnx

    with tempfile.TemporaryDirectory(prefix="mnasnet-onnx-") as workdir:
        raw = Path(workdir) / "raw.onnx"
        with _quiet():
            program = torch.onnx.export(
                module,
                (sample,),
                input_names=["images"],
                output_names=list(names),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},) if batch_size is None else None,
                opset_version=OPSET,
                dynamo=True,
                optimize=True,
                verbose=False,
                custom_translation_table={torch.ops.mnasnet_export.nms.default: onnx_nms} if nms else None,
            )
            program.save(str(raw))
        proto = onnx.load(str(raw))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata.to_json()
        with atomic_path(out) as temp:
            onnx.save(proto, str(temp))
    return out


# -- TFLite ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """The converters print progress and diagnostics to stdout; keep the CLI's output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _tflite_outputs(path: Path) -> dict[str, dict[str, Any]]:
    """Signature output name (``output_0``, ...) -> tensor name, dtype, scale and zero point."""
    schema = require("ai_edge_litert.schema_py_generated")

    model = schema.Model.GetRootAs(bytearray(path.read_bytes()), 0)
    graph = model.Subgraphs(0)
    types = {value: key.lower() for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    signature = model.SignatureDefs(0)

    def describe(index: int) -> dict[str, Any]:
        tensor = graph.Tensors(index)
        quant = tensor.Quantization()
        has_scale = quant is not None and quant.ScaleLength() > 0
        return {
            "name": tensor.Name().decode(),
            "dtype": types[tensor.Type()],
            "scale": float(quant.Scale(0)) if has_scale else None,
            "zero_point": int(quant.ZeroPoint(0)) if has_scale and quant.ZeroPointLength() else None,
        }

    details = {signature.Outputs(i).Name().decode(): describe(signature.Outputs(i).TensorIndex())
               for i in range(signature.OutputsLength())}  # fmt: skip
    details["input"] = describe(graph.Inputs(0))
    return details


def _observe_head_outputs(prepared: torch.fx.GraphModule, spec) -> None:
    """Gives each head concatenation, and the class softmax or sigmoid, an observer of its own.

    The LiteRT quantiser leaves ``cat`` and ``softmax`` unannotated. For ``cat`` the converter then
    requantises every map's predictions into one input's range and clips the others (int8 logits then
    correlate ~0.85 with the float ones); observed, the output gets a scale that covers all maps. A
    ``softmax`` or ``sigmoid`` would stay float (on the CPU); observed with TFLite's fixed int8 output
    parameters (scale 1/256, zero point -128) it becomes an int8 SOFTMAX or LOGISTIC that Vela runs
    on the NPU.
    """
    from torchao.quantization.pt2e.observer import FixedQParamsObserver

    from mnasnet.deploy.quantize import _is_observer

    graph = prepared.graph
    # an unobserved sigmoid is RetinaNet's class output (its input, the cat, was unannotated); the SE
    # gates' sigmoids already have the quantiser's fixed-scale observers
    fixed = (torch.ops.aten.softmax.int, torch.ops.aten._softmax.default, torch.ops.aten.sigmoid.default)
    heads = [
        node
        for node in list(graph.nodes)
        if node.target == torch.ops.aten.cat.default
        or (node.target in fixed and not any(_is_observer(user) for user in node.users))
    ]
    for index, node in enumerate(heads):
        name = f"activation_post_process_head_{index}"
        if node.target in fixed:
            observer = FixedQParamsObserver(
                scale=1 / 256, zero_point=-128, dtype=torch.int8, quant_min=-128, quant_max=127
            )
        else:
            observer = spec.observer_or_fake_quant_ctr(
                dtype=spec.dtype, quant_min=spec.quant_min, quant_max=spec.quant_max, qscheme=spec.qscheme
            )
        prepared.add_module(name, observer)
        with graph.inserting_after(node):
            observed = graph.call_module(name, (node,))
        node.replace_all_uses_with(observed, delete_user_cb=lambda user, observed=observed: user is not observed)
    prepared.recompile()


def _quantize(module: torch.nn.Module, sample: torch.Tensor, calibration: np.ndarray, *, per_channel: bool):
    """PT2E static int8 (``mnasnet.deploy.quantize.quantize_pt2e``'s recipe) with observed head outputs."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from mnasnet.deploy.quantize import int8_quantizer_class

    config = get_symmetric_quantization_config(is_per_channel=per_channel)
    quantizer = int8_quantizer_class()().set_global(config)
    prepared = prepare_pt2e(torch.export.export(module, (sample,)).module(), quantizer)
    _observe_head_outputs(prepared, config.output_activation)
    from tqdm import tqdm

    with torch.no_grad():
        for index in tqdm(range(len(calibration)), desc="calibrating (PT2E)", leave=False):  # the graph is batch 1
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[index : index + 1])))
    return move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False)), quantizer


def export_detector_tflite(
    weights: str | os.PathLike | Detector,
    out: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: str | os.PathLike | np.ndarray | None = None,
    per_tensor: bool = False,
    layout: str = "nhwc",
    pooling: str = "mean",
    calibration_limit: int = DEFAULT_CALIBRATION_IMAGES,
) -> Path:
    """Exports a detector to TFLite, float32 or full-integer int8 (int8 input and outputs), batch 1.

    The two outputs stay separate (``cls_logits`` and ``bbox_regression``, each with its own int8
    scale); every operator of the int8 file runs on an Ethos-U NPU (Vela), and decoding + NMS are
    left to the CPU (:func:`load_tflite_predictor`). The int8 file's class output holds class
    probabilities (an int8 SOFTMAX, or LOGISTIC for RetinaNet): int8 logits would step by ~0.35 across
    the background's large range; the metadata's ``class_output`` says ``"scores"``.

    Args:
        weights: a :class:`Detector` or a detector checkpoint.
        out: the ``.tflite`` file to write (atomically).
        int8: full-integer quantisation with PT2E (needs ``calibration``).
        calibration: a detection dataset (built-in name or folder with ``train.json``) whose training
            images go through the detector's evaluation transform, or float32 NCHW images.
        per_tensor: one weight scale per tensor (for NPUs that take only that) instead of per channel.
        layout: ``"nhwc"`` (default: no transposes) or ``"nchw"`` input.
        pooling: SE means as ``"mean"`` (faster on CPU) or ``"avgpool"`` (faster on an Ethos-U).
        calibration_limit: at most this many calibration images.

    Raises:
        DeployError: an option or combination that cannot work.
        CheckpointError: ``weights`` is not a detector checkpoint.
        DataError: calibration images missing or unreadable.
    """
    from mnasnet.deploy.common import to_layout
    from mnasnet.detection.export_graph import ExportableDetector

    out = check_writable(out, ".tflite")
    check_export_packages("tflite", int8)
    _check_choices(layout, pooling)
    import litert_torch

    detector = _open_detector(weights)
    from mnasnet.detection.qat import read_detector_qat_state

    qat = read_detector_qat_state(weights) if int8 else None  # a QAT checkpoint brings its ranges: no calibration
    images = None if qat else _calibration(detector.config, calibration, int8=int8, limit=calibration_limit)
    module = ExportableDetector(detector, layout=layout, pooling=pooling, class_scores=int8)
    sample = _sample(detector.config, 1, layout)
    metadata = _base_metadata(
        detector,
        layout=layout,
        precision="int8" if int8 else "float32",
        batch=1,
        litert_torch_version=litert_torch.__version__,
    )
    with tempfile.TemporaryDirectory(prefix="mnasnet-tflite-") as workdir:
        raw = Path(workdir) / "raw.tflite"
        with _quiet():
            if int8:
                from litert_torch.quantize.quant_config import QuantConfig

                if qat is not None:
                    from mnasnet.detection.qat import convert_detector_qat

                    converted, quantizer = convert_detector_qat(
                        detector, qat, per_channel=not per_tensor, layout=layout, pooling=pooling
                    )
                else:
                    converted, quantizer = _quantize(
                        module, sample, to_layout(images, layout), per_channel=not per_tensor
                    )
                edge = litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
            else:
                edge = litert_torch.convert(module, (sample,))
            edge.export(str(raw))
        if int8:
            force_int8_io(raw)
            check_full_integer(raw)
        details = _tflite_outputs(raw)
        # the module returns (cls_logits, bbox_regression): the signature names them output_0, output_1
        roles = dict(zip(RAW_OUTPUTS, ("output_0", "output_1"), strict=True))
        metadata.outputs = {role: details[key]["name"] for role, key in roles.items()}
        if int8:
            metadata.class_output = "scores"
            metadata.input_quantization = {k: details["input"][k] for k in ("scale", "zero_point")}
            metadata.output_quantization = {
                role: {k: details[key][k] for k in ("scale", "zero_point")} for role, key in roles.items()
            }
            metadata.quantization = {
                "tool": "litert-torch PT2E",
                "weights": f"int8 per-{'tensor' if per_tensor else 'channel'} symmetric",
                "activations": f"int8 per-tensor ({'QAT ranges' if qat else 'histogram observer'})",
                "calibration_images": 0 if qat else int(len(images)),
            }
        with atomic_path(out) as temp:
            _write_tflite_metadata(raw, temp, metadata.to_json())
    return out


def export_detector(
    weights: str | os.PathLike | Detector,
    out: str | os.PathLike,
    *,
    fmt: str,
    int8: bool = False,
    calibration: str | os.PathLike | np.ndarray | None = None,
    nms: bool = False,
    **options: Any,
) -> Path:
    """:func:`export_detector_onnx` or :func:`export_detector_tflite` by ``fmt``, refusing what the format lacks.

    Raises:
        DeployError: an unknown format, ``int8`` for ONNX, or ``nms`` for TFLite.
    """
    if fmt not in FORMATS:
        raise DeployError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        if int8:
            raise DeployError("int8 detectors are exported as full-integer TFLite (--format tflite --int8)")
        if calibration is not None:
            raise DeployError("--calibration only applies to int8 exports (--format tflite --int8)")
        tflite_only = sorted(set(options) & {"per_tensor", "pooling", "calibration_limit"})
        if tflite_only:
            raise DeployError(f"{', '.join(tflite_only)} apply to TFLite exports")
        return export_detector_onnx(weights, out, nms=nms, **options)
    if nms:
        raise DeployError("--nms is for ONNX; TFLite files keep raw outputs and NMS runs on the CPU (Vela runs no NMS)")
    return export_detector_tflite(weights, out, int8=int8, calibration=calibration, **options)


# -- predictors over the files ---------------------------------------------------------------


def _to_layout(images: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)) if layout == "nhwc" else np.ascontiguousarray(images)


def _check_images(images: np.ndarray, metadata: DetectorExportMetadata) -> np.ndarray:
    images = np.ascontiguousarray(images, dtype=np.float32)
    height, width = metadata.image_size
    if images.ndim != 4 or images.shape[1:] != (3, height, width):
        raise DetectionError(f"this file takes [B, 3, {height}, {width}] normalised images, got {tuple(images.shape)}")
    return images


class _ExportedDetectionPredictor(DetectionPredictor):
    """What the ONNX and LiteRT predictors share: the metadata, anchors and input checks."""

    def _describe(self, path: Path, metadata: DetectorExportMetadata) -> None:
        self.path, self.metadata = path, metadata
        self.config = metadata.config
        self.anchors = metadata.anchor_boxes()


class OnnxDetectionPredictor(_ExportedDetectionPredictor):
    """An exported detector ``.onnx`` run by ONNX Runtime on the CPU; decoding + NMS as the file says.

    Files exported with ``nms=True`` are post-processed in the graph (``detect`` reads their
    detections); the others by :mod:`mnasnet.detection.postprocess` on the raw outputs.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        from mnasnet.threads import thread_count

        path = Path(path)
        self._describe(path, read_detector_metadata(path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or thread_count()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            raise CheckpointError(f"{path} cannot be loaded by ONNX Runtime ({str(error).splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.name = "onnxruntime" + ("-nms" if self.metadata.nms else "")

    def _run(self, images: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        images = _to_layout(_check_images(images, self.metadata), self.metadata.layout)
        batch = self.metadata.batch
        if batch is None or len(images) == batch:
            return self.session.run([self.metadata.outputs[n] for n in names], {self.input_name: images})
        chunks = []
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            outputs = self.session.run([self.metadata.outputs[n] for n in names], {self.input_name: padded})
            chunks.append([output[: len(chunk)] for output in outputs])
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cls_logits, bbox_regression = self._run(images, RAW_OUTPUTS)
        return cls_logits.astype(np.float32), bbox_regression.astype(np.float32)

    def detect(
        self,
        images: np.ndarray,
        original_sizes: Sequence[Sequence[int]] | None = None,
        image_sizes: Sequence[Sequence[int]] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Detections per image; a file with NMS in the graph decodes and suppresses them itself.

        See :meth:`DetectionPredictor.detect <mnasnet.detection.runtime.DetectionPredictor.detect>`.
        """
        if not self.metadata.nms:
            return super().detect(images, original_sizes, image_sizes)
        from mnasnet.detection.runtime import rescale

        boxes, scores, labels, counts = self._run(np.asarray(images), NMS_OUTPUTS[:4])
        input_size = tuple(self.metadata.image_size)
        image_sizes = [tuple(size) for size in image_sizes] if image_sizes is not None else [input_size] * len(boxes)
        detections = []
        for index, count in enumerate(counts.tolist()):
            height, width = image_sizes[index]
            found = boxes[index, :count].astype(np.float32)
            if (height, width) != input_size:  # the graph clips to the whole input; clip to the content
                found = np.clip(found, 0, np.array([width, height, width, height], dtype=np.float32))
            detections.append(
                {"boxes": found, "scores": scores[index, :count].astype(np.float32), "labels": labels[index, :count]}
            )
        return rescale(detections, image_sizes, original_sizes) if original_sizes is not None else detections


def _scores_to_logits(scores: np.ndarray, head: str) -> np.ndarray:
    """Logits that give back ``scores`` under the head's softmax (log-probabilities) or sigmoid."""
    probabilities = np.clip(scores, 1e-8, 1 - 1e-7).astype(np.float32)
    if head == "ssdlite":
        return np.log(probabilities)
    return np.log(probabilities) - np.log1p(-probabilities)


class LiteRTDetectionPredictor(_ExportedDetectionPredictor):
    """An exported detector ``.tflite`` run by LiteRT (XNNPACK); int8 files are (de)quantised here."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        interpreter_class = require("ai_edge_litert.interpreter").Interpreter
        from mnasnet.threads import thread_count

        path = Path(path)
        self._describe(path, read_detector_metadata(path))
        try:
            self.interpreter = interpreter_class(model_path=str(path), num_threads=threads or thread_count())
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path} cannot be loaded by LiteRT ({str(error).splitlines()[0]})") from None
        self.input = self.interpreter.get_input_details()[0]
        by_name = {detail["name"]: detail for detail in self.interpreter.get_output_details()}
        try:
            self.outputs = [by_name[self.metadata.outputs[role]] for role in RAW_OUTPUTS]
        except KeyError:
            raise CheckpointError(f"{path}: its metadata names outputs the file does not have") from None
        self.name = "litert-int8" if self.input["dtype"] == np.int8 else "litert"

    def _invoke(self, image: np.ndarray) -> list[np.ndarray]:
        if self.input["dtype"] == np.int8:
            from mnasnet.deploy.runtimes import quantize_input

            image = quantize_input(image, *self.input["quantization"])
        self.interpreter.set_tensor(self.input["index"], image)
        self.interpreter.invoke()
        results = []
        for detail in self.outputs:
            value = self.interpreter.get_tensor(detail["index"])
            if detail["dtype"] == np.int8:
                scale, zero_point = detail["quantization"]
                value = (value.astype(np.float32) - zero_point) * np.float32(scale)
            results.append(value.astype(np.float32))
        return results

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = _to_layout(_check_images(images, self.metadata), self.metadata.layout)
        outputs = [self._invoke(images[index : index + 1]) for index in range(len(images))]  # batch-1 graph
        cls_logits, bbox_regression = (np.concatenate(parts) for parts in zip(*outputs, strict=True))
        if self.metadata.class_output == "scores":
            cls_logits = _scores_to_logits(cls_logits, self.config.head)
        return cls_logits, bbox_regression


def load_onnx_predictor(path: str | os.PathLike) -> OnnxDetectionPredictor:
    """An exported detector ``.onnx`` as a :class:`~mnasnet.detection.runtime.DetectionPredictor`."""
    return OnnxDetectionPredictor(path)


def load_tflite_predictor(path: str | os.PathLike) -> LiteRTDetectionPredictor:
    """An exported detector ``.tflite`` as a :class:`~mnasnet.detection.runtime.DetectionPredictor`."""
    return LiteRTDetectionPredictor(path)


def metadata_summary(metadata: DetectorExportMetadata) -> Mapping[str, Any]:
    """A short description of an exported detector, for the CLI."""
    config = metadata.config
    return {
        "head": config.head,
        "size": config.size,
        "classes": config.num_classes - 1,
        "precision": metadata.precision,
        "layout": metadata.layout,
        "nms_in_graph": metadata.nms,
        "anchors": int(metadata.anchor_boxes().shape[0]),
    }
