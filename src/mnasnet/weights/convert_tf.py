"""Google's TensorFlow MnasNet checkpoints -> our model.

The reference trainer (tensorflow/tpu models/official/mnasnet) names its
variables by scope and by Keras/tf.layers counters, not by role:

- convs: ``<model>/mnas_net_model/<scope>/conv2d_N/kernel``, one global counter
  in construction order (all blocks, then stem, then head); SE convs under
  ``<scope>/se/``; depthwise convs ``depthwise_conv2d_N/depthwise_kernel``;
- BN: ``<model>/<scope>/batch_normalization[_k]/...``, numbered per scope;
- dense: ``<model>/mnas_net_model/mnas_head/dense/{kernel,bias}``.

So within each scope layers are told apart by kind and ordered by their
numeric suffix (``conv2d_12`` after ``conv2d_9``), then matched to our modules
with every shape checked. The ``/ExponentialMovingAverage`` copy of a variable
wins when present (the reference evaluates with it); optimizer slots and
``global_step`` are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import numpy as np
import torch

from mnasnet.arch import ARCHS
from mnasnet.data.preprocess import Preprocess
from mnasnet.errors import CheckpointError
from mnasnet.model import MnasNet, build_config
from mnasnet.weights.tf_checkpoint import TFCheckpoint, open_checkpoint

__all__ = ["convert_tf_checkpoint", "google_preprocess"]

EMA_SUFFIX = "/ExponentialMovingAverage"
# Variable leaves of the model; anything below them (kernel/RMSProp, .../Momentum) is an optimizer slot.
_LEAVES = {"kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"}
_BN_LEAVES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_SCOPE = re.compile(r"^(mnas_stem|mnas_head|mnas_blocks_(\d+))$")
_KNOWN_WIDTHS = (None, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 0.25, 0.2)


def google_preprocess(resolution: int = 224) -> Preprocess:
    """The reference's evaluation preprocessing: centre crop R/(R+32) of the short side, then bilinear resize."""
    return Preprocess.reference(resolution)


class _Layer:
    """One TF layer: its path inside the scope and its variables by leaf name."""

    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path
        self.variables: dict[str, str] = {}  # leaf -> full variable name (without EMA suffix)

    @property
    def order(self) -> int:
        # `conv2d` is the first (0); `conv2d_12` comes after `conv2d_9`.
        match = re.search(r"_(\d+)$", self.path[-1])
        return int(match.group(1)) if match else 0

    @property
    def in_se(self) -> bool:
        return "se" in self.path[:-1]


class _Scope:
    def __init__(self, name: str) -> None:
        self.name = name
        self.layers: dict[tuple[str, ...], _Layer] = {}

    def layer(self, path: tuple[str, ...]) -> _Layer:
        return self.layers.setdefault(path, _Layer(path))

    def kind(self, leaf: str, *, se: bool | None = None) -> list[_Layer]:
        layers = [
            layer for layer in self.layers.values() if leaf in layer.variables and (se is None or layer.in_se == se)
        ]
        return sorted(layers, key=lambda layer: layer.order)


def _parse_names(names: list[str]) -> tuple[str, dict[str, _Scope], dict[str, str]]:
    """Model prefix, scopes with their layers, and for each variable the checkpoint key to read."""
    sources: dict[str, str] = {}
    for name in names:
        base = name[: -len(EMA_SUFFIX)] if name.endswith(EMA_SUFFIX) else name
        if base.rsplit("/", 1)[-1] not in _LEAVES:
            continue  # global_step, optimizer slots, anything else
        if name.endswith(EMA_SUFFIX) or base not in sources:
            sources[base] = name  # the EMA copy wins
    prefixes: set[str] = set()
    scopes: dict[str, _Scope] = {}
    placed: dict[str, str] = {}
    for base in sources:
        parts = base.split("/")
        position = next((i for i, part in enumerate(parts[:-1]) if _SCOPE.match(part)), None)
        if position is None:
            continue
        model_parts = parts[:position]
        if model_parts and model_parts[-1] == "mnas_net_model":  # Keras model name scope (convs, dense)
            model_parts = model_parts[:-1]
        prefixes.add("/".join(model_parts))
        scope = scopes.setdefault(parts[position], _Scope(parts[position]))
        scope.layer(tuple(parts[position + 1 : -1])).variables[parts[-1]] = base
        placed[base] = sources[base]
    if not scopes:
        raise CheckpointError("the checkpoint holds no MnasNet variables (no mnas_stem/mnas_blocks_N/mnas_head scopes)")
    if len(prefixes) > 1:
        raise CheckpointError(f"the checkpoint holds several models ({', '.join(sorted(prefixes))}); cannot choose")
    return prefixes.pop(), scopes, placed


