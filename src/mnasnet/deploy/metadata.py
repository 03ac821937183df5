"""What every exported file carries so that ``predict`` and ``evaluate`` need nothing else.

ONNX: one JSON string in ``metadata_props`` under the key ``mnasnet``.

TFLite: the same JSON in a named entry of the model's own ``metadata`` table
(a buffer called ``mnasnet``). That is the flatbuffer's native key-value store:
it survives every LiteRT loader, needs no extra package to read or write (the
TFLite Support metadata schema would need ``tflite-support``, which has no wheel
for current Pythons), and Vela and the interpreter ignore it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mnasnet.data.preprocess import Preprocess
from mnasnet.errors import CheckpointError
from mnasnet.extras import require

__all__ = ["METADATA_KEY", "ExportMetadata", "read_metadata", "read_onnx_metadata", "read_tflite_metadata"]

METADATA_KEY = "mnasnet"
FORMAT_VERSION = 1


@dataclasses.dataclass
class ExportMetadata:
    """The description of one exported file.

    Attributes:
        config: the model's :meth:`MnasNetConfig.to_dict`.
        preprocess: evaluation preprocessing of the weights.
        labels: class names, or ``None``.
        layout: ``"nchw"`` or ``"nhwc"``: the input tensor's layout.
        precision: ``"float32"`` or ``"int8"``.
        batch: the fixed batch size, or ``None`` for a dynamic batch.
        input_quantization / output_quantization: ``{"dtype", "scale", "zero_point"}`` of
            int8 input/output tensors, ``None`` for float tensors.
        quantization: how the weights and activations were quantised (scheme, tool,
            calibration images), ``None`` for float files.
        extra: provenance (source weights, exporter versions).
    """

    config: dict[str, Any]
    preprocess: Preprocess
    labels: list[str] | None = None
    layout: str = "nchw"
    precision: str = "float32"
    batch: int | None = None
    input_quantization: dict[str, Any] | None = None
    output_quantization: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        data = {"format": "mnasnet-export", "format_version": FORMAT_VERSION, **data}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "file") -> ExportMetadata:
        try:
            data = json.loads(text)
            if data.pop("format", None) != "mnasnet-export":
                raise ValueError("not mnasnet export metadata")
            if data.pop("format_version", 0) > FORMAT_VERSION:
                raise CheckpointError(f"{source} was exported by a newer mnasnet")
            known = {field.name for field in dataclasses.fields(cls)}
            data = {key: value for key, value in data.items() if key in known}
            data["preprocess"] = Preprocess.from_dict(data.get("preprocess") or {})
            return cls(**data)
        except CheckpointError:
            raise
        except (TypeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{source} has corrupt mnasnet metadata ({error})") from None


def read_onnx_metadata(path: str | os.PathLike) -> ExportMetadata | None:
    """The metadata of an ONNX file, or ``None`` when it was not exported by mnasnet."""
    onnx = require("onnx")

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError, ...
        raise CheckpointError(f"{path} is not a readable ONNX file ({type(error).__name__})") from None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ExportMetadata.from_json(prop.value, str(path))
    return None


def set_onnx_metadata(model, metadata: ExportMetadata) -> None:
    """Stores ``metadata`` in an in-memory ``onnx.ModelProto`` (replacing an older entry)."""
    for index in reversed(range(len(model.metadata_props))):
        if model.metadata_props[index].key == METADATA_KEY:
            del model.metadata_props[index]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()


def read_tflite_metadata(path: str | os.PathLike) -> ExportMetadata | None:
    """The metadata of a TFLite file, or ``None`` when it was not exported by mnasnet."""
    schema = require("ai_edge_litert.schema_py_generated")

    data = _read_tflite_bytes(path)
    try:
        model = schema.Model.GetRootAs(data, 0)
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            if entry.Name() and entry.Name().decode() == METADATA_KEY:
                buffer = model.Buffers(entry.Buffer())
                text = buffer.DataAsNumpy().tobytes().decode()
                return ExportMetadata.from_json(text, str(path))
    except CheckpointError:
        raise
    except Exception as error:  # flatbuffers raises IndexError, struct.error, ... on garbage
        raise CheckpointError(f"{path} is not a readable TFLite file ({type(error).__name__})") from None
    return None


def _read_tflite_bytes(path: str | os.PathLike) -> bytearray:
    data = bytearray(Path(path).read_bytes())
    # A flatbuffer's file identifier sits at bytes 4-8; "TFL3" for every TFLite model.
    if len(data) < 8 or bytes(data[4:8]) != b"TFL3":
        raise CheckpointError(f"{path} is not a TFLite file (no TFL3 identifier)")
    return data


def write_tflite_metadata(source: str | os.PathLike, target: str | os.PathLike, metadata: ExportMetadata) -> None:
    """Copies the TFLite file ``source`` to ``target`` with ``metadata`` added."""
    schema = require("ai_edge_litert.schema_py_generated")
    flatbuffer_utils = require("ai_edge_litert.tools.flatbuffer_utils")

    model = flatbuffer_utils.read_model(str(source))
    model.metadata = [
        entry for entry in (model.metadata or []) if entry.name not in (METADATA_KEY, METADATA_KEY.encode())
    ]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata.to_json().encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    flatbuffer_utils.write_model(model, str(target))


def read_metadata(path: str | os.PathLike) -> ExportMetadata | None:
    """The metadata of an exported ``.onnx`` or ``.tflite`` file (``None`` for foreign files)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return read_onnx_metadata(path)
    if suffix == ".tflite":
        return read_tflite_metadata(path)
    raise CheckpointError(f"{path}: not an exported model (.onnx or .tflite)")
