"""Parameters and multiply-adds per layer, counted as the reference counts them.

MACs count convolutions and the dense layer only, as the reference's size table does:
BN, ReLU, pooling, the SE gate and residual adds are left out.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mnasnet.layers import ConvBNAct, SqueezeExcite
from mnasnet.model import MnasNet, check_resolution

__all__ = ["LayerProfile", "ModelProfile", "profile_model"]


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    layers: tuple[LayerProfile, ...]
    params: int
    macs: int
    resolution: int

    def to_dict(self) -> dict:
        return {
            "resolution": self.resolution,
            "params": self.params,
            "macs": self.macs,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }


def _conv_macs(conv: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = conv.kernel_size
    per_output = kh * kw * conv.in_channels // conv.groups
    return int(output.shape[1] * output.shape[2] * output.shape[3] * per_output)


def _kind(module: nn.Module) -> str:
    if isinstance(module, SqueezeExcite):
        return "squeeze-excite"
    if isinstance(module, nn.Linear):
        return "dense"
    conv = module.conv
    if conv.groups > 1:
        return f"depthwise {conv.kernel_size[0]}x{conv.kernel_size[1]}/{conv.stride[0]}"
    return f"conv {conv.kernel_size[0]}x{conv.kernel_size[1]}/{conv.stride[0]}"


def profile_model(model: MnasNet, resolution: int | None = None) -> ModelProfile:
    """Runs one image through ``model`` and counts each layer's parameters and MACs."""
    resolution = check_resolution(model.config.resolution if resolution is None else resolution)
    rows: list[LayerProfile] = []
    macs: dict[nn.Module, int] = {}
    hooks = []

    def count_conv(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        macs[module] = _conv_macs(module, output)

    def record(name: str):
        def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
            layer_macs = sum(macs.get(conv, 0) for conv in convs)
            if isinstance(module, nn.Linear):
                layer_macs = module.in_features * module.out_features
            params = sum(p.numel() for p in module.parameters())
            rows.append(LayerProfile(name, _kind(module), tuple(output.shape[1:]), params, layer_macs))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(count_conv))
        if isinstance(module, ConvBNAct | SqueezeExcite | nn.Linear):
            hooks.append(module.register_forward_hook(record(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, resolution, resolution))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    total_params = sum(p.numel() for p in model.parameters())
    return ModelProfile(tuple(rows), total_params, sum(row.macs for row in rows), resolution)


def format_profile(profile: ModelProfile, title: str = "") -> str:
    """A per-layer table with totals, for terminals."""
    header = f"{'layer':<28} {'kind':<18} {'output':>16} {'params':>11} {'MACs':>13}"
    lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
    for row in profile.layers:
        shape = "x".join(str(d) for d in row.output_shape)
        lines.append(f"{row.name:<28} {row.kind:<18} {shape:>16} {row.params:>11,} {row.macs:>13,}")
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<28} {'':<18} {f'{profile.resolution}x{profile.resolution} in':>16} "
        f"{profile.params:>11,} {profile.macs:>13,}"
    )
    lines.append(f"{profile.params / 1e6:.3f}M parameters, {profile.macs / 1e6:.1f}M multiply-adds")
    return "\n".join(lines)
