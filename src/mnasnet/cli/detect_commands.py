"""``mnasnet detect train|evaluate|predict|export``: object detection, thin wrappers over the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mnasnet.cli.options import add_threads_flag, positive_int


def register(subparsers) -> None:
    detect = subparsers.add_parser(
        "detect",
        help="object detection: train, evaluate, predict, export",
        description="SSDLite or RetinaNet-FPN detectors on MnasNet backbones, on COCO-format data.",
    )
    commands = detect.add_subparsers(dest="detect_command", metavar="COMMAND", required=True)
    _register_train(commands)
    _register_evaluate(commands)
    _register_predict(commands)
    _register_export(commands)


def _register_train(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a detector (also under torchrun --no-python)",
        description="Train a detector on a COCO-format folder (train.json and val.json, image paths relative to "
        "it) or the built-in faces-coins. Unset settings take the built-in dataset's tuned values, else the "
        "head's. The run folder gets best.safetensors (best val AP) and last.safetensors.",
    )
    suppress = argparse.SUPPRESS
    train.add_argument("--data", default=suppress, help="COCO-format folder or 'faces-coins' (default)")
    train.add_argument("--output", default=suppress, help="run folder (default: runs/det)")
    train.add_argument("--head", default=suppress, help="ssdlite (default) or retinanet")
    train.add_argument("--arch", default=suppress, help="backbone: a1, b1, small, d1, d1_320")
    train.add_argument("--width", type=float, default=suppress, help="backbone width multiplier")
    train.add_argument("--size", type=int, default=suppress, help="square input side in pixels (a multiple of 32)")
    train.add_argument(
        "--weights",
        default=suppress,
        help="classification checkpoint or registry name for the backbone (with --qat: a detector checkpoint)",
    )
    train.add_argument(
        "--qat",
        action="store_true",
        default=suppress,
        help="quantisation-aware fine-tuning of --weights (a trained detector) for int8 export",
    )
    train.add_argument(
        "--per-tensor",
        dest="per_tensor",
        action="store_true",
        default=suppress,
        help="with --qat: per-tensor weight scales (export with --per-tensor)",
    )
    train.add_argument(
        "--anchor-scales",
        dest="anchor_scales",
        type=float,
        nargs=2,
        metavar=("SMALLEST", "LARGEST"),
        default=suppress,
        help="SSDLite default-box sides as fractions of the image side (default 0.2 0.95; lower for small objects)",
    )
    train.add_argument(
        "--stride8-map",
        dest="stride8_map",
        action=argparse.BooleanOptionalAction,
        default=suppress,
        help="SSDLite also predicts on the backbone's stride-8 map, for small objects (default boxes from 0.08)",
    )
    train.add_argument(
        "--iou-crop",
        dest="iou_crop",
        action=argparse.BooleanOptionalAction,
        default=suppress,
        help="SSD's random IoU crop augmentation (default: off for faces-coins, whose short runs learn faster)",
    )
    train.add_argument("--epochs", type=positive_int, default=suppress)
    train.add_argument("--batch-size", dest="batch_size", type=positive_int, default=suppress)
    train.add_argument("--lr", type=float, default=suppress, help="peak learning rate")
    train.add_argument("--max-steps", dest="max_steps", type=positive_int, default=suppress)
    train.add_argument("--workers", type=int, default=suppress, help="data-loading processes")
    train.add_argument("--amp", default=suppress, help="none, bf16 or fp16 (GPU)")
    train.add_argument(
        "--channels-last",
        dest="channels_last",
        action=argparse.BooleanOptionalAction,
        default=suppress,
        help="channels-last memory format (default: on for faces-coins, where it trains faster on a CPU)",
    )
    train.add_argument("--device", default=suppress, help="auto, cpu or cuda")
    train.add_argument("--seed", type=int, default=suppress)
    train.add_argument("--eval-every", dest="eval_every", type=positive_int, default=suppress, help="epochs")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_flag(train, "each training process")
    train.set_defaults(func=run_train)


def _register_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="COCO AP of a detector (pycocotools)",
        description="COCO metrics (pycocotools) of a detector checkpoint or exported .onnx/.tflite on a split.",
    )
    evaluate.add_argument("--weights", required=True, help="detector checkpoint or exported .onnx/.tflite")
    evaluate.add_argument("--data", required=True, help="COCO-format folder or 'faces-coins'")
    evaluate.add_argument("--split", default="val", choices=("val", "train"))
    evaluate.add_argument("--batch-size", type=positive_int, default=8)
    evaluate.add_argument("--limit", type=positive_int, default=None, help="evaluate only this many images")
    evaluate.add_argument("--json", action="store_true", help='print {"AP", "AP50", "AP75", "APs", "APm", "APl", "n"}')
    add_threads_flag(evaluate, "the model (PyTorch, ONNX Runtime or LiteRT)")
    evaluate.set_defaults(func=run_evaluate)


def _register_predict(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="detect objects in images",
        description="Boxes, scores and labels in the original images' pixels. A folder stands for every image in "
        "it. Unreadable files are reported on stderr (exit status 1); the others are still processed.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    predict.add_argument("--weights", required=True, help="detector checkpoint or exported .onnx/.tflite")
    predict.add_argument("--score-threshold", type=float, default=0.3, help="lowest score shown (default: 0.3)")
    predict.add_argument("--batch-size", type=positive_int, default=8)
    predict.add_argument("--json", action="store_true", help="print one JSON list with an object per image")
    predict.add_argument("--draw", metavar="OUT_DIR", help="write the images with boxes and labels drawn")
    add_threads_flag(predict, "the model (PyTorch, ONNX Runtime or LiteRT)")
    predict.set_defaults(func=run_predict)


def _register_export(commands) -> None:
    export = commands.add_parser(
        "export",
        help="export a detector to ONNX (NMS optional) or TFLite (float32 or int8)",
        description="Export a detector checkpoint. Files keep class scores and boxes as separate outputs and carry "
        "the anchors and post-processing settings in their metadata; `detect predict` and `detect evaluate` "
        "decode and run NMS on the CPU. ONNX can also output final detections (--nms: NonMaxSuppression in the "
        "graph). TFLite int8 is full-integer (int8 input and outputs) and runs entirely on an Ethos-U NPU.",
    )
    export.add_argument("out", metavar="OUT", help="the .onnx or .tflite file to write")
    export.add_argument("--weights", required=True, help="detector checkpoint (.safetensors)")
    export.add_argument("--format", help="onnx or tflite (default: from OUT's suffix)")
    export.add_argument(
        "--int8", action="store_true", help="full-integer TFLite (needs --calibration, unless --weights is from --qat)"
    )
    export.add_argument("--calibration", metavar="DATA", help="detection dataset: COCO-format folder or 'faces-coins'")
    export.add_argument("--calibration-images", type=positive_int, default=None, help="at most this many (default 128)")
    export.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    export.add_argument("--nms", action="store_true", help="ONNX: decode and run NonMaxSuppression in the graph")
    export.add_argument("--layout", help="input layout nchw or nhwc (default: ONNX nchw, TFLite nhwc)")
    export.add_argument("--pooling", help="TFLite SE means: mean (default, faster on CPU) or avgpool (faster on NPU)")
    export.add_argument("--target", metavar="ACCELERATOR", help="also compile with Vela (e.g. ethos-u65-256)")
    add_threads_flag(export, "calibration")
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from mnasnet.deploy.quantize import DeployError
    from mnasnet.detection.export import export_detector

    out = Path(args.out)
    fmt = (args.format or out.suffix.lstrip(".")).lower()
    if args.target and not (fmt == "tflite" and args.int8):
        raise DeployError("--target (an Ethos-U NPU) needs an int8 TFLite export: --format tflite --int8")
    if args.target:
        from mnasnet.deploy.npu import check_accelerator

        check_accelerator(args.target)  # before the export: a typo must not cost a calibration
    options = {"int8": args.int8, "calibration": args.calibration, "nms": args.nms}
    if args.per_tensor:
        options["per_tensor"] = True
    for name in ("layout", "pooling"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    if args.calibration_images:
        options["calibration_limit"] = args.calibration_images
    path = export_detector(args.weights, out, fmt=fmt, **options)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.target:
        from mnasnet.deploy.npu import vela_report

        print(vela_report(path, args.target).format())
    return 0


_NOT_SETTINGS = ("resume", "quiet", "threads", "func", "command", "detect_command")


def run_train(args: argparse.Namespace) -> int:
    from mnasnet.errors import ConfigError
    from mnasnet.tasks.detection import DetectionTrainConfig, detection_config, train_detector
    from mnasnet.tasks.detection_qat import DetectionQatConfig, detection_qat_config, train_detector_qat

    overrides = {key: value for key, value in vars(args).items() if key not in _NOT_SETTINGS}
    saved = {}
    if args.resume:
        if "output" not in overrides:
            raise ConfigError("--resume needs --output RUN_DIR")
        saved = _saved_config(Path(overrides["output"]))
    qat = bool(overrides.get("qat", saved.get("qat", False)))
    if overrides.get("per_tensor") and not qat:
        raise ConfigError("--per-tensor only applies to quantisation-aware training: add --qat")
    if args.resume:
        # --max-steps limits one invocation; a resumed run goes on unless it is given again
        config_class = DetectionQatConfig if qat else DetectionTrainConfig
        config = config_class.from_dict({**saved, "max_steps": None, **overrides}).validate()
    else:
        data = overrides.pop("data", "faces-coins")
        config = detection_qat_config(data, **overrides) if qat else detection_config(data, **overrides)
    train = train_detector_qat if qat else train_detector
    result = train(config, resume=args.resume, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":
        return 130 if result.status == "interrupted" else 0
    last = result.metrics[-1] if result.metrics else {}
    summary = f"{result.status}: {result.epoch} epoch(s), {result.step} steps"
    if last.get("val_AP") is not None:
        summary += f"; val AP {last['val_AP']:.3f}, AP50 {last['val_AP50']:.3f} (best AP {result.best_ap:.3f})"
    print(summary)
    if result.status != "completed":
        print(
            f"checkpoint: {result.checkpoint}; continue with: mnasnet detect train --output {result.run_dir} --resume"
        )
    else:
        print(f"weights: {result.run_dir / 'best.safetensors'} and last.safetensors; metrics: {result.run_dir}")
    return 130 if result.status == "interrupted" else 0


def _saved_config(run_dir: Path) -> dict:
    import yaml

    from mnasnet.errors import CheckpointError

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} not found")
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointError(f"{path} is unreadable ({error})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} is not a settings mapping")
    saved.pop("resolved", None)
    return saved


def run_evaluate(args: argparse.Namespace) -> int:
    from mnasnet.detection.evaluate import METRIC_NAMES, evaluate_detector

    result = evaluate_detector(
        args.weights,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        limit=args.limit,
        progress=not args.json and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps({name: result[name] for name in (*METRIC_NAMES, "n")}))
        return 0
    cells = [f"{name} {result[name]:.3f}" if result[name] is not None else f"{name} -" for name in METRIC_NAMES]
    print(f"{'  '.join(cells)}  ({result['n']} images, {result['runtime']})")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from mnasnet.detection.predict import check_draw_folder, detect_images, write_drawings
    from mnasnet.detection.runtime import load_detection_predictor

    if args.draw:
        check_draw_folder(args.draw)
    predictor = load_detection_predictor(args.weights)
    results = detect_images(predictor, args.images, score_threshold=args.score_threshold, batch_size=args.batch_size)
    for result in results:
        if result.error is not None:
            print(f"mnasnet detect predict: error: {result.error}", file=sys.stderr)
    if args.draw:
        write_drawings(results, args.draw)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        for result in results:
            if result.error is not None:
                continue
            print(f"{result.image}: {len(result.detections)} object(s)")
            for detection in result.detections:
                box = ", ".join(f"{v:.1f}" for v in detection.box)
                print(f"  {detection.label:<12} {detection.score:.2f}  [{box}]")
    return 1 if any(result.error is not None for result in results) else 0
