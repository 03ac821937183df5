"""Quantisation-aware training (QAT) graphs: the exporter's int8 scheme, with fake quantisation to train through.

QAT trains the very graph the int8 exporters quantise: :class:`~mnasnet.deploy.graph.ExportableMnasNet`
(BN folded once in float64, as for post-training quantisation), exported with ``torch.export`` and
prepared with ``prepare_qat_pt2e`` under litert-torch's own quantiser settings
(``get_symmetric_quantization_config(is_per_channel, is_qat=True)``: int8 weights symmetric in
[-127, 127], per channel or per tensor; int8 activations affine in [-128, 127]; the sigmoid's fixed
1/256 scale). Two choices, and why:

* **BN folded before training** (BN frozen at the float model's statistics). The exporter folds BN
  itself; training the folded graph makes every fake-quantised weight the exact int8 weight the export
  writes. (PT2E's own conv+BN QAT patterns would fold in float32 at conversion, and litert-torch's
  builder for them fails under torch 2.13; the folded graph has no conv+BN pair for them to match.)
* **Weight ranges are the current weights' min/max** (``averaging_constant=1``), which is what the
  exporter's ``MinMaxObserver`` computes; so weight scales are a function of the weights and need no
  storage. Activation ranges are QAT's moving averages: these are what a QAT checkpoint stores.

A QAT checkpoint is therefore an ordinary float checkpoint (the trained folded weights, written back
with identity BN layers so that folding them again gives the same float32 weights, bit for bit) plus
``extra["qat"]``: the per-channel flag and the activation ranges in graph order. The exporters rebuild
the QAT graph for their own input layout and batch, load those ranges instead of calibrating, and
convert: the int8 files carry the trained scales.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnasnet.deploy.graph import ExportableMnasNet
from mnasnet.deploy.quantize import DeployError, _is_observer, int8_quantizer_class
from mnasnet.errors import CheckpointError
from mnasnet.extras import require
from mnasnet.model import MnasNet

__all__ = [
    "QAT_FORMAT_VERSION",
    "convert_qat",
    "float_model_from_qat",
    "observers_frozen",
    "prepare_qat",
    "qat_quantizer",
    "qat_state",
    "read_qat_state",
    "sync_qparams",
]

QAT_FORMAT_VERSION = 1


def qat_quantizer(*, per_channel: bool = True):
    """litert-torch's PT2E quantiser with the exporter's int8 scheme, in its QAT form (see the module docstring)."""
    require("litert_torch")
    require("torchao")
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    class FoldedGraphQuantizer(int8_quantizer_class()):
        # BN is folded before export, so the conv+BN QAT patterns would match nothing here (and building
        # them fails under torch 2.13); every other annotation is the exporter's.
        STATIC_QAT_ONLY_OPS: list[str] = []

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=True)
    config = dataclasses.replace(
        config,
        input_activation=_unfused(config.input_activation),
        output_activation=_unfused(config.output_activation),
        weight=_unfused(config.weight, averaging_constant=1.0),
    )
    return FoldedGraphQuantizer().set_global(config)


def _unfused(spec, **extra):
    """``spec`` with litert-torch's fused fake-quant swapped for the plain one (same observer and arguments).

    The fused kernel derives scales from the ranges with its own formula (measured: symmetric weight
    scales about 0.4% smaller), while ``convert_pt2e`` asks the observer (``max|w| / 127``); the plain
    fake-quant asks the observer too, so training sees exactly the int8 values the export writes.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver

    partial = spec.observer_or_fake_quant_ctr.p
    keywords = {"observer": MovingAverageMinMaxObserver, **partial.keywords, **extra}
    return dataclasses.replace(spec, observer_or_fake_quant_ctr=FakeQuantize.with_args(*partial.args, **keywords))


def prepare_qat(module: nn.Module, sample: torch.Tensor, *, per_channel: bool = True, dynamic_batch: bool = True):
    """``module`` exported and prepared for QAT: a ``GraphModule`` with fake quantisation, and its quantiser.

    ``dynamic_batch`` keeps the batch dimension symbolic (training and evaluation batches vary);
    ``sample`` should then hold at least two images.
    """
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = qat_quantizer(per_channel=per_channel)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    graph = torch.export.export(module, (sample,), dynamic_shapes=dynamic).module()
    prepared = prepare_qat_pt2e(graph, quantizer)
    allow_exported_model_train_eval(prepared)  # the engine switches modes with .train() / .eval()
    return prepared, quantizer


