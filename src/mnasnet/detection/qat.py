"""Quantisation-aware training graphs for detectors: the detector exporter's int8 scheme, fake-quantised.

The detector counterpart of :mod:`mnasnet.deploy.qat`. QAT trains the graph that
``export_detector_tflite(..., int8=True)`` quantises: :class:`~mnasnet.detection.export_graph.ExportableDetector`
with class probabilities out (BN folded once in float64, SSDLite's softmax or RetinaNet's sigmoid in
the graph), prepared for PT2E QAT with the classifier QAT's quantiser settings, per channel or per
tensor, and the detector exporter's extra observers: each head concatenation (as fake quantisation
with a moving-average range) and the softmax or sigmoid (TFLite's fixed int8 output: scale 1/256,
zero point -128).

The loss needs logits, not probabilities: :class:`LogitsTap` reads the fake-quantised class
concatenation (the int8 tensor the SOFTMAX of the exported file reads) during the forward pass.

A detector QAT checkpoint is an ordinary detector checkpoint (:func:`~mnasnet.detection.model.save_detector`:
the trained folded weights written back with identity BN layers, so folding them again gives the same
float32 weights) with ``extra["qat"]``: the per-channel flag and the activation ranges in graph order.
``export_detector_tflite`` loads those ranges instead of calibrating.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnasnet.deploy.qat import (
    _check_state,
    _load_ranges,
    _unfold,
    observers_frozen,
    prepare_qat,
    qat_state,
    sync_qparams,
)
from mnasnet.deploy.quantize import DeployError
from mnasnet.detection.model import Detector
from mnasnet.layers import ConvBNAct

__all__ = [
    "LogitsTap",
    "convert_detector_qat",
    "float_detector_from_qat",
    "prepare_detector_qat",
    "read_detector_qat_state",
]

_HEAD_OBSERVER = "activation_post_process_head_"  # the names detection.export._observe_head_outputs gives


def _fake_quantize_head_outputs(prepared: torch.fx.GraphModule, spec) -> None:
    """The exporter's head observers (:func:`~mnasnet.detection.export._observe_head_outputs`), as fake quantisation.

    The concatenations get the QAT spec's fake quantisation (a trained range); the softmax's fixed
    1/256 observer becomes the fake quantisation with those fixed parameters, so that the training graph
    outputs the probabilities the int8 file outputs.
    """
    from torchao.quantization.pt2e.fake_quantize import FixedQParamsFakeQuantize
    from torchao.quantization.pt2e.observer import FixedQParamsObserver

    from mnasnet.detection.export import _observe_head_outputs

    _observe_head_outputs(prepared, spec)
    for name, module in list(prepared.named_children()):
        if name.startswith(_HEAD_OBSERVER) and isinstance(module, FixedQParamsObserver):
            fixed = FixedQParamsObserver.with_args(
                scale=1 / 256, zero_point=-128, dtype=torch.int8, quant_min=-128, quant_max=127
            )
            setattr(prepared, name, FixedQParamsFakeQuantize(observer=fixed))


def prepare_detector_qat(
    detector: Detector,
    *,
    per_channel: bool = True,
    layout: str = "nchw",
    pooling: str = "mean",
    dynamic_batch: bool = True,
):
    """``detector``'s int8 export graph prepared for QAT: a ``GraphModule`` with fake quantisation, and its quantiser.

    ``forward(images)`` returns ``(class probabilities [B, N, C], bbox_regression [B, N, 4])``,
    fake-quantised as the int8 file computes them. ``detector`` is not changed.
    """
    from mnasnet.detection.export_graph import ExportableDetector

    module = ExportableDetector(detector, layout=layout, pooling=pooling, class_scores=True)
    size = detector.config.size
    batch = 2 if dynamic_batch else 1  # two images, so that the batch stays symbolic
    shape = (batch, size, size, 3) if layout == "nhwc" else (batch, 3, size, size)
    prepared, quantizer = prepare_qat(module, torch.zeros(shape), per_channel=per_channel, dynamic_batch=dynamic_batch)
    _fake_quantize_head_outputs(prepared, quantizer.global_config.output_activation)
    return prepared, quantizer


class LogitsTap:
    """Reads the fake-quantised class logits (the softmax's or sigmoid's input) of a prepared detector graph.

    Use around a forward pass (the graph may be wrapped by DDP)::

        with LogitsTap(prepared) as tap:
            scores, boxes = model(images)
        loss = ssd_loss(tap.logits, boxes, anchors, targets)
    """

    def __init__(self, prepared: torch.fx.GraphModule) -> None:
        classes = _class_output_node(prepared).args[0]
        self.module = prepared.get_submodule(classes.target)
        self.logits: torch.Tensor | None = None

    def _record(self, module, inputs, output) -> None:
        self.logits = output

    def __enter__(self) -> LogitsTap:
        self._handle = self.module.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.remove()


def _class_output_node(prepared: torch.fx.GraphModule) -> torch.fx.Node:
    """The softmax (SSDLite) or sigmoid (RetinaNet) node, whose input is the observed class concatenation."""
    targets = (torch.ops.aten.softmax.int, torch.ops.aten._softmax.default, torch.ops.aten.sigmoid.default)
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target in targets:
            source = node.args[0]  # the class concatenation's observer (SE blocks' sigmoids read no cat)
            observed = source.args[0] if isinstance(source, torch.fx.Node) and source.op == "call_module" else None
            if isinstance(observed, torch.fx.Node) and observed.target == torch.ops.aten.cat.default:
                return node
    raise DeployError("this graph has no observed class probabilities (was it prepared by prepare_detector_qat?)")


def convert_detector_qat(
    detector: Detector, state: dict[str, Any], *, per_channel: bool, layout: str = "nhwc", pooling: str = "mean"
):
    """The batch-1 int8 PT2E graph of ``detector``'s export with a QAT checkpoint's ranges; and its quantiser.

    The drop-in for the detector exporter's calibration when the weights come from QAT.

    Raises:
        DeployError: the checkpoint was trained for the other weight granularity, or for another graph.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if state["per_channel"] != per_channel:
        trained, asked = ("per-channel", "per-tensor") if state["per_channel"] else ("per-tensor", "per-channel")
        flag = "drop --per-tensor" if state["per_channel"] else "add --per-tensor"
        raise DeployError(f"this QAT detector was trained with {trained} weight scales, not {asked}: {flag}")
    prepared, quantizer = prepare_detector_qat(
        detector, per_channel=per_channel, layout=layout, pooling=pooling, dynamic_batch=False
    )
    _load_ranges(prepared, state["activation_ranges"])
    sync_qparams(prepared)
    with observers_frozen(prepared):
        converted = convert_pt2e(prepared, fold_quantize=False)
    return move_exported_model_to_eval(converted), quantizer


