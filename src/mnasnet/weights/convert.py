"""Converters from other implementations' weights to our model.

torchvision and timm lay out the same network under other names. We rebuild
the exact architecture from the tensor shapes (so width variants, torchvision's
unscaled version-1 stem and timm's extra skip in ``small``'s first block come out
right by themselves), map the names, and check every shape.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from mnasnet.arch import ARCHS, BlockSpec, parse_arch, round_filters
from mnasnet.data.preprocess import Preprocess
from mnasnet.errors import CheckpointError
from mnasnet.model import MnasNet, MnasNetConfig

__all__ = ["SOURCES", "convert_file", "convert_state_dict", "load_source_state_dict"]

SOURCES = ("torchvision", "timm", "tf")

# What each source evaluated its ImageNet weights with.
DEFAULT_PREPROCESS = {
    "torchvision": Preprocess(resolution=224, resize=256, interpolation="bilinear"),
    "timm": Preprocess(resolution=224, resize=256, crop_pct=0.875, interpolation="bicubic"),
}
COMMON_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def load_source_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a state dict saved by torchvision or timm (``.pth`` or ``.safetensors``).

    ``.pth`` files are opened with ``weights_only=True``: no code in them runs.
    Training checkpoints that wrap the weights (``state_dict``, ``model``) and
    DataParallel's ``module.`` prefix are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a bad file
        raise CheckpointError(f"cannot read weights from {path}: {str(error).splitlines()[0]}") from None
    for wrapper in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {name.removeprefix("module."): tensor for name, tensor in state.items()}


# -- name maps: source key -> our key -------------------------------------------------

_TORCHVISION_FIRST_BLOCK = {"3": "depthwise.conv", "4": "depthwise.bn", "6": "project.conv", "7": "project.bn"}
_TORCHVISION_BLOCK = {
    "0": "expand.conv",
    "1": "expand.bn",
    "3": "depthwise.conv",
    "4": "depthwise.bn",
    "6": "project.conv",
    "7": "project.bn",
}
_TORCHVISION_FIXED = {"0": "stem.conv", "1": "stem.bn", "14": "head.conv", "15": "head.bn"}


def _torchvision_key(key: str) -> str | None:
    """torchvision's ``layers.N...`` Sequential layout."""
    if key.startswith("classifier.1."):
        return "classifier." + key.removeprefix("classifier.1.")
    match = re.fullmatch(r"layers\.(\d+)\.(\w+)", key)
    if match:
        index, suffix = match.groups()
        if index in _TORCHVISION_FIXED:
            return f"{_TORCHVISION_FIXED[index]}.{suffix}"
        if index in _TORCHVISION_FIRST_BLOCK:
            return f"stages.0.0.{_TORCHVISION_FIRST_BLOCK[index]}.{suffix}"
        return None
    match = re.fullmatch(r"layers\.(\d+)\.(\d+)\.layers\.(\d+)\.(\w+)", key)
    if match and 8 <= int(match.group(1)) <= 13 and match.group(3) in _TORCHVISION_BLOCK:
        stack, block, layer, suffix = match.groups()
        return f"stages.{int(stack) - 7}.{block}.{_TORCHVISION_BLOCK[layer]}.{suffix}"
    return None


_TIMM_FIXED = {
    "conv_stem": "stem.conv",
    "bn1": "stem.bn",
    "conv_head": "head.conv",
    "bn2": "head.bn",
    "classifier": "classifier",
}
_TIMM_SE = {"se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand"}
# timm's depthwise-separable (first) block has no conv_pwl; its names shift.
_TIMM_SEPARABLE = {
    "conv_dw": "depthwise.conv",
    "bn1": "depthwise.bn",
    "conv_pw": "project.conv",
    "bn2": "project.bn",
    **_TIMM_SE,
}
_TIMM_INVERTED = {
    "conv_pw": "expand.conv",
    "bn1": "expand.bn",
    "conv_dw": "depthwise.conv",
    "bn2": "depthwise.bn",
    "conv_pwl": "project.conv",
    "bn3": "project.bn",
    **_TIMM_SE,
}