def _conv(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(2, 3, 0, 1)  # [kh, kw, C, 1] -> [C, 1, kh, kw]


def _dense(kernel: np.ndarray) -> np.ndarray:
    return kernel.T


class _Mapper:
    """Collects (our state-dict key, TF variable, layout change) pairs for one model."""

    def __init__(self, model_name: str, arch: str) -> None:
        self.model_name, self.arch = model_name, arch
        self.pairs: list[tuple[str, str, Callable[[np.ndarray], np.ndarray] | None]] = []

    def add(self, key: str, layer: _Layer, leaf: str, layout: Callable | None = None) -> None:
        if leaf not in layer.variables:
            raise CheckpointError(f"{self.model_name}: layer {'/'.join(layer.path)} has no {leaf!r} variable")
        self.pairs.append((key, layer.variables[leaf], layout))

    def conv(self, key: str, layer: _Layer, *, bias: bool = False) -> None:
        self.add(f"{key}.weight", layer, "kernel", _conv)
        if bias:
            self.add(f"{key}.bias", layer, "bias")

    def batch_norm(self, key: str, layer: _Layer) -> None:
        for leaf, ours in _BN_LEAVES.items():
            self.add(f"{key}.{ours}", layer, leaf)

    def expect(self, scope: _Scope, what: str, found: list[_Layer], expected: int, where: str) -> None:
        if len(found) != expected:
            names = ", ".join("/".join(layer.path) for layer in found) or "none"
            raise CheckpointError(
                f"checkpoint scope {self.model_name}/{scope.name} has {len(found)} {what} ({names}); "
                f"{where} of '{self.arch}' expects {expected}. Is the architecture or width right?"
            )


def _map_variables(model: MnasNet, model_name: str, scopes: dict[str, _Scope], arch: str) -> _Mapper:
    mapper = _Mapper(model_name, arch)
    blocks = [block for stage in model.stages for block in stage]
    block_scopes = sorted(
        (name for name in scopes if name.startswith("mnas_blocks_")), key=lambda name: int(name.rsplit("_", 1)[1])
    )
    if block_scopes != [f"mnas_blocks_{i}" for i in range(len(blocks))]:
        raise CheckpointError(
            f"the checkpoint has {len(block_scopes)} blocks ({model_name}/mnas_blocks_*), "
            f"'{arch}' has {len(blocks)}. Is the architecture right?"
        )
    for part in ("mnas_stem", "mnas_head"):
        if part not in scopes:
            raise CheckpointError(f"the checkpoint has no {model_name}/{part} scope")

    stem = scopes["mnas_stem"]
    mapper.expect(stem, "convolutions", stem.kind("kernel"), 1, "the stem")
    mapper.expect(stem, "batch norms", stem.kind("gamma"), 1, "the stem")
    mapper.conv("stem.conv", stem.kind("kernel")[0])
    mapper.batch_norm("stem.bn", stem.kind("gamma")[0])

    stage_of = [(s, j) for s, stage in enumerate(model.stages) for j in range(len(stage))]
    for index, block in enumerate(blocks):
        scope, (s, j) = scopes[f"mnas_blocks_{index}"], stage_of[index]
        key, where = f"stages.{s}.{j}", f"block {index}"
        convs, norms = scope.kind("kernel", se=False), scope.kind("gamma")
        depthwise, se_convs = scope.kind("depthwise_kernel"), scope.kind("kernel", se=True)
        has_expand = block.expand is not None
        mapper.expect(scope, "1x1 convolutions", convs, 2 if has_expand else 1, where)
        mapper.expect(scope, "depthwise convolutions", depthwise, 1, where)
        mapper.expect(scope, "batch norms", norms, 3 if has_expand else 2, where)
        mapper.expect(scope, "squeeze-excite convolutions", se_convs, 2 if block.se is not None else 0, where)
        if has_expand:
            mapper.conv(f"{key}.expand.conv", convs[0])
            mapper.batch_norm(f"{key}.expand.bn", norms[0])
        mapper.add(f"{key}.depthwise.conv.weight", depthwise[0], "depthwise_kernel", _depthwise)
        mapper.batch_norm(f"{key}.depthwise.bn", norms[-2])
        if block.se is not None:
            mapper.conv(f"{key}.se.reduce", se_convs[0], bias=True)
            mapper.conv(f"{key}.se.expand", se_convs[1], bias=True)
        mapper.conv(f"{key}.project.conv", convs[-1])
        mapper.batch_norm(f"{key}.project.bn", norms[-1])

    head = scopes["mnas_head"]
    kernels = head.kind("kernel")
    head_convs = [layer for layer in kernels if not layer.path[-1].startswith("dense")]
    dense = [layer for layer in kernels if layer.path[-1].startswith("dense")]
    mapper.expect(head, "convolutions", head_convs, 1, "the head")
    mapper.expect(head, "dense layers", dense, 1, "the head")
    mapper.expect(head, "batch norms", head.kind("gamma"), 1, "the head")
    mapper.conv("head.conv", head_convs[0])
    mapper.batch_norm("head.bn", head.kind("gamma")[0])
    mapper.add("classifier.weight", dense[0], "kernel", _dense)
    mapper.add("classifier.bias", dense[0], "bias")
    return mapper


def _width_hint(arch: str, checkpoint: TFCheckpoint, scopes: dict[str, _Scope], sources: dict[str, str]) -> str:
    """Which width multiplier fits the checkpoint's stem and block outputs, for the error message."""
    try:
        stem = scopes["mnas_stem"].kind("kernel")[0].variables["kernel"]
        outputs = [checkpoint.shape(sources[stem])[-1]]
        for index in range(len([name for name in scopes if name.startswith("mnas_blocks_")])):
            project = scopes[f"mnas_blocks_{index}"].kind("kernel", se=False)[-1].variables["kernel"]
            outputs.append(checkpoint.shape(sources[project])[-1])
    except (KeyError, IndexError):
        return ""
    fits = []
    for candidate in ARCHS:
        for width in _KNOWN_WIDTHS:
            config = build_config(candidate, width_multiplier=width)
            expanded = [config.stem_filters] + [
                spec.output_filters for spec in config.blocks for _ in range(spec.repeats)
            ]
            if expanded == outputs:
                fits.append(f"--arch {candidate}" + (f" --width {width}" if width is not None else ""))
    return f" The checkpoint's shapes fit: {', '.join(dict.fromkeys(fits))}." if fits else ""


def convert_tf_checkpoint(
    path: str | os.PathLike,
    *,
    arch: str,
    width_multiplier: float | None = None,
    num_classes: int | None = None,
    resolution: int = 224,
) -> MnasNet:
    """Builds our model from a checkpoint written by Google's MnasNet trainer.

    Args:
        path: a ``.tar.gz``/``.tgz`` of the checkpoint folder, the folder (with
            ``checkpoint``, ``*.index`` and ``*.data-*`` files), or the prefix.
        arch: ``a1``, ``b1``, ``small``, ``d1`` or ``d1_320``.
        width_multiplier: the reference's ``depth_multiplier`` the checkpoint was trained with.
        num_classes: classifier outputs; read from the checkpoint when ``None``
            (given, it must match).
        resolution: the input size the weights were trained for (recorded in the
            model's preprocessing).

    Returns:
        The model in eval mode, with TF-same padding, the reference BN settings and
        Google's evaluation preprocessing in ``model.preprocess``.
    """
    if arch not in ARCHS:
        raise CheckpointError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    with open_checkpoint(path) as checkpoint:
        model_name, scopes, sources = _parse_names(checkpoint.keys())
        dense = [
            layer for layer in scopes.get("mnas_head", _Scope("")).kind("kernel") if layer.path[-1].startswith("dense")
        ]
        if len(dense) != 1:
            raise CheckpointError(f"the checkpoint has no single dense layer under {model_name}/mnas_head")
        dense_shape = checkpoint.shape(sources[dense[0].variables["kernel"]])
        if len(dense_shape) != 2:
            raise CheckpointError(
                f"{dense[0].variables['kernel']} has shape {list(dense_shape)}, expected 2 dimensions"
            )
        if num_classes is not None and num_classes != dense_shape[1]:
            raise CheckpointError(f"the checkpoint has {dense_shape[1]} classes, not {num_classes}")
        try:
            config = build_config(
                arch,
                width_multiplier=width_multiplier,
                padding="same",  # TF pads 0 top / 1 bottom on stride 2; needed to match Google's weights
                bn_eps=1e-3,
                bn_momentum=0.01,  # TF's 0.99 decay
                num_classes=dense_shape[1],
                resolution=resolution,
            )
        except ValueError as error:
            raise CheckpointError(str(error)) from None
        model = MnasNet(config)
        try:
            mapper = _map_variables(model, model_name, scopes, arch)
            state = _load_values(model, checkpoint, mapper, sources, arch, width_multiplier)
        except CheckpointError as error:
            raise CheckpointError(f"{error}{_width_hint(arch, checkpoint, scopes, sources)}") from None
    model.load_state_dict(state, strict=True)
    model.preprocess = google_preprocess(resolution)
    return model.eval()


def _load_values(
    model: MnasNet,
    checkpoint: TFCheckpoint,
    mapper: _Mapper,
    sources: dict[str, str],
    arch: str,
    width_multiplier: float | None,
) -> dict[str, torch.Tensor]:
    target = model.state_dict()
    described = f"'{arch}'" + (f" at width {width_multiplier}" if width_multiplier is not None else "")
    state: dict[str, torch.Tensor] = {}
    for key, name, layout in mapper.pairs:
        value = checkpoint.read(sources[name])
        if value.dtype != np.float32:
            value = value.astype(np.float32)
        converted = layout(value) if layout is not None else value
        if key not in target:
            raise CheckpointError(f"{name}: the model has no parameter {key}")
        if tuple(converted.shape) != tuple(target[key].shape):
            raise CheckpointError(
                f"{sources[name]} has shape {list(value.shape)} (as PyTorch {list(converted.shape)}), "
                f"but {described} needs {list(target[key].shape)} for {key}."
            )
        state[key] = torch.from_numpy(np.ascontiguousarray(converted))
    unused = sorted(set(sources) - {name for _, name, _ in mapper.pairs})
    if unused:
        raise CheckpointError(f"checkpoint variables with no place in {described}: {', '.join(unused[:5])}.")
    missing = [key for key in target if key not in state and not key.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{described} parameters not found in the checkpoint: {', '.join(missing[:5])}.")
    for key in target:
        if key.endswith("num_batches_tracked"):
            state[key] = target[key]
    return state