def read_detector_qat_state(weights: str | os.PathLike | Detector) -> dict[str, Any] | None:
    """The QAT data of a detector or detector checkpoint (``None`` for a float one: the exporter then calibrates)."""
    if isinstance(weights, Detector):
        state = getattr(weights, "qat_state", None)
        return None if state is None else _check_state(state, "the detector")
    from mnasnet.detection.model import read_detector_extra

    path = Path(weights).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    state = read_detector_extra(path).get("qat")
    return None if state is None else _check_state(state, str(path))


# -- the QAT graph's weights as an ordinary detector -----------------------------------------


def _unfold_tree(folded: nn.Module, target: nn.Module) -> None:
    """Copies a folded module tree into its unfused original: ConvBNAct as conv + identity BN, the rest as is."""
    names = set(target.state_dict())
    target.load_state_dict({key: value for key, value in folded.state_dict().items() if key in names}, strict=False)
    for name, module in target.named_modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            _unfold(folded.get_submodule(name), module)


def float_detector_from_qat(prepared: nn.Module, template: Detector, *, per_channel: bool) -> Detector:
    """A :class:`Detector` holding a QAT graph's trained weights (BN as identity), with ``qat_state`` set.

    ``template`` is the float detector QAT started from (its architecture and settings); it is not changed.
    """
    from mnasnet.detection.export_graph import ExportableDetector

    exportable = ExportableDetector(template, class_scores=True)
    names = set(exportable.state_dict())
    exportable.load_state_dict({key: value for key, value in prepared.state_dict().items() if key in names})
    detector = copy.deepcopy(template).eval()
    backbone, folded = detector.backbone, exportable.backbone
    _unfold(folded.stem, backbone.stem)
    blocks = [block for stage in backbone.stages for block in stage]
    for source, block in zip(folded.blocks, blocks, strict=True):
        if block.expand is not None:
            _unfold(source.expand, block.expand)
        _unfold(source.depthwise, block.depthwise)
        if block.se is not None:
            block.se.reduce.load_state_dict(source.se.reduce.state_dict())
            block.se.expand.load_state_dict(source.se.expand.state_dict())
        _unfold(source.project, block.project)
    if folded.head is not None:
        _unfold(folded.head, backbone.head)
    if detector.config.head == "ssdlite":
        for part in ("extra", "classification", "regression"):
            target = getattr(detector.head, part) if part == "extra" else getattr(detector.head.head, part)
            _unfold_tree(getattr(exportable.head, part), target)
    else:
        _unfold_tree(exportable.head.fpn, detector.head.fpn)
        _unfold_tree(exportable.head.head, detector.head.head)
    detector.qat_state = qat_state(prepared, per_channel=per_channel)
    return detector