def _timm_key_fn(state_dict: dict[str, torch.Tensor]) -> Callable[[str], str | None]:
    inverted = {m.group(1) for key in state_dict if (m := re.match(r"(blocks\.\d+\.\d+)\.conv_pwl\.", key))}

    def key_fn(key: str) -> str | None:
        match = re.fullmatch(r"(\w+)\.(\w+)", key)
        if match and match.group(1) in _TIMM_FIXED:
            return f"{_TIMM_FIXED[match.group(1)]}.{match.group(2)}"
        match = re.fullmatch(r"(blocks\.(\d+)\.(\d+))\.(se\.\w+|\w+)\.(\w+)", key)
        if not match:
            return None
        block, stage, index, layer, suffix = match.groups()
        names = _TIMM_INVERTED if block in inverted else _TIMM_SEPARABLE
        return f"stages.{stage}.{index}.{names[layer]}.{suffix}" if layer in names else None

    return key_fn


def _map_names(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    key_fn = _torchvision_key if source == "torchvision" else _timm_key_fn(state_dict)
    mapped, unknown = {}, []
    for key, tensor in state_dict.items():
        ours = key_fn(key)
        if ours is None:
            unknown.append(key)
        else:
            mapped[ours] = tensor
    if unknown:
        raise CheckpointError(
            f"not a {source} MnasNet state dict: {len(unknown)} unexpected tensors (first: {unknown[0]!r})"
        )
    return mapped


# -- architecture from shapes ---------------------------------------------------------


@dataclasses.dataclass
class _BlockShapes:
    in_channels: int
    expanded: int
    out_channels: int
    kernel_size: int
    se_channels: int | None


def _block_shapes(weights: dict[str, torch.Tensor], prefix: str) -> _BlockShapes:
    depthwise = weights[f"{prefix}.depthwise.conv.weight"]
    project = weights[f"{prefix}.project.conv.weight"]
    expand = weights.get(f"{prefix}.expand.conv.weight")
    se_reduce = weights.get(f"{prefix}.se.reduce.weight")
    return _BlockShapes(
        in_channels=int(expand.shape[1] if expand is not None else depthwise.shape[0]),
        expanded=int(depthwise.shape[0]),
        out_channels=int(project.shape[0]),
        kernel_size=int(depthwise.shape[-1]),
        se_channels=None if se_reduce is None else int(se_reduce.shape[0]),
    )


def _stage_blocks(weights: dict[str, torch.Tensor]) -> list[list[_BlockShapes]]:
    stages: dict[int, set[int]] = {}
    for key in weights:
        if match := re.match(r"stages\.(\d+)\.(\d+)\.", key):
            stages.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return [
        [_block_shapes(weights, f"stages.{stage}.{block}") for block in sorted(stages[stage])]
        for stage in sorted(stages)
    ]


def _fits(template: tuple[BlockSpec, ...], stages: list[list[_BlockShapes]]) -> bool:
    if len(template) != len(stages):
        return False
    for spec, blocks in zip(template, stages, strict=True):
        if spec.repeats != len(blocks) or any(b.kernel_size != spec.kernel_size for b in blocks):
            return False
        if any((b.se_channels is not None) != bool(spec.se_ratio) for b in blocks):
            return False
        if any((b.expanded != b.in_channels) != (spec.expand_ratio != 1) for b in blocks):
            return False
    return True


def _resolve_blocks(template: tuple[BlockSpec, ...], stages: list[list[_BlockShapes]], arch: str) -> list[BlockSpec]:
    """The template's kernels, strides and ratios with the filters the weights really have."""
    blocks = []
    for spec, stage in zip(template, stages, strict=True):
        first = stage[0]
        if first.expanded % first.in_channels:
            raise CheckpointError(f"{arch}: expansion {first.expanded}/{first.in_channels} is not an integer ratio")
        expand_ratio = first.expanded // first.in_channels
        # The input filters are the real ones, so the skip test sees real channels
        # as torchvision's and timm's do (timm's `small` skips in block 0).
        resolved = dataclasses.replace(
            spec, input_filters=first.in_channels, output_filters=first.out_channels, expand_ratio=expand_ratio
        )
        if spec.se_ratio and first.se_channels != max(1, int(first.in_channels * spec.se_ratio)):
            raise CheckpointError(
                f"{arch}: squeeze-excite of {first.se_channels} channels does not follow the reference width rule"
            )
        blocks.append(resolved)
    return blocks


def _infer_width(arch: str, blocks: list[BlockSpec]) -> float | None:
    template = parse_arch(ARCHS[arch].blocks)
    for width in COMMON_WIDTHS:
        # Stage 0 is skipped: torchvision's version-1 checkpoints keep it unscaled.
        if all(
            round_filters(t.output_filters, width) == b.output_filters
            for t, b in zip(template[1:], blocks[1:], strict=True)
        ):
            return width
    return None


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    source: str,
    *,
    arch: str | None = None,
    width_multiplier: float | None = None,
    preprocess: Preprocess | None = None,
) -> MnasNet:
    """Builds our model holding torchvision's or timm's weights, with the same outputs.

    Args:
        state_dict: the source's own state dict.
        source: ``"torchvision"`` or ``"timm"``.
        arch: ``a1``, ``b1`` or ``small``; found from the weights when omitted.
        width_multiplier: if given, checked against the weights.
        preprocess: evaluation preprocessing to record (defaults to the source's usual).
    """
    if source not in ("torchvision", "timm"):
        raise ValueError(f"convert_state_dict handles torchvision and timm, not {source!r}")
    weights = _map_names(state_dict, source)
    required = ("stem.conv.weight", "head.conv.weight", "classifier.weight")
    if any(key not in weights for key in required):
        raise CheckpointError(f"not a {source} MnasNet state dict: stem, head or classifier missing")
    stages = _stage_blocks(weights)
    candidates = ["b1"] if source == "torchvision" else ["a1", "b1", "small"]
    if arch is not None:
        if arch not in candidates:
            raise CheckpointError(f"{source} publishes MnasNet {'/'.join(candidates)} only, not {arch!r}")
        candidates = [arch]
    matches = [name for name in candidates if _fits(parse_arch(ARCHS[name].blocks), stages)]
    if not matches:
        raise CheckpointError(f"the {source} weights do not fit MnasNet {' or '.join(candidates)}")
    arch = matches[0]
    blocks = _resolve_blocks(parse_arch(ARCHS[arch].blocks), stages, arch)
    inferred_width = _infer_width(arch, blocks)
    if width_multiplier is not None and inferred_width != width_multiplier:
        raise CheckpointError(
            f"the weights are MnasNet-{arch} x{inferred_width or '?'}, not x{width_multiplier} as asked"
        )
    head = weights["head.conv.weight"]
    config = MnasNetConfig(
        blocks=tuple(blocks),
        stem_filters=int(weights["stem.conv.weight"].shape[0]),
        head_filters=int(head.shape[0]),
        num_classes=int(weights["classifier.weight"].shape[0]),
        dropout=ARCHS[arch].dropout,
        padding="symmetric",  # torchvision and timm trained with PyTorch's symmetric padding
        bn_eps=1e-5,  # PyTorch's default, which both use
        arch=arch,
        width_multiplier=inferred_width,
        resolution=(preprocess or DEFAULT_PREPROCESS[source]).resolution,
    )
    model = MnasNet(config)
    _load_checked(model, weights, source)
    model.preprocess = preprocess or DEFAULT_PREPROCESS[source]
    return model.eval()


