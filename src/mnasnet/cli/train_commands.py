"""``mnasnet train``, ``mnasnet evaluate`` and ``mnasnet plot``: thin wrappers over the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from mnasnet.cli.options import add_threads_flag
from mnasnet.errors import ConfigError, MnasNetError

# Short help for the flags generated from TrainConfig; the rest say "(default: preset)".
_HELP = {
    "data": "dataset folder (train/ and val/ of class folders) or the built-in 'digits'",
    "arch": "architecture: a1, b1, small, d1, d1_320",
    "blocks_file": "a searched architecture (mnasnet search's RUN/front/trial-N.blocks) instead of --arch; "
    "sets --resolution unless given",
    "width": "width multiplier (e.g. 0.5, 1.4)",
    "resolution": "input size in pixels",
    "weights": "pretrained weights to start from: registry name or checkpoint (finetune)",
    "recipe": "preset: paper (Google's reference recipe) or finetune",
    "output": "run folder (config, checkpoints, metrics, curves)",
    "epochs": "epochs to train",
    "batch_size": "images per process and step (global batch = this x processes x accum-steps)",
    "accum_steps": "micro-batches accumulated per optimizer step",
    "max_steps": "stop after this many optimizer steps in total (saving a resumable checkpoint)",
    "lr": "absolute peak learning rate (overrides base-lr scaling)",
    "base_lr": "peak learning rate per base-batch images, scaled linearly with the global batch",
    "amp": "mixed precision: none, bf16 (CPU and GPU) or fp16 (GPU, with a grad scaler)",
    "optimizer": "rmsprop_tf (the paper's), sgd or adamw (decoupled weight decay; --momentum is its beta1)",
    "channels_last": "channels-last memory format",
    "compile": "torch.compile the model",
    "workers": "data-loading worker processes per training process",
    "save_every": "optimizer steps between checkpoints (0: only at each epoch end)",
    "ema_decay": "EMA decay over weights and BN statistics (0 turns it off)",
    "crop_aspect_ratio": "random-crop aspect range, as MIN,MAX",
    "qat": "quantisation-aware fine-tuning of --weights (a float checkpoint) for int8 export",
    "per_tensor": "with --qat: per-tensor weight scales (export with --per-tensor)",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from mnasnet.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training settings (default: the recipe's value)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        annotation = hints[field.name]
        kwargs = {"dest": field.name, "default": argparse.SUPPRESS, "help": _HELP.get(field.name, " ")}
        if annotation is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            # values are checked and converted by load_config, which knows the field types
            group.add_argument(flag, metavar=field.name.upper(), **kwargs)


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train or fine-tune a MnasNet (also under torchrun --no-python)",
        description=(
            "Train from scratch with the paper's recipe or fine-tune pretrained weights. Every setting can be "
            "given as a flag or in a YAML file (--config); flags win. Runs unchanged under "
            "`torchrun --nproc_per_node N --no-python mnasnet train ...`."
        ),
    )
    train.add_argument("--config", metavar="YAML", help="YAML file of settings (flags override it)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_flag(train, "each training process")
    _add_config_flags(train)
    train.set_defaults(func=_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy of weights on a dataset folder",
        description="Top-1/top-5 accuracy with the weights' own preprocessing (checkpoints, registry names, "
        "exported .onnx/.tflite files).",
    )
    evaluate.add_argument("--weights", required=True, help="checkpoint, registry name or exported model file")
    evaluate.add_argument("--data", required=True, help="dataset folder (uses its val/ if present) or 'digits'")
    evaluate.add_argument("--split", default="val", help="sub-folder to evaluate (default: val)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--workers", type=int, default=0)
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only this many images")
    evaluate.add_argument("--per-class", action="store_true", help="also report accuracy per class")
    evaluate.add_argument("--json", action="store_true", help='print {"top1": .., "top5": .., "n": ..}')
    add_threads_flag(evaluate, "the model (PyTorch, ONNX Runtime or LiteRT)")
    evaluate.set_defaults(func=_evaluate)

    plot = subparsers.add_parser("plot", help="PNG curves of a training run")
    plot.add_argument("run_dir", help="run folder with metrics.jsonl")
    plot.add_argument("--output", help="PNG path (default: RUN_DIR/curves.png)")
    plot.set_defaults(func=_plot)


_SETTING_ARGS = ("config", "resume", "quiet", "threads", "func", "command")


def _train(args: argparse.Namespace) -> int:
    from mnasnet.train import train

    overrides = {key: value for key, value in vars(args).items() if key not in _SETTING_ARGS}
    if args.resume:
        if "output" not in overrides:
            raise ConfigError("--resume needs --output RUN_DIR")
        saved = Path(overrides["output"]) / "config.yaml"
        # --max-steps limits one invocation (e.g. a time budget); a resumed run goes on unless given again
        overrides.setdefault("max_steps", "none")
        config = _load_config(saved if saved.is_file() else args.config, overrides)
    else:
        config = _load_config(args.config, overrides)
    main_process = os.environ.get("RANK", "0") == "0"
    if config.qat:
        from mnasnet.tasks.qat import train_qat as train
    result = train(config, resume=args.resume, progress=not args.quiet)
    if not main_process:
        return 130 if result.status == "interrupted" else 0
    last = result.metrics[-1] if result.metrics else {}
    summary = f"{result.status}: {result.epoch} epoch(s), {result.step} steps"
    if last.get("val_top1") is not None:
        summary += f"; val top-1 {last['val_top1']:.2f}% (best {result.best_top1:.2f}%)"
    print(summary)
    if result.status != "completed":
        print(f"checkpoint: {result.checkpoint}; continue with: mnasnet train --output {result.run_dir} --resume")
    else:
        print(f"weights: {result.run_dir / 'best.safetensors'} and last.safetensors; metrics: {result.run_dir}")
    return 130 if result.status == "interrupted" else 0


def _load_config(yaml_path: str | Path | None, overrides: dict):
    from mnasnet.train import load_config

    try:
        return load_config(yaml_path=yaml_path, overrides=overrides)
    except ValueError as error:  # load_config's contract: a flag's value of the wrong type or out of range
        if isinstance(error, MnasNetError):
            raise
        raise ConfigError(str(error)) from None


def _evaluate(args: argparse.Namespace) -> int:
    from mnasnet.evaluate import evaluate

    result = evaluate(
        args.weights,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        per_class=args.per_class,
        limit=args.limit,
        workers=args.workers,
        progress=not args.json and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  ({result['n']} images, {result['runtime']})")
    for name, entry in (result.get("per_class") or {}).items():
        print(f"  {name:<24} top-1 {entry['top1']:6.2f}%  ({entry['n']} images)")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from mnasnet.train.plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0