def _fake_quants(prepared: nn.Module) -> tuple[list[tuple[nn.Module, torch.Tensor]], list[nn.Module]]:
    """(weight fake-quants with their weights, activation fake-quants with a range), in graph order."""
    weights, activations, seen = [], [], set()
    for node in prepared.graph.nodes:
        if not _is_observer(node) or node.target in seen:
            continue
        seen.add(node.target)
        module = prepared.get_submodule(node.target)
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.op == "get_attr":
            weights.append((module, prepared.get_parameter(source.target)))
        elif hasattr(getattr(module, "activation_post_process", None), "min_val"):
            activations.append(module)  # (the sigmoid's fixed-scale fake-quant has no range)
    return weights, activations


def _all_fake_quants(prepared: nn.Module) -> Iterator[nn.Module]:
    return (module for module in prepared.modules() if hasattr(module, "observer_enabled"))


@contextlib.contextmanager
def observers_frozen(prepared: nn.Module):
    """Fake quantisation with the current scales and no range updates (evaluation, export)."""
    modules = list(_all_fake_quants(prepared))
    saved = [module.observer_enabled.clone() for module in modules]
    for module in modules:
        module.observer_enabled.fill_(0)
    try:
        yield prepared
    finally:
        for module, flag in zip(modules, saved, strict=True):
            module.observer_enabled.copy_(flag)


@torch.no_grad()
def sync_qparams(prepared: nn.Module) -> None:
    """Sets every scale and zero point from the ranges, and every weight range to its weight's min/max.

    After this the fake-quant model computes what the converted int8 model computes (an EMA copy
    of a QAT model averages ranges and scales separately; this makes them agree again).
    """
    weights, activations = _fake_quants(prepared)
    for module, weight in weights:
        module.activation_post_process.reset_min_max_vals()
        module.activation_post_process(weight.detach())
    for module in [module for module, _ in weights] + activations:
        if not torch.isfinite(module.activation_post_process.min_val).all():
            continue  # never observed: its first observation sets the scale
        scale, zero_point = module.calculate_qparams()
        module.scale.resize_(scale.shape).copy_(scale)
        module.zero_point.resize_(zero_point.shape).copy_(zero_point)


def qat_state(prepared: nn.Module, *, per_channel: bool) -> dict[str, Any]:
    """What a QAT checkpoint stores besides its weights (JSON-serialisable): the activation ranges."""
    _, activations = _fake_quants(prepared)
    ranges = []
    for module in activations:
        observer = module.activation_post_process
        ranges.append([float(observer.min_val), float(observer.max_val)])
    return {"version": QAT_FORMAT_VERSION, "per_channel": per_channel, "activation_ranges": ranges}


def _check_state(state: Any, source: str) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("version") != QAT_FORMAT_VERSION:
        raise CheckpointError(f"{source} has QAT data of an unknown format")
    ranges = state.get("activation_ranges")
    if not isinstance(state.get("per_channel"), bool) or not isinstance(ranges, list):
        raise CheckpointError(f"{source} has corrupt QAT data")
    for pair in ranges:
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int | float) for v in pair)
        if not ok or not (math.isfinite(pair[0]) and math.isfinite(pair[1]) and pair[0] <= pair[1]):
            raise CheckpointError(f"{source} has corrupt QAT data (activation range {pair!r})")
    return state


def read_qat_state(weights: str | os.PathLike | MnasNet) -> dict[str, Any] | None:
    """The QAT data of a model or checkpoint (``None`` for a float one: the exporters then calibrate)."""
    if isinstance(weights, MnasNet):
        state = getattr(weights, "qat_state", None)
        return None if state is None else _check_state(state, "the model")
    path = Path(weights).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return None  # a registry name or a publisher's file: never QAT
    from mnasnet.checkpoint import read_checkpoint

    state = read_checkpoint(path).extra.get("qat")
    return None if state is None else _check_state(state, str(path))