def _load_checked(model: MnasNet, weights: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    # Old checkpoints may lack num_batches_tracked; it does not affect outputs.
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in weights:
            weights[key] = torch.tensor(0)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise CheckpointError(f"the {source} weights do not fit the architecture (first mismatch: {first})")
    for key, tensor in expected.items():
        if tensor.shape != weights[key].shape:
            raise CheckpointError(
                f"the {source} weights do not fit the architecture: {key} is {tuple(weights[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in weights.items()})


def convert_file(
    path: str | os.PathLike,
    source: str,
    *,
    arch: str | None = None,
    width_multiplier: float | None = None,
    preprocess: Preprocess | None = None,
) -> MnasNet:
    """Reads a torchvision, timm or Google TF checkpoint file and returns our model holding it."""
    if source not in SOURCES:
        raise CheckpointError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    if source == "tf":
        if arch is None:
            raise CheckpointError("--arch is needed for TF checkpoints (a1, b1, small, d1 or d1_320)")
        from mnasnet.weights.convert_tf import convert_tf_checkpoint

        model = convert_tf_checkpoint(path, arch=arch, width_multiplier=width_multiplier)
        if preprocess is not None:
            model.preprocess = preprocess
        return model
    state_dict = load_source_state_dict(path)
    return convert_state_dict(state_dict, source, arch=arch, width_multiplier=width_multiplier, preprocess=preprocess)
