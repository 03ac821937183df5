"""``mnasnet summary`` and ``mnasnet convert``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnasnet.arch import ARCHS
from mnasnet.cli.options import add_threads_flag
from mnasnet.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    summary = subparsers.add_parser(
        "summary",
        help="per-layer table of an architecture: output shapes, parameters, multiply-adds",
        description="Print a per-layer table (output shape, parameters, MACs) and the totals.",
    )
    summary.add_argument("arch", metavar="ARCH", help=f"{', '.join(ARCHS)}, 'custom' (with --blocks) or a checkpoint")
    summary.add_argument("--width", type=float, default=None, help="width multiplier (default: filters as written)")
    summary.add_argument("--resolution", type=int, default=None, help="input size (default 224 or the checkpoint's)")
    summary.add_argument("--num-classes", type=int, default=1000)
    summary.add_argument("--blocks", nargs="+", metavar="BLOCK", help="block strings for a custom architecture")
    summary.add_argument("--stem", type=int, default=None, help="stem filters for a custom architecture (32)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.set_defaults(func=run_summary)

    convert = subparsers.add_parser(
        "convert",
        help="convert torchvision, timm or Google TF weights to an mnasnet checkpoint",
        description="Read another implementation's weights and write our checkpoint (.safetensors + metadata). "
        "The converted model gives the same outputs as the source.",
    )
    convert.add_argument("src", metavar="SRC", help="state dict (.pth/.safetensors) or TF checkpoint (dir/.tar.gz)")
    convert.add_argument("out", metavar="OUT", help="output checkpoint (.safetensors)")
    convert.add_argument("--from", dest="source", required=True, choices=("torchvision", "timm", "tf"))
    convert.add_argument("--arch", choices=tuple(ARCHS), help="architecture (found from the weights if omitted)")
    convert.add_argument("--width", type=float, default=None, help="width multiplier (checked against the weights)")
    convert.add_argument("--resize", type=int, help="evaluation resize of the short side (default: the source's)")
    convert.add_argument("--crop", type=int, help="evaluation crop size (default 224)")
    convert.add_argument("--interpolation", choices=("bilinear", "bicubic"), help="evaluation interpolation")
    add_threads_flag(convert)
    convert.set_defaults(func=run_convert)


def run_summary(args: argparse.Namespace) -> int:
    from mnasnet import create_model, load_model
    from mnasnet.profile import format_profile, profile_model

    if args.blocks:
        model = create_model(
            args.blocks, width_multiplier=args.width, num_classes=args.num_classes, stem_filters=args.stem
        )
        title = f"custom MnasNet ({len(args.blocks)} stages)"
    elif args.arch in ARCHS:
        model = create_model(args.arch, width_multiplier=args.width, num_classes=args.num_classes)
        title = f"MnasNet-{args.arch}" + (f" x{args.width:g}" if args.width else "")
    elif Path(args.arch).is_file():
        model = load_model(args.arch)
        title = f"{args.arch}"
    else:
        raise ConfigError(f"unknown architecture {args.arch!r}; choose from {', '.join(ARCHS)} or a checkpoint path")
    resolution = args.resolution if args.resolution is not None else model.config.resolution
    profile = profile_model(model, resolution)
    if args.json:
        data = profile.to_dict()
        data["config"] = model.config.to_dict()
        print(json.dumps(data, indent=2))
    else:
        print(format_profile(profile, f"{title} at {resolution}x{resolution}"))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import dataclasses

    from mnasnet.checkpoint import save_checkpoint
    from mnasnet.weights.convert import convert_file

    if args.source == "tf" and args.arch is None:  # TF checkpoints do not say which architecture they hold
        raise ConfigError(f"--arch is needed for TF checkpoints ({', '.join(ARCHS)})")
    model = convert_file(args.src, args.source, arch=args.arch, width_multiplier=args.width)
    overrides = {
        key: value
        for key, value in (("resize", args.resize), ("resolution", args.crop), ("interpolation", args.interpolation))
        if value is not None
    }
    preprocess = dataclasses.replace(model.preprocess, **overrides)
    labels = None
    if model.config.num_classes == 1000:
        from mnasnet.data.labels import imagenet_labels

        labels = imagenet_labels()
    save_checkpoint(
        model, args.out, preprocess=preprocess, labels=labels, extra={"source": args.source, "converted_from": args.src}
    )
    params = sum(p.numel() for p in model.parameters())
    width = f" x{model.config.width_multiplier:g}" if model.config.width_multiplier else ""
    print(f"wrote {args.out}: MnasNet-{model.config.arch}{width} ({params:,} parameters) from {args.source}")
    return 0
