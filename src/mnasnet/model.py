"""The MnasNet model: MBConv blocks, stem, stages, head and feature taps."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mnasnet import limits
from mnasnet.arch import (
    ARCHS,
    BlockSpec,
    check_block_count,
    format_block,
    parse_arch,
    parse_timm_arch,
    round_filters,
    scale_blocks,
)
from mnasnet.data.preprocess import Preprocess
from mnasnet.errors import BlockStringError, ModelConfigError
from mnasnet.layers import PADDINGS, ConvBNAct, DropPath, SqueezeExcite

__all__ = ["MnasNet", "MnasNetConfig", "MBConvBlock", "create_model", "list_models"]

HEAD_FILTERS = 1280  # not scaled by the width multiplier, as in the reference

# Limits on settings, checked before anything is allocated (see also arch.LIMITS):
# a checkpoint header or a flag cannot ask for an absurd model.
MAX_PARAMETERS = limits.MAX_PARAMETERS
MAX_WIDTH_MULTIPLIER = limits.MAX_WIDTH_MULTIPLIER
_INT_SETTINGS = {
    "stem_filters": (1, limits.MAX_FILTERS),
    "head_filters": (1, limits.MAX_FILTERS),
    "num_classes": (1, limits.MAX_NUM_CLASSES),
    "resolution": (limits.MIN_RESOLUTION, limits.MAX_RESOLUTION),
}
_FLOAT_SETTINGS = {"dropout": (0.0, 1.0), "drop_path_rate": (0.0, 1.0), "bn_momentum": (0.0, 1.0)}


@dataclasses.dataclass(frozen=True)
class MnasNetConfig:
    """Everything that rebuilds a model: the resolved (already width-scaled) stages and settings.

    ``arch`` and ``width_multiplier`` only record where the stages came from.
    """

    blocks: tuple[BlockSpec, ...]
    stem_filters: int
    head_filters: int = HEAD_FILTERS
    num_classes: int = 1000
    dropout: float = 0.2
    padding: str = "symmetric"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # PyTorch convention: TF's 0.99 decay
    drop_path_rate: float = 0.0
    resolution: int = 224
    arch: str | None = None
    width_multiplier: float | None = None

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ModelConfigError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        for name, (low, high) in _INT_SETTINGS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ModelConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        for name, (low, high) in _FLOAT_SETTINGS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
                raise ModelConfigError(f"{name} must be a number in [{low}, {high}), got {value!r}")
        if not (isinstance(self.bn_eps, int | float) and 0 < self.bn_eps < 1):
            raise ModelConfigError(f"bn_eps must be in (0, 1), got {self.bn_eps!r}")
        if not (isinstance(self.blocks, tuple) and self.blocks and all(isinstance(b, BlockSpec) for b in self.blocks)):
            raise ModelConfigError("blocks must be a non-empty tuple of BlockSpec")
        check_block_count(self.blocks)
        parameters = estimate_parameters(self)
        if parameters > MAX_PARAMETERS:
            raise ModelConfigError(
                f"this model would have about {parameters / 1e6:,.0f}M parameters; the limit is "
                f"{MAX_PARAMETERS / 1e6:,.0f}M (check the widths, filters and class count)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["blocks"] = [format_block(spec) for spec in self.blocks]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MnasNetConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelConfigError(f"unknown model settings: {sorted(unknown)}")
        return cls(**{**data, "blocks": parse_arch(data["blocks"])})


def check_resolution(resolution: Any) -> int:
    """``resolution`` if it is an input size the model limits allow, else a :class:`ModelConfigError`."""
    low, high = _INT_SETTINGS["resolution"]
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not low <= resolution <= high:
        raise ModelConfigError(f"resolution must be an integer from {low} to {high}, got {resolution!r}")
    return resolution


def estimate_parameters(config: MnasNetConfig) -> int:
    """Parameters of the model ``config`` describes, counted without building it (to within BN and SE biases)."""
    channels = config.stem_filters
    total = 27 * channels
    for spec in config.blocks:
        for repeat in range(spec.repeats):
            inputs = spec.input_filters if repeat == 0 else spec.output_filters
            expanded = inputs * spec.expand_ratio if spec.expand_ratio != 1 else channels
            total += channels * expanded if spec.expand_ratio != 1 else 0
            total += expanded * spec.kernel_size**2
            total += 2 * expanded * max(1, int(inputs * (spec.se_ratio or 0))) if spec.se_ratio else 0
            total += expanded * spec.output_filters
            channels = spec.output_filters
    return total + channels * config.head_filters + (config.head_filters + 1) * config.num_classes


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project -> [+ input].

    ``spec`` describes this one block (its stride and its string's input filters);
    ``in_channels`` is what the previous layer really produces.
    """

    def __init__(self, in_channels: int, spec: BlockSpec, config: MnasNetConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        norm = {"bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum, "padding": config.padding}
        # The reference sizes the expansion from the string's input filters; with
        # e == 1 there is no expansion and the depthwise conv takes what comes in.
        expanded = spec.input_filters * spec.expand_ratio if spec.expand_ratio != 1 else in_channels
        self.expand = ConvBNAct(in_channels, expanded, 1, **norm) if spec.expand_ratio != 1 else None
        self.depthwise = ConvBNAct(expanded, expanded, spec.kernel_size, stride=spec.stride, groups=expanded, **norm)
        # SE width comes from the block's input filters, not the expanded width.
        self.se = SqueezeExcite(expanded, max(1, int(spec.input_filters * spec.se_ratio))) if spec.se_ratio else None
        self.project = ConvBNAct(expanded, spec.output_filters, 1, act=False, **norm)
        self.has_skip = spec.id_skip and spec.strides == (1, 1) and spec.input_filters == spec.output_filters
        if self.has_skip and in_channels != spec.output_filters:
            raise BlockStringError(
                f"block {format_block(spec)!r} adds its input ({in_channels} channels) "
                f"to its output ({spec.output_filters} channels)"
            )
        self.drop_path = DropPath(drop_path_rate) if self.has_skip and drop_path_rate > 0 else None
        self.out_channels = spec.output_filters
        self.expanded_channels = expanded

    def forward_from_expanded(self, x: torch.Tensor, expanded: torch.Tensor) -> torch.Tensor:
        out = self.depthwise(expanded)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        if self.has_skip:
            if self.drop_path is not None:
                out = self.drop_path(out)
            out = out + x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_expanded(x, x if self.expand is None else self.expand(x))


def _expand_repeats(specs: Sequence[BlockSpec]) -> list[list[BlockSpec]]:
    """One spec per block: repeats after the first take input = output filters and stride 1."""
    stages = []
    for spec in specs:
        first = dataclasses.replace(spec, repeats=1)
        rest = dataclasses.replace(first, input_filters=spec.output_filters, strides=(1, 1))
        stages.append([first] + [rest] * (spec.repeats - 1))
    return stages


class MnasNet(nn.Module):
    """MnasNet as Google's reference builds it: stem, stages of MBConv blocks, head, classifier."""

    __jit_unused_properties__ = ["feature_channels"]  # Python-side metadata, not part of the graph

    def __init__(self, config: MnasNetConfig) -> None:
        super().__init__()
        self.config = config
        norm = {"bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum, "padding": config.padding}
        self.stem = ConvBNAct(3, config.stem_filters, 3, stride=2, **norm)
        per_block = _expand_repeats(config.blocks)
        total_blocks = sum(len(stage) for stage in per_block)
        channels, index, stages = config.stem_filters, 0, []
        for stage_specs in per_block:
            blocks = []
            for spec in stage_specs:
                # Stochastic depth grows linearly with depth, as in EfficientNet.
                rate = config.drop_path_rate * index / total_blocks
                blocks.append(MBConvBlock(channels, spec, config, rate))
                channels, index = spec.output_filters, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBNAct(channels, config.head_filters, 1, **norm)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.head_filters, config.num_classes)
        self.feature_info = self._feature_info()
        # Set by fuse_model on CPU: oneDNN runs depthwise convolutions fastest channels-last.
        self.channels_last_input = False
        # How inputs are prepared, and class names: checkpoints and weights replace these.
        self.preprocess = Preprocess.for_resolution(config.resolution)
        self.labels: list[str] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation (mnasnet_model.py)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                # fan-out counts one output per input channel for depthwise kernels
                fan_out = kh * kw * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    # -- classification -------------------------------------------------------------

    def fuse(self) -> MnasNet:
        """An inference copy with BN folded into the convolutions; see :func:`mnasnet.fuse.fuse_model`."""
        from mnasnet.fuse import fuse_model

        return fuse_model(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and head: the 1280-channel map at stride 32."""
        if self.channels_last_input:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.stages(self.stem(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the classifier with a freshly initialised one (for fine-tuning)."""
        self.classifier = nn.Linear(self.config.head_filters, num_classes)
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.classifier.weight, -bound, bound)
        nn.init.zeros_(self.classifier.bias)
        self.config = dataclasses.replace(self.config, num_classes=num_classes)

    # -- feature maps for detection -------------------------------------------------

    def _feature_info(self) -> list[dict[str, Any]]:
        """Names, strides and channels of the maps :meth:`features` returns.

        ``strideN`` is the output of the last block at stride N (the reference's
        ``reduction_k`` endpoints); ``expand16`` is the expansion output of the
        block that goes from stride 16 to 32, the tap SSDLite takes beside ``head``.
        """
        info, stride = [], 2
        last_at_stride: dict[int, tuple[int, int, int]] = {}
        expand_tap = None
        for stage_index, stage in enumerate(self.stages):
            for block_index, block in enumerate(stage):
                block_stride = block.depthwise.conv.stride[0]
                if block_stride > 1 and block.expand is not None:
                    expand_tap = (stage_index, block_index, stride, block.expanded_channels)
                stride *= block_stride
                last_at_stride[stride] = (stage_index, block_index, block.out_channels)
        for tap_stride, (stage_index, block_index, channels) in sorted(last_at_stride.items()):
            info.append(
                {
                    "name": f"stride{tap_stride}",
                    "stride": tap_stride,
                    "channels": channels,
                    "block": (stage_index, block_index),
                    "expanded": False,
                }
            )
        if expand_tap is not None:
            stage_index, block_index, tap_stride, channels = expand_tap
            info.append(
                {
                    "name": f"expand{tap_stride}",
                    "stride": tap_stride,
                    "channels": channels,
                    "block": (stage_index, block_index),
                    "expanded": True,
                }
            )
        info.append(
            {"name": "head", "stride": stride, "channels": self.config.head_filters, "block": None, "expanded": False}
        )
        return info

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channel count of each map :meth:`features` returns, by name."""
        return {tap["name"]: tap["channels"] for tap in self.feature_info}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps for a detection backbone: ``stride2``..``stride32``, ``expand16``, ``head``."""
        taps = {tap["block"]: tap for tap in self.feature_info if tap["block"] is not None and not tap["expanded"]}
        expand_taps = {tap["block"]: tap for tap in self.feature_info if tap["expanded"]}
        outputs: dict[str, torch.Tensor] = {}
        if self.channels_last_input:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        for stage_index, stage in enumerate(self.stages):
            for block_index, block in enumerate(stage):
                key = (stage_index, block_index)
                if key in expand_taps:
                    expanded = block.expand(x)
                    outputs[expand_taps[key]["name"]] = expanded
                    x = block.forward_from_expanded(x, expanded)
                else:
                    x = block(x)
                if key in taps:
                    outputs[taps[key]["name"]] = x
        outputs["head"] = self.head(x)
        return {tap["name"]: outputs[tap["name"]] for tap in self.feature_info}


def list_models() -> list[str]:
    """Names of the built-in architectures."""
    return list(ARCHS)


def _is_timm_dialect(block_strings: Sequence[str]) -> bool:
    first = block_strings[0] if isinstance(block_strings[0], str) else block_strings[0][0]
    return first.split("_", 1)[0] in ("ds", "ir")


def build_config(
    arch: str | Sequence[str],
    *,
    width_multiplier: float | None = None,
    min_depth: int | None = None,
    stem_filters: int | None = None,
    dropout: float | None = None,
    **settings: Any,
) -> MnasNetConfig:
    """Resolves an architecture name or a list of block strings into a :class:`MnasNetConfig`."""
    if width_multiplier is not None and not (
        isinstance(width_multiplier, int | float)
        and not isinstance(width_multiplier, bool)
        and math.isfinite(width_multiplier)
        and 0 < width_multiplier <= MAX_WIDTH_MULTIPLIER
    ):
        raise ModelConfigError(f"width_multiplier must be in (0, {MAX_WIDTH_MULTIPLIER:g}], got {width_multiplier!r}")
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ModelConfigError(
                f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)} or pass block strings"
            )
        definition = ARCHS[arch]
        name, specs = arch, parse_arch(definition.blocks)
        stem = definition.stem_filters if stem_filters is None else stem_filters
        dropout = definition.dropout if dropout is None else dropout
    else:
        block_strings = list(arch)
        if not block_strings:
            raise BlockStringError("an architecture needs at least one block string")
        name = None
        stem = 32 if stem_filters is None else stem_filters
        if _is_timm_dialect(block_strings):
            specs = parse_timm_arch(block_strings, stem)
        else:
            specs = parse_arch(block_strings)
        dropout = 0.2 if dropout is None else dropout
    return MnasNetConfig(
        blocks=scale_blocks(specs, width_multiplier, min_depth),
        stem_filters=round_filters(stem, width_multiplier, min_depth),
        dropout=dropout,
        arch=name,
        width_multiplier=width_multiplier,
        **settings,
    )


def create_model(
    arch: str | Sequence[str] = "a1",
    *,
    width_multiplier: float | None = None,
    num_classes: int = 1000,
    resolution: int = 224,
    **settings: Any,
) -> MnasNet:
    """Builds a freshly initialised MnasNet (``mnasnet.create_model`` also takes ``weights=``).

    Args:
        arch: ``a1``, ``b1``, ``small``, ``d1``, ``d1_320``, or a list of block strings
            (reference grammar, or timm's dialect).
        width_multiplier: scales filters with the reference's ``round_filters``.
            ``None`` keeps them as written (the reference's default; 1.0 rounds
            d1's 36 filters up to 40).
        num_classes: classifier outputs.
        resolution: the input size the model is meant for (used by summaries and export;
            the model itself accepts any size).
        **settings: ``padding`` ("symmetric" or "same"), ``bn_eps``, ``bn_momentum``,
            ``dropout``, ``drop_path_rate``, ``stem_filters``, ``min_depth``, ``head_filters``.
    """
    config = build_config(
        arch, width_multiplier=width_multiplier, num_classes=num_classes, resolution=resolution, **settings
    )
    return MnasNet(config)