def _load_ranges(prepared: nn.Module, ranges: list[list[float]]) -> None:
    _, activations = _fake_quants(prepared)
    if len(activations) != len(ranges):
        raise DeployError(
            f"the QAT data holds {len(ranges)} activation ranges but this export graph has {len(activations)}; "
            "export with the pooling the model was trained with (mean)"
        )
    with torch.no_grad():
        for module, (low, high) in zip(activations, ranges, strict=True):
            observer = module.activation_post_process
            observer.min_val.resize_(()).fill_(low)
            observer.max_val.resize_(()).fill_(high)


def convert_qat(
    module: nn.Module,
    sample: torch.Tensor,
    state: dict[str, Any],
    *,
    per_channel: bool,
    dynamic_batch: bool = False,
    fold_quantize: bool = False,
):
    """The int8 PT2E graph of ``module`` with a QAT checkpoint's ranges (no calibration); and its quantiser.

    The drop-in for :func:`~mnasnet.deploy.quantize.quantize_pt2e` when the weights come from QAT.

    Raises:
        DeployError: the checkpoint was trained for the other weight granularity, or for another graph.
    """
    require("torchao")
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if state["per_channel"] != per_channel:
        trained, asked = ("per-channel", "per-tensor") if state["per_channel"] else ("per-tensor", "per-channel")
        flag = "drop --per-tensor" if state["per_channel"] else "add --per-tensor"
        raise DeployError(f"this QAT checkpoint was trained with {trained} weight scales, not {asked}: {flag}")
    prepared, quantizer = prepare_qat(module, sample, per_channel=per_channel, dynamic_batch=dynamic_batch)
    _load_ranges(prepared, state["activation_ranges"])
    sync_qparams(prepared)
    with observers_frozen(prepared):
        converted = convert_pt2e(prepared, fold_quantize=fold_quantize)
    return move_exported_model_to_eval(converted), quantizer


# -- the QAT graph's weights as an ordinary checkpoint -------------------------------------


def _unit_variance(eps: float) -> float:
    """The float32 running variance ``v`` with ``v + eps`` nearest 1, so folding scales weights by 1 exactly."""
    centre = np.float32(1.0 - eps)
    candidates = (np.nextafter(centre, np.float32(0)), centre, np.nextafter(centre, np.float32(2)))
    return float(min(candidates, key=lambda v: abs(float(v) + eps - 1.0)))


@torch.no_grad()
def _unfold(folded: nn.Module, target: nn.Module) -> None:
    """Writes a folded conv (weight, bias) into a ConvBNAct as the same conv and an identity BN."""
    target.conv.weight.copy_(folded.conv.weight)
    if target.conv.bias is not None:
        target.conv.bias.zero_()
    bn = target.bn
    bn.weight.fill_(1.0)
    bn.bias.copy_(folded.conv.bias)
    bn.running_mean.zero_()
    bn.running_var.fill_(_unit_variance(bn.eps))


def float_model_from_qat(prepared: nn.Module, template: MnasNet, *, per_channel: bool) -> MnasNet:
    """A :class:`MnasNet` holding a QAT graph's trained weights (BN as identity), with ``qat_state`` set.

    ``template`` is the float model QAT started from (architecture, preprocessing, labels); it is not changed.
    """
    exportable = ExportableMnasNet(template)
    names = set(exportable.state_dict())
    exportable.load_state_dict({key: value for key, value in prepared.state_dict().items() if key in names})
    model = copy.deepcopy(template).eval()
    _unfold(exportable.stem, model.stem)
    blocks = [block for stage in model.stages for block in stage]
    for folded, block in zip(exportable.blocks, blocks, strict=True):
        if block.expand is not None:
            _unfold(folded.expand, block.expand)
        _unfold(folded.depthwise, block.depthwise)
        if block.se is not None:
            block.se.reduce.load_state_dict(folded.se.reduce.state_dict())
            block.se.expand.load_state_dict(folded.se.expand.state_dict())
        _unfold(folded.project, block.project)
    _unfold(exportable.head, model.head)
    model.classifier.load_state_dict(exportable.classifier.state_dict())
    model.qat_state = qat_state(prepared, per_channel=per_channel)
    return model
